"""CONTA's steps inside a round: the round's classifier (a :class:`ContaClassifier` over the previous round's
C), its M statistics, and the next round's ingredients (x_m for every split and C from the segmenter's masks
on train)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import Dataset

from ...config import RunCfg
from ...infer import batches, predict_masks
from ...io import RoundLayout, atomic_torch_save
from ...models import build_classifier, eval_mode
from .adjustment import attention_statistics, build_adjustment
from .classifier import ContaClassifier
from .confounders import ConfounderSet, build_confounder_set

log = logging.getLogger(__name__)


def build_round_classifier(cfg: RunCfg, num_classes: int, confounders: ConfounderSet | None = None, *,
                           load_pretrained: bool = True) -> torch.nn.Module:
    """The classifier of a round: the baseline's for round 0 (``confounders=None``), else a
    :class:`ContaClassifier` with ``cfg.conta``'s adjustment and fusion point.
    ``load_pretrained=False`` skips ``cfg.baseline.pretrained`` (when a checkpoint is loaded next)."""
    b, c = cfg.baseline, cfg.conta
    model: torch.nn.Module = build_classifier(b.backbone, num_classes, width=b.cls_width,
                                              pretrained=b.pretrained if load_pretrained else None)
    if confounders is not None:
        kw = {"temperature": c.temperature, "m_scale": c.m_scale} if c.adjustment == "backdoor" else {}
        model = ContaClassifier(model, build_adjustment(c.adjustment, confounders, **kw), fusion=c.fusion)
    return model


def start_from_previous(model: ContaClassifier, previous: RoundLayout, round_index: int) -> None:
    """``init="previous"``: load the previous round's final classifier into ``model`` (its adjustment and M
    weights stay new: C is this round's). A round-0 checkpoint holds a plain classifier: its keys get
    ``base.``."""
    path = previous.final_classifier
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    if not any(k.startswith("base.") for k in state):
        state = {f"base.{k}": v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("adjustment.")}
    missing = model.load_state_dict(state, strict=False)
    log.info("round %d classifier starts from %s (new: %s)", round_index, path, missing.missing_keys)


@torch.no_grad()
def m_statistics(model: ContaClassifier, dataset: Dataset, batch_size: int, device: torch.device,
                 class_ids: torch.Tensor | None) -> dict[str, Any]:
    """How big M is next to the features, how much of each logit comes from it (``fusion="last"``), and the
    attention's statistics (``"alpha"``: the (N, K) weights of every image, for saving)."""
    alphas, labels, m_mean, m_max, f_mean, share, n = [], [], 0.0, 0.0, 0.0, 0.0, 0
    with eval_mode(model):
        for bt in batches(dataset, batch_size, device, "M"):
            m, alpha = model.adjust(bt["x_m"])
            m_mean += float(m.mean()) * len(m)
            m_max += float(m.flatten(1).amax(1).sum())
            if model.fusion == "last":
                f = model.features(bt["image"], bt["x_m"]).mean(dim=(2, 3))  # (B, D + 1) pooled [F ; M]
                w = model.head.weight.flatten(1)
                from_m = (f[:, -1:] * w[:, -1][None]).abs()  # (B, C)
                from_f = (f[:, :-1] @ w[:, :-1].t()).abs()
                share += float((from_m / (from_m + from_f).clamp_min(1e-12)).mean()) * len(m)
                f_mean += float(f[:, :-1].mean()) * len(m)
            if alpha is not None:
                alphas.append(alpha.cpu())
                labels.append(bt["labels"].cpu())
            n += len(m)
    out: dict[str, Any] = {"m_mean": m_mean / n, "m_max_mean": m_max / n}
    if model.fusion == "last":
        out.update(feature_mean=f_mean / n, logit_share_from_m=share / n,
                   head_m_weight_abs_mean=float(model.head.m_weight.abs().mean()),
                   head_f_weight_abs_mean=float(model.head.base.weight.abs().mean()))
    if alphas:
        out["attention"] = attention_statistics(torch.cat(alphas), torch.cat(labels), class_ids)
        out["alpha"] = torch.cat(alphas)
    return out


def feature_grid(model: torch.nn.Module, cfg: RunCfg) -> tuple[int, int]:
    """The canonical grid: ``cfg.conta.grid`` or the classifier's feature-map size at the image size."""
    if cfg.conta.grid is not None:
        return (cfg.conta.grid, cfg.conta.grid)
    base = model.base if isinstance(model, ContaClassifier) else model
    s = cfg.data.image_size
    with torch.no_grad(), eval_mode(base):
        p = next(base.parameters())
        return tuple(base.features(torch.zeros(1, 3, s, s, device=p.device)).shape[-2:])


def build_next_round(cfg: RunCfg, segmenter: torch.nn.Module, splits: dict[str, Dataset], rnd: RoundLayout,
                     device: torch.device, progress: bool, grid: tuple[int, int]) -> None:
    """Predict masks with ``segmenter`` on every split: x_m (uint8) for each, C from the train split; saved
    as ``rnd.x_m`` and ``rnd.confounders``."""
    c = cfg.conta
    x_m: dict[str, torch.Tensor] = {}
    conf = None
    for name, ds in splits.items():
        preds, maps = [], []
        for pred, fg, labels in predict_masks(segmenter, ds, cfg.baseline.eval_batch_size, device, progress,
                                              desc=f"x_m {name}"):
            xm = fg if c.xm == "fg_prob" else (pred > 0).float()
            maps.append((xm * 255).round().to(torch.uint8))
            if name == "train":
                preds.append((pred, labels if c.present == "label" else None))
        x_m[name] = torch.cat(maps)
        if name == "train":
            conf = build_confounder_set(preds, ds.num_classes, grid, prior=c.prior, include_bg=c.include_bg)
    atomic_torch_save(rnd.x_m, x_m)
    conf.save(rnd.confounders)
