"""W-OoD (Lee et al., CVPR 2022): de-confounding a CAM classifier with background-only images.

A trained classifier is fine-tuned for a few more epochs with two extra terms (docs/wood.md):

* metric: pull the pooled feature f(x) towards the prototypes P_c of the classes the image carries, and
  push it away from the nearest K-means centres Q_k of out-of-distribution (OoD) features;
* OoD classification: OoD images, made harder by one gradient-ascent step on their pixels, get the
  all-zero label vector.

``L = BCE(s(x), y) + lambda_metric * (pull - push) + beta_ood * L_ood`` with the official code's
defaults (0.007, 0.25, K = 50, push fraction 0.2). On the embedded benchmark background-only images are
free: the pool is "hard" (the paired contexts alone), "random" (other backgrounds) or "mined" (the
starting classifier's false positives among random backgrounds), drawn from a stream disjoint from the
held-out ``ood`` split. :func:`finetune_classifier` runs the stage inside a round, through the same
``fit()`` as everything else; ``finetune="plain"`` gives the baseline the same extra epochs.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..config import RunCfg, WOoDConfig
from ..data import collate
from ..infer import batches
from ..io import RoundLayout, atomic_torch_save, atomic_write_text, load_torch
from ..models import eval_mode
from ..train import classifier_train_cfg, fit, multilabel_loss

log = logging.getLogger(__name__)

__all__ = ["WOoDConfig", "WOoDLoss", "build_prototypes", "finetune_classifier", "kmeans", "metric_terms",
           "mine_hard_ood", "ood_bce", "ood_ascent", "pooled_features"]


def pooled_features(model: nn.Module, images: torch.Tensor,
                    x_m: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x), the globally pooled features the head sees (B, D), and the logits (B, C), from one forward.

    For a :class:`~conta_kit.methods.conta.ContaClassifier` (``x_m`` given) f(x) is the pooled [F ; M].
    """
    pooling = getattr(getattr(model, "base", model), "pooling", "gap")
    if pooling != "gap":
        raise ValueError(f"W-OoD's terms use the GAP features the head sees; this classifier pools with {pooling!r}")
    fmap = model.features(images, x_m)
    f = fmap.mean(dim=(2, 3))
    return f, model.head(f[:, :, None, None]).flatten(1)


