"""The confounder set C: per class, the average mask on a canonical grid (the paper's "rough location and
shape"), with its prior P(c); built in one streamed pass over (predicted or ground-truth) masks."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...io import atomic_torch_save, load_torch

log = logging.getLogger(__name__)
IGNORE_INDEX = 255


PRIORS = ("uniform", "freq")


@dataclass
class ConfounderSet:
    """The confounder set C: K prototypes on a canonical h x w grid, their prior and provenance.

    Attributes:
        prototypes: (K, h, w) float32 in [0, 1]; row k is the average mask of label ``class_ids[k]``.
        prior: (K,) float32, sums to one (P(c)).
        counts: (K,) int64, images averaged into each prototype.
        class_ids: (K,) int64 label ids (0 = background, k + 1 = class index k).
    """

    prototypes: torch.Tensor
    prior: torch.Tensor
    counts: torch.Tensor
    class_ids: torch.Tensor

    def __post_init__(self) -> None:
        k = self.prototypes.shape[0]
        if self.prototypes.dim() != 3:
            raise ValueError(f"prototypes must be (K, h, w), got shape {tuple(self.prototypes.shape)}")
        for name in ("prior", "counts", "class_ids"):
            if getattr(self, name).shape != (k,):
                raise ValueError(f"{name} must be ({k},), got shape {tuple(getattr(self, name).shape)}")

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.prototypes.shape[1:])

    def __len__(self) -> int:
        return self.prototypes.shape[0]

    def save(self, path: str | Path) -> Path:
        """Atomic ``torch.save`` of plain tensors (loadable with ``weights_only=True``)."""
        return atomic_torch_save(path, {"prototypes": self.prototypes, "prior": self.prior, "counts": self.counts,
                                        "class_ids": self.class_ids})

    @classmethod
    def load(cls, path: str | Path, *, num_prototypes: int | None = None,
             grid: tuple[int, int] | None = None) -> ConfounderSet:
        """Load a saved set; ``num_prototypes``/``grid`` are checked when given (errors name the file)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"confounder set {path} not found")
        d = load_torch(path, map_location="cpu")
        try:
            cs = cls(d["prototypes"], d["prior"], d["counts"], d["class_ids"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a confounder set: {e}") from e
        if num_prototypes is not None and len(cs) != num_prototypes:
            raise ValueError(f"{path} holds {len(cs)} prototypes, expected {num_prototypes}")
        if grid is not None and cs.grid != tuple(grid):
            raise ValueError(f"{path} has grid {cs.grid}, expected {tuple(grid)}")
        return cs


def to_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize (B, H, W) or (B, K, H, W) float maps to the grid: the average over each cell when shrinking
    (exact block means for integer factors), bilinear otherwise. Both commute with horizontal flips."""
    x = maps[:, None] if maps.dim() == 3 else maps
    size = tuple(int(g) for g in grid)
    if tuple(x.shape[-2:]) == size:
        out = x.float()
    elif x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        out = F.adaptive_avg_pool2d(x.float(), size)
    else:
        out = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    return out[:, 0] if maps.dim() == 3 else out


_CHUNK = 32  # images whose (1 + C, H, W) one-hot planes build_confounder_set holds at once


@torch.no_grad()
def build_confounder_set(batches: Iterable[Any], num_classes: int, grid: tuple[int, int], *,
                         prior: str = "uniform", include_bg: bool = False) -> ConfounderSet:
    """Class prototypes c_i = average mask of class i over the images that contain it, streamed.

    Args:
        batches: iterable of ``masks`` or ``(masks, labels)``. ``masks`` is (B, H, W) long label ids
            (0 background, k + 1 class index k, 255 ignore) or (B, 1 + C, H, W) float probabilities
            (soft prototypes). ``labels`` (B, C) multi-hot decides which images contain class k; without
            labels an image contains k when its mask has any mass of k. Images of any size are resized to
            ``grid`` before averaging; memory does not grow with the number of images.
        num_classes: C foreground classes. grid: (h, w), the size of the feature map M is fused into.
        prior: "uniform" (P(c) = 1/K, the paper's) or "freq" (share of images containing the class).
        include_bg: add the background prototype (label 0, averaged over all images) as row 0.

    Returns:
        :class:`ConfounderSet` with K = C (+1 with ``include_bg``) prototypes (K, h, w).
    """
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"grid must be (h, w) with h, w >= 1, got {grid}")
    grid = (int(grid[0]), int(grid[1]))
    sums = torch.zeros(num_classes + 1, *grid, dtype=torch.float64)
    counts = torch.zeros(num_classes + 1, dtype=torch.int64)
    for item in batches:
        masks, labels = (item if isinstance(item, tuple | list) else (item, None))
        ids = masks.dim() == 3 and not masks.is_floating_point()
        if ids:
            valid = masks != IGNORE_INDEX
            if bool(((masks < 0) | (masks > num_classes))[valid].any()):
                raise ValueError(f"mask ids must be in 0..{num_classes} or {IGNORE_INDEX}, got "
                                 f"{sorted(masks[valid].unique().tolist())[:10]}")
        elif not (masks.dim() == 4 and masks.shape[1] == num_classes + 1):
            raise ValueError(f"masks must be (B, H, W) label ids or (B, {num_classes + 1}, H, W) probabilities, "
                             f"got shape {tuple(masks.shape)} ({masks.dtype})")
        if labels is not None and labels.shape != (masks.shape[0], num_classes):
            raise ValueError(f"labels must be ({masks.shape[0]}, {num_classes}), got {tuple(labels.shape)}")
        for i in range(0, masks.shape[0], _CHUNK):  # one-hot planes of at most _CHUNK images at a time
            m = masks[i:i + _CHUNK]
            if ids:
                v = valid[i:i + _CHUNK]
                probs = torch.zeros(m.shape[0], num_classes + 1, *m.shape[1:], device=m.device)
                probs.scatter_(1, m.masked_fill(~v, 0).long()[:, None], v[:, None].float())
            else:
                probs = m.float()
            on_grid = to_grid(probs, grid).double().cpu()  # (b, 1 + C, h, w)
            if labels is not None:
                lab = labels[i:i + _CHUNK]
                present = torch.cat([torch.ones_like(lab[:, :1], dtype=torch.bool), lab > 0], 1).cpu()
            else:
                present = probs.flatten(2).amax(2).cpu() > 0
            sums += (on_grid * present[:, :, None, None]).sum(0)
            counts += present.sum(0)
    rows = torch.arange(0 if include_bg else 1, num_classes + 1)
    protos = (sums[rows] / counts[rows].clamp_min(1)[:, None, None]).float()
    empty = [int(r) for r in rows if counts[r] == 0]
    if empty:
        log.warning("no image contains label ids %s: their prototypes are zero", empty)
    cnt = counts[rows]
    if prior == "uniform":
        p = torch.full((len(rows),), 1.0 / len(rows))
    else:
        if cnt.sum() == 0:
            raise ValueError("prior='freq' needs at least one image with a class")
        p = (cnt.double() / cnt.sum()).float()
    return ConfounderSet(protos, p, cnt, rows)


@torch.no_grad()
def prototype_quality(confounders: ConfounderSet, reference: ConfounderSet) -> dict[str, Any]:
    """Compare a confounder set with a reference one (e.g. built from ground-truth masks): per prototype
    the cosine similarity and the mean absolute difference of the maps, and the same two numbers averaged.
    Also how distinct the prototypes are: mean pairwise cosine similarity within each set (1 = all alike,
    which leaves the attention nothing to choose between)."""
    if confounders.prototypes.shape != reference.prototypes.shape or not torch.equal(confounders.class_ids,
                                                                                     reference.class_ids):
        raise ValueError(f"sets differ: {tuple(confounders.prototypes.shape)} ids {confounders.class_ids.tolist()} "
                         f"vs {tuple(reference.prototypes.shape)} ids {reference.class_ids.tolist()}")
    a = confounders.prototypes.flatten(1).double()
    b = reference.prototypes.flatten(1).double()
    cos = F.cosine_similarity(a, b, dim=1, eps=1e-12)
    l1 = (a - b).abs().mean(1)

    def within(x: torch.Tensor) -> float:
        n = F.normalize(x, dim=1, eps=1e-12)
        sim = n @ n.t()
        k = x.shape[0]
        return float((sim.sum() - sim.diagonal().sum()) / max(k * (k - 1), 1))

    return {"cosine": cos.tolist(), "mean_cosine": float(cos.mean()), "abs_diff": l1.tolist(),
            "mean_abs_diff": float(l1.mean()), "within_cosine": within(a), "within_cosine_reference": within(b)}
