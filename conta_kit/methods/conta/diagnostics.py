"""How good a run's confounder sets are: each round's C against the prototypes built the same way from the
ground-truth training masks, and how alike its prototypes are; and what a dataset's layout offers them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ...config import RunCfg
from ...data import collate
from ...data.splits import load_splits
from ...io import RunLayout, load_torch, read_json
from .confounders import ConfounderSet, build_confounder_set, prototype_quality


def diagnose_prototypes(seed_dir: str | Path, cfg: RunCfg | None = None) -> list[dict[str, Any]]:
    """For every round's confounder set in a seed folder: its quality against the prototypes built the same
    way from the ground-truth training masks (:func:`~conta_kit.methods.conta.prototype_quality`), and how much
    the prototypes differ from each other."""
    layout = RunLayout(seed_dir)
    rounds = [t for t in layout.rounds() if layout.round(t).confounders.exists()]
    if not rounds:
        return []
    cfg = cfg or RunCfg.from_dict(read_json(layout.params)["resolved"])
    train = load_splits(cfg)["train"]
    out = []
    ref_by_grid: dict[tuple[int, int], ConfounderSet] = {}
    pixels = [0, 0]  # object pixels, all pixels of train: counted during the first pass

    def masks() -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for i in range(0, len(train), 256):
            b = collate([train[j] for j in range(i, min(i + 256, len(train)))])
            if not ref_by_grid:
                pixels[0] += int(((b["mask"] > 0) & (b["mask"] != 255)).sum())
                pixels[1] += b["mask"].numel()
            yield b["mask"], b["labels"] if cfg.conta.present == "label" else None

    for t in rounds:
        rnd = layout.round(t)
        conf = ConfounderSet.load(rnd.confounders)
        if conf.grid not in ref_by_grid:
            ref_by_grid[conf.grid] = build_confounder_set(masks(), train.num_classes, conf.grid,
                                                          prior=cfg.conta.prior, include_bg=cfg.conta.include_bg)
        object_share = pixels[0] / max(pixels[1], 1)
        row = {"round": t, **prototype_quality(conf, ref_by_grid[conf.grid])}
        if rnd.x_m.exists():  # how much of the image the segmenter calls foreground, against the truth
            row["x_m_mean_train"] = float(load_torch(rnd.x_m)["train"].float().mean() / 255)
            row["object_pixel_share_train"] = object_share
        out.append(row)
    return out


def layout_statistics(dataset: Any, grid: tuple[int, int], max_images: int | None = 1000,
                      batch_size: int = 256) -> dict[str, Any]:
    """What CONTA's confounders can see in a dataset's layout: the prototypes built from its ground-truth
    masks on ``grid`` (the classifier's feature grid) and how alike they are (mean pairwise cosine; near 1
    leaves the attention nothing to choose between), and per class the objects' heights and vertical centres
    (fractions of the image side), read from the masks."""
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    heights: list[list[float]] = [[] for _ in range(dataset.num_classes)]
    centres: list[list[float]] = [[] for _ in range(dataset.num_classes)]

    def masks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, n, batch_size):
            b = collate([dataset[j] for j in range(i, min(i + batch_size, n))])
            side = b["mask"].shape[-2]
            for m, lab in zip(b["mask"], b["labels"]):
                for k in torch.nonzero(lab).flatten().tolist():
                    rows = torch.nonzero((m == k + 1).any(1)).flatten().float()
                    heights[k].append(float(rows.max() - rows.min() + 1) / side)
                    centres[k].append(float(rows.mean() + 0.5) / side)
            yield b["mask"], b["labels"]

    conf = build_confounder_set(masks(), dataset.num_classes, grid)
    q = prototype_quality(conf, conf)
    return {"grid": list(grid), "num_images": n, "prototype_cosine": q["within_cosine"],
            "prototypes": conf.prototypes, "heights": heights, "centres_y": centres}


def adjustment_health(model: torch.nn.Module, images: torch.Tensor, x_m: torch.Tensor, labels: torch.Tensor
                      ) -> dict[str, float]:
    """Is an adjusted classifier's wiring able to act? One backward pass of the multi-label loss on a batch,
    then, in eval mode: ``grad_rms_ratio`` (RMS gradient per parameter of W1/W2 over the backbone's; 0 means
    the attention cannot learn), the attention's normalised ``entropy`` (1 = uniform), ``alpha_std`` (how much
    it differs between images), ``top_is_present_class`` against ``chance`` (mean classes per image / K), and
    ``logit_share_from_m`` (|f(x, M) - f(x, 0)| / (|f(x, M) - f(x, 0)| + |f(x, 0)|)). Gradients are left on
    the model."""
    import math

    import torch.nn.functional as F

    from .adjustment import attention_statistics
    from .steps import logit_share

    model.train()
    model.zero_grad()
    F.multilabel_soft_margin_loss(model(images, x_m), labels).backward()

    def rms(params: list[torch.Tensor]) -> float:
        with_grad = [p for p in params if p.grad is not None]
        n = sum(p.numel() for p in with_grad)
        return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in with_grad) / n) if n else 0.0

    back = rms(list(model.base.backbone.parameters()))
    ratio = rms(list(model.adjustment.parameters())) / back if back else math.nan
    model.eval()
    with torch.no_grad():
        m, alpha = model.adjust(x_m)
        with_m, without = model.logits_at(images, m), model.logits_at(images, torch.zeros_like(m))
    out = {"grad_rms_ratio": ratio, "logit_share_from_m": logit_share(with_m, without)}
    if alpha is not None:
        st = attention_statistics(alpha, labels, model.adjustment.class_ids)
        out.update(entropy=st["entropy"], top_is_present_class=st["top_is_present_class"], chance=st["chance"],
                   alpha_std=float(alpha.std(0).mean()))
    return out
