"""Scoring: segmentation confusion matrix, boundary F-score, context leakage, multi-label mAP, OoD FPR.

All segmentation numbers come from dataset-level accumulators (``update`` per batch, ``compute`` once),
never from an average of per-image scores. Absent classes give NaN entries and are left out of means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    out = num.double() / den.double()
    return torch.where(den > 0, out, torch.full_like(out, math.nan))


class ConfusionMatrix:
    """Dataset-level confusion matrix over ``num_classes`` label values (background included).

    Args:
        num_classes: number of label values, e.g. 21 for VOC (background + 20).
        ignore_index: target value that is skipped.

    ``mat[t, p]`` counts pixels with target ``t`` predicted as ``p``.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.mat = torch.zeros_like(self.mat)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. ``pred`` and ``target``: integer tensors of one shape, e.g. (B, H, W), any device.

        Raises:
            ValueError: on a shape mismatch, a prediction outside 0..num_classes-1 (map ignore labels in
                pseudo-masks to a class first), or a target outside 0..num_classes-1 that is not ignore.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("pred and target must be integer label tensors (argmax scores first)")
        n = self.num_classes
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long().to(pred.device)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= n):
            raise ValueError(f"pred holds values outside 0..{n - 1}: min {int(pred.min())}, max {int(pred.max())}")
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n):
            raise ValueError(f"target holds values outside 0..{n - 1} and {self.ignore_index}: "
                             f"min {int(target.min())}, max {int(target.max())}")
        counts = torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)
        self.mat += counts.cpu()

    def compute(self) -> dict[str, object]:
        """Scores: ``miou``, ``iou`` (per class, NaN if absent from prediction and target), ``precision``,
        ``recall`` (per class), ``mean_precision``, ``mean_recall``, ``pixel_acc`` and ``num_pixels``."""
        m = self.mat
        tp = m.diag()
        gt, pr = m.sum(1), m.sum(0)
        iou = _safe_div(tp, gt + pr - tp)
        precision, recall = _safe_div(tp, pr), _safe_div(tp, gt)
        total = int(m.sum())
        return {
            "miou": _nanmean(iou),
            "iou": iou.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "mean_precision": _nanmean(precision),
            "mean_recall": _nanmean(recall),
            "pixel_acc": float(tp.sum()) / total if total else math.nan,
            "num_pixels": total,
        }