def kmeans(x: torch.Tensor, k: int, iters: int = 10, seed: int = 0,
           init: str = "kmeans++") -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean Lloyd's K-means in torch: (centres (k, D), assignment (N,)).

    ``init="kmeans++"``: k-means++ seeding (each next centre drawn with probability proportional to the
    squared distance to the nearest chosen one) from a generator seeded by ``seed``; ``"first"``: the
    first k points (the official code's choice, which makes the result depend on the order of the pool).
    A cluster that loses all its points keeps its previous centre.
    """
    if x.dim() != 2:
        raise ValueError(f"kmeans expects features (N, D), got shape {tuple(x.shape)}")
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be in [1, N={len(x)}], got {k}")
    if init not in ("kmeans++", "first"):
        raise ValueError(f"init must be 'kmeans++' or 'first', got {init!r}")
    x = x.float()
    if init == "first":
        centres = x[:k].clone()
    else:
        gen = torch.Generator().manual_seed(seed)
        idx = [int(torch.randint(len(x), (1,), generator=gen))]
        d2 = ((x - x[idx[0]]) ** 2).sum(1).cpu()
        for _ in range(1, k):
            nxt = int(torch.multinomial(d2 + 1e-12, 1, generator=gen)) if float(d2.sum()) > 0 else \
                int(torch.randint(len(x), (1,), generator=gen))
            idx.append(nxt)
            d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1).cpu())
        centres = x[idx].clone()
    assign = torch.cdist(x, centres).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        assign = torch.cdist(x, centres).argmin(1)
    return centres, assign


@torch.no_grad()
def _features(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device, desc: str,
              progress: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f (N, D), sigmoid scores (N, C), labels (N, C)) over ``dataset`` without augmentation."""
    feats, scores, labels = [], [], []
    with eval_mode(model):
        for bt in batches(dataset, batch_size, device, desc, progress):
            f, logits = pooled_features(model, bt["image"], bt.get("x_m"))
            feats.append(f.float().cpu())
            scores.append(torch.sigmoid(logits.float()).cpu())
            labels.append(bt["labels"].cpu())
    return torch.cat(feats), torch.cat(scores), torch.cat(labels)


def build_prototypes(model: nn.Module, id_dataset: Dataset, ood_dataset: Dataset, *, k: int = 50, iters: int = 10,
                     seed: int = 0, init: str = "kmeans++", batch_size: int = 64, device: str | torch.device = "cpu",
                     progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """P (C, D): mean f(x) over the in-distribution images that carry class c (an image counts for every
    class it has); Q (K, D): K-means centres of f(o) over the OoD images. No augmentation.

    Raises:
        ValueError: a class has no image in ``id_dataset``, or the OoD pool has fewer than ``k`` images.
    """
    device = torch.device(device)
    f, _, y = _features(model, id_dataset, batch_size, device, "W-OoD prototypes", progress)
    counts = y.sum(0)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing} have no training image: their prototypes P_c are undefined")
    protos = (y.t() @ f) / counts[:, None]
    fo, _, _ = _features(model, ood_dataset, batch_size, device, "W-OoD OoD features", progress)
    if len(fo) < k:
        raise ValueError(f"the OoD pool has {len(fo)} images, fewer than k={k} centres")
    centres, _ = kmeans(fo, k, iters=iters, seed=seed, init=init)
    return protos, centres


def metric_terms(feat: torch.Tensor, labels: torch.Tensor, protos: torch.Tensor, centres: torch.Tensor,
                 push_frac: float = 0.2, margin: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """W-OoD's metric term as (pull, push); the loss is ``pull - push``.

    pull = mean over (B, C) of ||f - P_c|| * y_c, times C / K (the official scaling);
    push = sum over the n = ceil(push_frac * B * K) closest (image, centre) pairs of ||f - Q_k||, divided
    by B * K (the official code pushes the pairs below the batch's push_frac quantile, unbounded).
    With ``margin`` the selected pairs contribute -(margin - e)+ instead: a bounded push that stops at
    the margin.
    """
    b, c = labels.shape
    if feat.shape[0] != b or protos.shape[0] != c or feat.shape[1] != protos.shape[1] \
            or centres.shape[1] != feat.shape[1]:
        raise ValueError(f"shapes do not fit: feat {tuple(feat.shape)}, labels {tuple(labels.shape)}, "
                         f"prototypes {tuple(protos.shape)}, centres {tuple(centres.shape)}")
    feat = feat.float()
    k = centres.shape[0]
    d = torch.cdist(feat, protos.to(feat))  # (B, C)
    e = torch.cdist(feat, centres.to(feat))  # (B, K)
    pull = (d * labels.to(d)).mean() * (c / k)
    n = min(e.numel(), math.ceil(push_frac * e.numel() - 1e-9))
    closest = e.flatten().topk(n, largest=False).indices
    chosen = e.flatten()[closest]
    push = (chosen if margin is None else -F.relu(margin - chosen)).sum() / e.numel()
    return pull, push


def ood_bce(logits_ood: torch.Tensor, id_batch_size: int, exclude: int | None = None) -> torch.Tensor:
    """Multi-label soft-margin loss of OoD logits (B_o, C) against all-zero labels, per image, summed and
    divided by the in-distribution batch size. ``exclude``: images whose top class is this index get no
    loss (the official code's hard-coded class 4; off by default)."""
    if logits_ood.dim() != 2:
        raise ValueError(f"logits_ood must be (B, C), got shape {tuple(logits_ood.shape)}")
    if id_batch_size < 1:
        raise ValueError(f"id_batch_size must be >= 1, got {id_batch_size}")
    logits_ood = logits_ood.float()
    per = F.multilabel_soft_margin_loss(logits_ood, torch.zeros_like(logits_ood), reduction="none")
    if exclude is not None:
        if not 0 <= exclude < logits_ood.shape[1]:
            raise ValueError(f"exclude must be a class index in [0, {logits_ood.shape[1]}), got {exclude}")
        per = per * (logits_ood.argmax(1) != exclude).to(per)
    return per.sum() / id_batch_size


def ood_ascent(model: nn.Module, images: torch.Tensor, x_m: torch.Tensor | None = None,
               eps: float = 0.07) -> torch.Tensor:
    """One gradient-ascent step on OoD pixels that raises each image's max logit: ``x + eps * g / max|g|``
    (one max over the batch), clamped to the batch's value range. Run in eval mode, so the batch-norm
    statistics do not see the step; parameters get no gradient."""
    if eps == 0:
        return images
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad(), eval_mode(model):
        logits = model(x, x_m)
        (g,) = torch.autograd.grad(logits.float().amax(1).sum(), x)
    step = eps * g / g.abs().amax().clamp_min(1e-12)
    return (images + step).clamp(float(images.min()), float(images.max())).detach()


class WOoDLoss:
    """``loss(model, batch)`` for :func:`~conta_kit.train.fit`: BCE + lambda * (pull - push) + beta * L_ood.

    The OoD pool is held in memory as one collated batch (images, and x_m for a ContaClassifier); each
    step draws ``ood_batch_size`` of them with the torch RNG (which ``fit`` seeds per epoch, so a resumed
    run draws the same ones) and flips them like the in-distribution batch. ``stats()`` returns and resets
    the running means of every term.
    """

    def __init__(self, cfg: WOoDConfig, pool: dict[str, torch.Tensor], protos: torch.Tensor, centres: torch.Tensor,
                 ood_batch_size: int, augment: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        if len(pool["image"]) == 0:
            raise ValueError("the OoD pool is empty")
        self.cfg, self.pool, self.ood_batch_size, self.augment = cfg, pool, ood_batch_size, augment
        self.protos, self.centres = protos, centres
        self._sums: dict[str, float] = {}
        self._n = 0

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        w = self.cfg
        batch = self.augment(batch)
        x_m = batch.get("x_m")
        feat, logits = pooled_features(model, batch["image"], x_m)
        bce = F.multilabel_soft_margin_loss(logits.float(), batch["labels"])
        pull, push = metric_terms(feat, batch["labels"], self.protos.to(feat.device), self.centres.to(feat.device),
                                  w.push_frac, w.margin)
        idx = torch.randint(len(self.pool["image"]), (self.ood_batch_size,))
        dev = batch["image"].device
        ood = self.augment({k: v[idx].to(dev) for k, v in self.pool.items()})
        o_img = ood_ascent(model, ood["image"], ood.get("x_m"), w.ascent_eps)
        o_logits = model(o_img, ood.get("x_m"))
        l_ood = ood_bce(o_logits, len(batch["image"]), w.exclude_class)
        loss = bce + w.lambda_metric * (pull - push) + w.beta_ood * l_ood
        for name, v in (("bce", bce), ("pull", pull), ("push", push), ("ood", l_ood),
                        ("ood_max_prob", torch.sigmoid(o_logits.float()).amax(1).mean())):
            self._sums[name] = self._sums.get(name, 0.0) + float(v.detach())
        self._n += 1
        return loss

    def stats(self) -> dict[str, float]:
        out = {k: v / max(self._n, 1) for k, v in self._sums.items()}
        self._sums, self._n = {}, 0
        return out


@torch.no_grad()
def mine_hard_ood(model: nn.Module, candidates: Dataset, thr: float = 0.5, top_n: int | None = None, *,
                  batch_size: int = 64, device: str | torch.device = "cpu", progress: bool = True,
                  out_csv: str | Path | None = None) -> list[tuple[int, float, int]]:
    """The classifier's false positives among background-only ``candidates``: (index, max probability,
    top class) of every candidate whose max class probability is >= ``thr``, hardest first, at most
    ``top_n``. ``out_csv`` receives the list (atomically)."""
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"thr must be in [0, 1], got {thr}")
    _, scores, _ = _features(model, candidates, batch_size, torch.device(device), "mine OoD", progress)
    top, cls = scores.max(1)
    keep = torch.nonzero(top >= thr).flatten()
    keep = keep[top[keep].argsort(descending=True, stable=True)]
    if top_n is not None:
        keep = keep[:top_n]
    rows = [(int(i), float(top[i]), int(cls[i])) for i in keep]
    if out_csv is not None:
        lines = ["index,max_prob,top_class"] + [f"{i},{p:.6f},{c}" for i, p, c in rows]
        atomic_write_text(out_csv, "\n".join(lines) + "\n")
    return rows


class _Subset(Dataset):
    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[self.indices[i]]


def _collate_all(dataset: Dataset) -> dict[str, torch.Tensor]:
    items = collate([dataset[i] for i in range(len(dataset))])
    return {k: items[k] for k in ("image", "x_m") if k in items}


def finetune_classifier(cfg: RunCfg, model: nn.Module, data: dict[str, Dataset], rnd: RoundLayout,
                        device: torch.device, augment: Callable[[dict[str, Any]], dict[str, Any]], *,
                        progress: bool = True, resume: bool = False, round_index: int = 0) -> dict[str, Any]:
    """The extra stage of a round: ``cfg.wood.ft_epochs`` more epochs of ``model`` (trained in place).

    ``finetune="plain"``: the classification loss only (the fair baseline). ``"wood"``: W-OoD with the
    pool ``data["wood_pool"]``; the mined list (``artifacts/mined_ood.csv``) and the prototypes
    (``artifacts/wood_prototypes.pt``: valid-from epoch -> (P, Q)) are saved, so a resumed stage uses the
    ones it had. Checkpoints go to ``rnd.checkpoint_dir("classifier_ft")``. Returns the stage's record.
    """
    w, b = cfg.wood, cfg.baseline
    if w.finetune == "off":
        raise ValueError("finetune_classifier needs cfg.wood.finetune 'plain' or 'wood'")
    tcfg = classifier_train_cfg(b, cfg.seed, epochs=w.ft_epochs, lr=w.ft_lr or b.cls_lr)
    ckpt_dir = rnd.checkpoint_dir("classifier_ft")
    desc = f"{w.finetune} ft r{round_index}"
    if w.finetune == "plain":
        hist = fit(model, data["train"], lambda m, bt: multilabel_loss(m, augment(bt)), tcfg, device=device,
                   collate_fn=collate, ckpt_dir=ckpt_dir, resume=resume, progress=progress, desc=desc)
        return {"mode": "plain", "epochs": w.ft_epochs, "history": hist}
    if "wood_pool" not in data:
        raise ValueError("finetune='wood' needs a pool of background-only images (split 'wood_pool'); "
                         "the embedded benchmark provides it, a VOC/COCO folder does not")
    model.to(device)
    pool: Dataset = data["wood_pool"]
    record: dict[str, Any] = {"mode": "wood", "epochs": w.ft_epochs, "pool_kind": w.pool, "pool_candidates": len(pool)}
    state_path = rnd.artifact("wood_prototypes.pt")
    if w.pool == "mined":
        mined = rnd.artifact("mined_ood.csv")  # mined once, with the starting classifier
        rows = _read_mined(mined) if mined.exists() else mine_hard_ood(
            model, pool, w.mine_thr, w.mine_top_n, batch_size=b.eval_batch_size, device=device, progress=progress,
            out_csv=mined)
        if not rows:
            raise ValueError(f"no candidate reached max probability {w.mine_thr}: the mined pool is empty "
                             "(lower mine_thr or use pool='hard'/'random')")
        pool = _Subset(pool, [r[0] for r in rows])
    record["pool_size"] = len(pool)
    k = min(w.k, len(pool))
    if k < w.k:
        log.warning("W-OoD: the pool has %d images, fewer than k=%d: using k=%d centres", len(pool), w.k, k)
    record["k"] = k
    if state_path.exists():
        protos_by_epoch = load_torch(state_path, map_location="cpu")
    else:
        protos_by_epoch = {0: build_prototypes(model, data["train"], pool, k=k, iters=w.kmeans_iters, seed=cfg.seed,
                                               init=w.kmeans_init, batch_size=b.eval_batch_size, device=device,
                                               progress=progress)}
        atomic_torch_save(state_path, protos_by_epoch)
    last = ckpt_dir / "last.pt"
    start = int(load_torch(last, map_location="cpu")["epoch"]) + 1 if resume and last.exists() else 0
    protos, centres = protos_by_epoch[max(e for e in protos_by_epoch if e <= start)]
    loss = WOoDLoss(w, _collate_all(pool), protos, centres, w.ood_batch_size or b.cls_batch_size, augment)

    def after_epoch(m: nn.Module, epoch: int) -> dict[str, float]:
        out = loss.stats()
        if w.refresh_every and (epoch + 1) % w.refresh_every == 0 and epoch + 1 < w.ft_epochs:
            protos_by_epoch[epoch + 1] = build_prototypes(m, data["train"], pool, k=k, iters=w.kmeans_iters,
                                                          seed=cfg.seed + epoch + 1, init=w.kmeans_init,
                                                          batch_size=b.eval_batch_size, device=device,
                                                          progress=False)
            atomic_torch_save(state_path, protos_by_epoch)
            loss.protos, loss.centres = protos_by_epoch[epoch + 1]
            out["prototypes_refreshed"] = 1.0
        return out

    record["history"] = fit(model, data["train"], loss, tcfg, device=device, collate_fn=collate, ckpt_dir=ckpt_dir,
                            resume=resume, val_fn=after_epoch, progress=progress, desc=desc)
    return record


def _read_mined(path: Path) -> list[tuple[int, float, int]]:
    with open(path, newline="") as fh:
        return [(int(r["index"]), float(r["max_prob"]), int(r["top_class"])) for r in csv.DictReader(fh)]
