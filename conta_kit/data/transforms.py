"""Transforms between a dataset and a model: joint geometry for an image and every map that goes with it
(masks, x_m), resizing for batching photos, and dataset wrappers that carry pseudo-masks or x_m."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class Resize:
    """Joint transform: image bilinear, mask nearest, to ``size`` x ``size`` (for batching real photos)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        s = (self.size, self.size)
        item = dict(item)
        item["image"] = F.interpolate(item["image"][None], size=s, mode="bilinear", align_corners=False)[0]
        item["mask"] = F.interpolate(item["mask"][None, None].float(), size=s, mode="nearest")[0, 0].long()
        return item


class WithMasks(Dataset):
    """``dataset`` with its ``mask`` replaced by ``masks[i]`` (e.g. pseudo-masks); the original is kept as
    ``gt_mask``."""

    def __init__(self, dataset: Dataset, masks: torch.Tensor) -> None:
        if len(masks) != len(dataset):
            raise ValueError(f"{len(masks)} masks for {len(dataset)} images")
        self.dataset, self.masks = dataset, masks

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        item["gt_mask"], item["mask"] = item["mask"], self.masks[i].long()
        return item


class WithXm(Dataset):
    """``dataset`` items plus ``x_m`` (H, W) float in [0, 1], from ``x_m[i]`` stored as uint8 (0..255)."""

    def __init__(self, dataset: Dataset, x_m: torch.Tensor) -> None:
        if len(x_m) != len(dataset):
            raise ValueError(f"{len(x_m)} x_m maps for {len(dataset)} images")
        self.dataset, self.x_m = dataset, x_m

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # num_classes, paired_context, ... of the wrapped dataset
        if name in ("dataset", "x_m"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], "x_m": self.x_m[i].float() / 255.0}


def random_flip(batch: dict[str, Any]) -> dict[str, Any]:
    """Flip a random half of the batch horizontally (image and every (B, H, W) map), torch RNG."""
    flip = torch.rand(batch["image"].shape[0], device=batch["image"].device) < 0.5
    out = dict(batch)
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 3:
            out[k] = torch.where(flip.view(-1, *([1] * (v.dim() - 1))), v.flip(-1), v)
    return out


# padding values of the maps; everything else (image, x_m) is padded with 0
_FILL = {"mask": 255, "gt_mask": 255, "context_mask": -1, "surround": 0}


def joint_augment(batch: dict[str, Any], *, flip: bool = True, scale: tuple[float, float] = (1.0, 1.0),
                  crop: int | None = None, shift: int = 0) -> dict[str, Any]:
    """The same random geometry for the image and every (B, H, W) map of the batch (masks, x_m, ...).

    Horizontal flip per image; one random rescale per batch (float maps bilinear, integer maps nearest);
    a random ``crop`` x ``crop`` window per image, padding first where the image is smaller (image and
    x_m with 0, masks with 255, context with -1); then a random translation of each image by up to ``shift``
    pixels each way, the uncovered border filled with mid-grey (x_m with 0, masks with 255). Labels are kept,
    as in IRNet's crops: an object shifted partly out still counts. Uses the torch RNG.
    """
    out = random_flip(batch) if flip else dict(batch)
    lo, hi = scale
    if not 0 < lo <= hi:
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
    keys = [k for k, v in out.items() if isinstance(v, torch.Tensor) and v.dim() >= 3]
    s = lo + (hi - lo) * float(torch.rand(())) if hi > lo else lo
    if s != 1.0:
        h, w = out["image"].shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        for k in keys:
            v = out[k]
            x = v if v.dim() == 4 else v[:, None]
            if v.is_floating_point():
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            else:
                x = F.interpolate(x.float(), size=size, mode="nearest").to(v.dtype)
            out[k] = x if v.dim() == 4 else x[:, 0]
    if crop is not None:
        h, w = out["image"].shape[-2:]
        ph, pw = max(0, crop - h), max(0, crop - w)
        if ph or pw:
            for k in keys:
                out[k] = F.pad(out[k], (0, pw, 0, ph), value=_FILL.get(k, 0))
        h, w = out["image"].shape[-2:]
        ys = torch.randint(0, h - crop + 1, (out["image"].shape[0],)).tolist()
        xs = torch.randint(0, w - crop + 1, (out["image"].shape[0],)).tolist()
        for k in keys:
            out[k] = torch.stack([v[..., y:y + crop, x:x + crop] for v, y, x in zip(out[k], ys, xs)])
    if shift:
        if shift < 0:
            raise ValueError(f"shift must be >= 0, got {shift}")
        h, w = out["image"].shape[-2:]
        ys = torch.randint(0, 2 * shift + 1, (out["image"].shape[0],)).tolist()
        xs = torch.randint(0, 2 * shift + 1, (out["image"].shape[0],)).tolist()
        for k in keys:
            fill = 0.5 if k == "image" else _FILL.get(k, 0)
            v = F.pad(out[k], (shift,) * 4, value=fill)
            out[k] = torch.stack([t[..., y:y + h, x:x + w] for t, y, x in zip(v, ys, xs)])
    return out


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of a list of items; ``meta`` stays a list (its lengths vary per image)."""
    if not items:
        raise ValueError("collate needs at least one item")
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack {key!r}: items have different shapes {sorted(shapes)}; "
                                 "resize or crop them to one size first")
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