def _boundary(mask: torch.Tensor) -> torch.Tensor:
    """Inner boundary of a (B, H, W) bool mask: pixels of the mask with an 8-neighbour outside it.

    The image border is not a boundary (replicate padding).
    """
    x = mask.float().unsqueeze(1)
    eroded = -F.max_pool2d(-F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (mask & (eroded[:, 0] < 0.5))


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    x = mask.float().unsqueeze(1)
    return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0.5


class BoundaryFScore:
    """Per-class boundary F-score with a pixel tolerance, accumulated over a dataset.

    A predicted boundary pixel of class k is correct if a ground-truth boundary pixel of class k lies
    within ``tolerance`` pixels (Chebyshev distance), and vice versa for recall. Predicted boundary pixels
    on ignore pixels are not counted.

    Args:
        num_classes: number of label values (background included); background (0) is not scored.
        tolerance: pixel tolerance (>= 0).
    """

    def __init__(self, num_classes: int, tolerance: int = 2, ignore_index: int = IGNORE_INDEX) -> None:
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.num_classes, self.tolerance, self.ignore_index = num_classes, tolerance, ignore_index
        self.reset()

    def reset(self) -> None:
        # rows: class; cols: matched pred, pred total, matched gt, gt total
        self.counts = torch.zeros(self.num_classes, 4, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of (B, H, W) (or (H, W)) integer label maps."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if pred.dim() == 2:
            pred, target = pred[None], target[None]
        if pred.dim() != 3:
            raise ValueError(f"expected (B, H, W) label maps, got shape {tuple(pred.shape)}")
        target = target.to(pred.device)
        valid = target != self.ignore_index
        for k in range(1, self.num_classes):
            pk, gk = pred == k, target == k
            rows = (pk | gk).flatten(1).any(1)  # boundaries are per image: skip the images without class k
            if not rows.any():
                continue
            pk, gk = pk[rows], gk[rows]
            pb, gb = _boundary(pk) & valid[rows], _boundary(gk)
            row = torch.stack([(pb & _dilate(gb, self.tolerance)).sum(), pb.sum(),
                               (gb & _dilate(pb, self.tolerance)).sum(), gb.sum()])
            self.counts[k] += row.cpu()

    def compute(self) -> dict[str, object]:
        """``bf`` (mean over classes with boundaries), ``bf_per_class``, ``precision``, ``recall`` per class."""
        c = self.counts.double()
        prec, rec = _safe_div(c[:, 0], c[:, 1]), _safe_div(c[:, 2], c[:, 3])
        f = 2 * prec * rec / (prec + rec)
        f = torch.where((prec == 0) & (rec == 0), torch.zeros_like(f), f)
        # a class with boundary in only one of pred/target scores 0 (the other side's ratio is NaN)
        one_sided = (c[:, 1] > 0) ^ (c[:, 3] > 0)
        f = torch.where(one_sided, torch.zeros_like(f), f)
        f[0] = math.nan
        return {"bf": _nanmean(f), "bf_per_class": f.tolist(), "precision": prec.tolist(), "recall": rec.tolist()}


class ContextLeakage:
    """How much CAMs and masks spill onto each class's paired context.

    * CAM leakage of class k: over images labelled k whose paired context is visible, the share of
      the class's normalised CAM mass (ReLU, divided by its spatial max) on pixels of that context.
    * Mask leakage of class k: over the same images, the share of paired-context pixels that a
      mask labels k.

    Args:
        paired_context: ``paired_context[k]`` = context id paired with class index k (mask id k + 1).
    """

    def __init__(self, paired_context: Sequence[int]) -> None:
        self.paired = torch.as_tensor(list(paired_context), dtype=torch.int64)
        self.reset()

    def reset(self) -> None:
        c = len(self.paired)
        self.cam_on, self.cam_all = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        self.mask_on, self.mask_all = torch.zeros(c, dtype=torch.int64), torch.zeros(c, dtype=torch.int64)

    def _context_hits(self, labels: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) bool: pixel is the paired context of class k and k is in the image."""
        c = len(self.paired)
        if labels.dim() != 2 or labels.shape[1] != c:
            raise ValueError(f"labels must be (B, {c}), got {tuple(labels.shape)}")
        if context_mask.dim() != 3 or context_mask.shape[0] != labels.shape[0]:
            raise ValueError(f"context_mask must be (B, H, W) with B = {labels.shape[0]}, "
                             f"got {tuple(context_mask.shape)}")
        paired = self.paired.to(context_mask.device)
        hit = context_mask[:, None] == paired[None, :, None, None]
        return hit & (labels.to(context_mask.device)[:, :, None, None] > 0)

    @torch.no_grad()
    def update_cams(self, cams: torch.Tensor, labels: torch.Tensor, context_mask: torch.Tensor) -> None:
        """Add CAMs (B, C, H, W) float with labels (B, C) and context_mask (B, H, W) long."""
        if cams.dim() != 4:
            raise ValueError(f"cams must be (B, C, H, W), got shape {tuple(cams.shape)}")
        hit = self._context_hits(labels, context_mask)
        if cams.shape[:2] != hit.shape[:2] or cams.shape[2:] != context_mask.shape[1:]:
            raise ValueError(f"cams shape {tuple(cams.shape)} does not match labels/context_mask "
                             f"{tuple(hit.shape)}")
        cams = cams.relu()
        cams = cams / cams.amax(dim=(2, 3), keepdim=True).clamp_min(1e-5)
        use = hit.any(dim=(2, 3))  # class present and its context visible
        on = (cams * hit).sum(dim=(2, 3)) * use
        total = cams.sum(dim=(2, 3)) * use
        self.cam_on += on.sum(0).double().cpu()
        self.cam_all += total.sum(0).double().cpu()

    @torch.no_grad()
    def update_masks(self, pred: torch.Tensor, labels: torch.Tensor, context_mask: torch.Tensor) -> None:
        """Add label maps ``pred`` (B, H, W) long (class index k is label k + 1)."""
        hit = self._context_hits(labels, context_mask)
        if pred.shape != context_mask.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != context_mask shape {tuple(context_mask.shape)}")
        ids = torch.arange(1, len(self.paired) + 1, device=pred.device)
        labelled = pred.to(context_mask.device)[:, None] == ids[None, :, None, None]
        self.mask_on += (hit & labelled).sum(dim=(0, 2, 3)).cpu()
        self.mask_all += hit.sum(dim=(0, 2, 3)).cpu()

    def compute(self) -> dict[str, object]:
        cam, mask = _safe_div(self.cam_on, self.cam_all), _safe_div(self.mask_on, self.mask_all)
        return {"cam_leakage": _nanmean(cam), "cam_leakage_per_class": cam.tolist(),
                "mask_leakage": _nanmean(mask), "mask_leakage_per_class": mask.tolist()}


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class average precision (step-wise, ties grouped, like scikit-learn).

    Args:
        scores: (N, C) float. targets: (N, C) in {0, 1}.

    Returns:
        (C,) float64; NaN for classes without a positive.
    """
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(f"scores and targets must both be (N, C); got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}")
    out = torch.full((scores.shape[1],), math.nan, dtype=torch.float64)
    for c in range(scores.shape[1]):
        s, t = scores[:, c].double().cpu(), (targets[:, c] > 0).double().cpu()
        npos = t.sum()
        if npos == 0:
            continue
        order = torch.argsort(s, descending=True, stable=True)
        s, t = s[order], t[order]
        tp, fp = torch.cumsum(t, 0), torch.cumsum(1 - t, 0)
        last = torch.ones_like(s, dtype=torch.bool)  # last index of each group of tied scores
        last[:-1] = s[1:] != s[:-1]
        tp, fp = tp[last], fp[last]
        precision, recall = tp / (tp + fp), tp / npos
        prev = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
        out[c] = ((recall - prev) * precision).sum()
    return out


def multilabel_map(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, object]:
    """Multi-label mean average precision: ``map`` over classes with a positive, and ``ap`` per class."""
    ap = average_precision(scores, targets)
    return {"map": _nanmean(ap), "ap": ap.tolist()}


def ood_false_positive_rate(probs: torch.Tensor, threshold: float = 0.5) -> float:
    """Share of OoD images (rows of ``probs``, (N, C) class probabilities) with any probability > threshold."""
    if probs.dim() != 2:
        raise ValueError(f"probs must be (N, C), got shape {tuple(probs.shape)}")
    if probs.shape[0] == 0:
        return math.nan
    if float(probs.min()) < 0 or float(probs.max()) > 1:
        raise ValueError("probs must be probabilities in [0, 1] (apply a sigmoid to logits first)")
    return float((probs > threshold).any(dim=1).double().mean())
