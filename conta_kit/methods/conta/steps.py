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
from ...io import RoundLayout, atomic_torch_save, load_torch
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
    model: torch.nn.Module = build_classifier(b.backbone, num_classes, width=b.cls_width, output_stride=b.output_stride,
                                              padding_mode=b.cls_padding, depth=b.cls_depth,
                                              pooling=b.cls_pooling, lse_r=b.cls_lse_r,
                                              pretrained=b.pretrained if load_pretrained else None)
    if confounders is not None:
        if c.shuffle_prototypes:
            confounders = shuffle_prototypes(confounders, cfg.seed)
        kw = {"temperature": c.temperature, "m_scale": c.m_scale, "attn_init": c.attn_init} \
            if c.adjustment == "backdoor" else {}
        model = ContaClassifier(model, build_adjustment(c.adjustment, confounders, **kw), fusion=c.fusion,
                                fusion_init=c.fusion_init)
    return model


def shuffle_prototypes(confounders: ConfounderSet, seed: int) -> ConfounderSet:
    """The negative control: each prototype's grid cells permuted by its own permutation (drawn from
    ``seed``): the same values, no location or shape."""
    g = torch.Generator().manual_seed(10_007 + int(seed))
    k, (h, w) = len(confounders), confounders.grid
    flat = confounders.prototypes.reshape(k, h * w)
    rows = [flat[i, torch.randperm(h * w, generator=g)] for i in range(k)]
    return ConfounderSet(torch.stack(rows).reshape(k, h, w), confounders.prior.clone(), confounders.counts.clone(),
                         confounders.class_ids.clone())


@torch.no_grad()
def ground_truth_ingredients(cfg: RunCfg, splits: dict[str, Dataset], grid: tuple[int, int],
                             progress: bool = False) -> tuple[ConfounderSet, dict[str, torch.Tensor]]:
    """The best ingredients any round could produce: C from the train split's true masks (with this run's
    prior and background options) and x_m the true foreground of every image of every split (uint8 0/255)."""
    c = cfg.conta
    x_m: dict[str, torch.Tensor] = {}
    conf = None
    for name, ds in splits.items():
        maps, preds = [], []
        for bt in batches(ds, cfg.baseline.eval_batch_size, torch.device("cpu"), f"true x_m {name}", progress):
            mask = bt["mask"]
            maps.append(((mask > 0) & (mask != 255)).to(torch.uint8) * 255)
            if name == "train":
                preds.append((mask, bt["labels"]))
        x_m[name] = torch.cat(maps)
        if name == "train":
            conf = build_confounder_set(preds, ds.num_classes, grid, prior=c.prior, include_bg=c.include_bg)
    return conf, x_m


def start_from_previous(model: ContaClassifier, previous: RoundLayout, round_index: int) -> None:
    """``init="previous"``: load the previous round's final classifier into ``model`` (its adjustment and M
    weights stay new: C is this round's). A round-0 checkpoint holds a plain classifier: its keys get
    ``base.``."""
    path = previous.final_classifier
    state = load_torch(path, map_location="cpu")["model"]
    if not any(k.startswith("base.") for k in state):
        state = {f"base.{k}": v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("adjustment.")}
    missing = model.load_state_dict(state, strict=False)
    log.info("round %d classifier starts from %s (new: %s)", round_index, path, missing.missing_keys)


@torch.no_grad()
def m_statistics(model: ContaClassifier, dataset: Dataset, batch_size: int, device: torch.device,
                 class_ids: torch.Tensor | None, nwgm_images: int = 256) -> dict[str, Any]:
    """How big M is, how much of the logits it moves, how good NWGM is, and the attention's statistics.

    ``logit_share_from_m``: mean over images and classes of |f(x, M) - f(x, 0)| / (|f(x, M) - f(x, 0)| +
    |f(x, 0)|) (0: M changes nothing). ``nwgm``: on the first ``nwgm_images`` images, the class
    probabilities of the NWGM approximation sigma(f(x, sum_i P(c_i) M_i)) against the exact backdoor sum
    sum_i P(c_i) sigma(f(x, M_i)) (mean and max absolute gap, and the exact sum's own spread over strata).
    ``"alpha"``: the (N, K) weights of every image, for saving."""
    alphas, labels, m_mean, m_max, share, n = [], [], 0.0, 0.0, 0.0, 0
    gaps, spread, n_gap = [], 0.0, 0
    strata = getattr(model.adjustment, "strata", None)
    prior = getattr(model.adjustment, "prior", None)
    with eval_mode(model):
        for bt in batches(dataset, batch_size, device, "M"):
            x, xm = bt["image"], bt["x_m"]
            m, alpha = model.adjust(xm)
            m_mean += float(m.mean()) * len(m)
            m_max += float(m.flatten(1).amax(1).sum())
            with_m, without = model.logits_at(x, m).float(), model.logits_at(x, torch.zeros_like(m)).float()
            share += logit_share(with_m, without) * len(m)
            if strata is not None and n_gap < nwgm_images:
                probs = torch.stack([torch.sigmoid(model.logits_at(x, mi).float()) for mi in strata(xm)])  # (K,B,C)
                exact = (prior.view(-1, 1, 1) * probs).sum(0)
                gaps.append((torch.sigmoid(with_m) - exact).abs().cpu())
                spread += float(probs.std(0, correction=0).mean()) * len(m)
                n_gap += len(m)
            if alpha is not None:
                alphas.append(alpha.cpu())
                labels.append(bt["labels"].cpu())
            n += len(m)
    out: dict[str, Any] = {"m_mean": m_mean / n, "m_max_mean": m_max / n, "logit_share_from_m": share / n}
    if model.fusion == "last":
        out.update(head_m_weight_abs_mean=float(model.head.m_weight.abs().mean()),
                   head_f_weight_abs_mean=float(model.head.base.weight.abs().mean()))
    if gaps:
        g = torch.cat(gaps)
        out["nwgm"] = {"mean_abs_gap": float(g.mean()), "max_abs_gap": float(g.max()), "num_images": n_gap,
                       "strata_prob_std": spread / n_gap}
    if alphas:
        out["attention"] = attention_statistics(torch.cat(alphas), torch.cat(labels), class_ids)
        out["alpha"] = torch.cat(alphas)
    return out


def logit_share(with_m: torch.Tensor, without: torch.Tensor) -> float:
    """M's share of the logits: the mean over images and classes of |f(x, M) - f(x, 0)| / (|f(x, M) - f(x, 0)|
    + |f(x, 0)|), from the logits with M and with M = 0 (0: M changes nothing)."""
    moved = (with_m - without).abs()
    return float((moved / (moved + without.abs()).clamp_min(1e-12)).mean())


def feature_grid(model: torch.nn.Module, cfg: RunCfg) -> tuple[int, int]:
    """The canonical grid: ``cfg.conta.grid`` or the classifier's feature-map size at the image size."""
    if cfg.conta.grid is not None:
        return (cfg.conta.grid, cfg.conta.grid)
    s = cfg.data.image_size
    with torch.no_grad(), eval_mode(model):
        p = next(model.parameters())
        x = torch.zeros(1, 3, s, s, device=p.device)
        f = model.features(x, torch.zeros(1, s, s, device=p.device)) if isinstance(model, ContaClassifier) \
            else model.features(x)
        return tuple(f.shape[-2:])


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
    if float(conf.prototypes.sum()) == 0.0:
        log.warning("the segmenter of %s marks no pixel of any class on train: every prototype is zero, so M = 0 "
                    "and the next round computes what the baseline does", rnd.path)
    atomic_torch_save(rnd.x_m, x_m)
    conf.save(rnd.confounders)
