"""What a CAM can and does show, beside its seed score.

* :func:`ceiling_cams`: the *resolution ceiling*. A CAM is no sharper than the classifier's feature grid; the
  ground truth average-pooled to that grid and upsampled the way CAMs are (bilinear, normalised by its max)
  is the best "CAM" that grid can hold. Scored by the same seed code, it bounds every seed score.
* :class:`CamLocalisation`: the share of a class's CAM mass inside its own object (to read against the
  object's share of the image: equal means no localisation), the share of CAM peaks on the object's pixels, and
  the share in its box (the pointing game, strict: no tolerance), which tells a CAM that found the object but
  peaks between its parts (a thin wing, a gap between legs) from one that peaks elsewhere.
* :class:`SurroundLeakage`: CAM mass on an object's own context surround, split by whether that surround is
  the class's paired context or an unpaired one. The geometry of the surround is the same either way (the
  generator draws it from the class), so ``paired - unpaired`` is the part of the leakage that comes from
  confounding, not from blur.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .analytic import normalize_cams


def _onehot(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) label map (0 background, k + 1 class k, 255 ignore) -> (B, C, H, W) float object planes."""
    ids = torch.arange(1, num_classes + 1, device=mask.device)
    return (mask[:, None] == ids[None, :, None, None]).float()


@torch.no_grad()
def ceiling_cams(mask: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The resolution ceiling's "CAMs" (B, C, H, W) in [0, 1]: each class's ground-truth plane average-pooled
    to ``grid`` (the classifier's feature grid), upsampled bilinearly to the image and normalised like a CAM
    (absent classes zero)."""
    if mask.dim() != 3 or labels.dim() != 2 or labels.shape[0] != mask.shape[0]:
        raise ValueError(f"mask must be (B, H, W) and labels (B, C), got {tuple(mask.shape)}, {tuple(labels.shape)}")
    planes = F.adaptive_avg_pool2d(_onehot(mask, labels.shape[1]), grid)
    planes = F.interpolate(planes, size=mask.shape[-2:], mode="bilinear", align_corners=False)
    return normalize_cams(planes, labels)


def _in_box(obj: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """(B, C) float: 1 where pixel (row, col) lies in the tight box around the (B, C, H, W) plane's pixels (0 for
    an empty plane)."""
    h, w = obj.shape[-2:]
    rows, cols = obj.amax(3) > 0, obj.amax(2) > 0  # (B, C, H), (B, C, W)

    def span(a: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = a.float().argmax(2)
        last = n - 1 - a.flip(2).float().argmax(2)
        return first, last

    r0, r1 = span(rows, h)
    c0, c1 = span(cols, w)
    return (rows.any(2) & (r0 <= row) & (row <= r1) & (c0 <= col) & (col <= c1)).float()


#: what a CAM's peak pixel can lie on (:class:`CamLocalisation`'s ``cam_peak_on``)
PEAK_PLACES = ("own object", "other object", "paired context", "other context", "backdrop", "unlabelled")


class CamLocalisation:
    """Accumulates, over (image, present class) pairs: the share of the CAM's mass on the class's own pixels,
    the object's share of the image's labelled pixels (the level a CAM that does not localise reaches), and
    whether the CAM's peak lies on the object, or in the object's box (the tight box around the class's pixels:
    one box per class and image, which is the object's own box in the benchmark, where a class appears once per
    image, and the union of the instances' boxes in photos with several); per class also how far the peak's
    row lies below the object's mean row (``cam_peak_offset_y_per_class``, a fraction of the image height;
    negative: above): a CAM that sits on a ground band under its object, or is pushed away from the image's
    edge, shows here.

    Given the benchmark's context map and pairing, also what the peak pixel lies on (``cam_peak_on_per_class``,
    shares of :data:`PEAK_PLACES` per class, and ``cam_peak_on`` over all pairs): the object itself, another
    object, the class's paired context, another context, the backdrop or an unlabelled pixel; a CAM that misses
    its object by a near miss, by a confounder or by the image's edge looks different here.

    A CAM with no mass anywhere (the classifier found no positive evidence for a present class: a collapsed
    training) has no peak; such pairs are left out of the scores above and counted in ``cam_empty_share``."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.mass_in = self.pixel_share = self.peak_hits = self.box_hits = 0.0
        self.n = self.n_present = 0
        # per class: which classes' CAMs sit on their objects and which on something else (a context shortcut)
        self.class_sums = torch.zeros(4, num_classes, dtype=torch.float64)  # mass in, peak hits, box hits, pairs
        self.offset_sums = torch.zeros(num_classes, dtype=torch.float64)  # peak row - object's mean row
        self.place_sums = torch.zeros(len(PEAK_PLACES), num_classes, dtype=torch.float64)
        self.placed = False

    @torch.no_grad()
    def update(self, cams: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
               context_mask: torch.Tensor | None = None, paired: tuple[int, ...] | None = None) -> None:
        """CAMs (B, C, H, W) >= 0, labels (B, C), ground truth (B, H, W); optionally the context id of each
        pixel (B, H, W; -1 where none) and each class's paired context id, for ``cam_peak_on``."""
        if cams.shape[:2] != labels.shape or cams.shape[2:] != mask.shape[1:] or labels.shape[1] != self.num_classes:
            raise ValueError(f"cams {tuple(cams.shape)}, labels {tuple(labels.shape)} and mask {tuple(mask.shape)} "
                             f"do not fit {self.num_classes} classes")
        obj = _onehot(mask, self.num_classes)
        valid = (mask != 255).float().sum(dim=(1, 2)).clamp_min(1)[:, None]  # (B, 1)
        total = cams.sum(dim=(2, 3))
        present = (labels > 0) & (obj.sum(dim=(2, 3)) > 0)
        use = present & (total > 0)
        inside = (cams * obj).sum(dim=(2, 3)) / total.clamp_min(1e-12)
        arg = cams.flatten(2).argmax(2, keepdim=True)  # (B, C, 1): each CAM's peak pixel
        peak = obj.flatten(2).gather(2, arg)[..., 0]
        in_box = _in_box(obj, arg[..., 0] // cams.shape[3], arg[..., 0] % cams.shape[3])
        self.mass_in += float(inside[use].sum())
        self.pixel_share += float((obj.sum(dim=(2, 3)) / valid)[use].sum())
        self.peak_hits += float(peak[use].sum())
        self.box_hits += float(in_box[use].sum())
        self.n += int(use.sum())
        self.n_present += int(present.sum())
        u = use.double().cpu()
        self.class_sums += torch.stack([(inside.double().cpu() * u).sum(0), (peak.double().cpu() * u).sum(0),
                                        (in_box.double().cpu() * u).sum(0), u.sum(0)])
        h = mask.shape[1]
        rows = torch.arange(h, device=obj.device, dtype=torch.float64).view(1, 1, h)
        obj_rows = obj.double().sum(3)  # (B, C, H): object pixels per row
        centre = (obj_rows * rows).sum(2) / obj_rows.sum(2).clamp_min(1)
        peak_row = (arg[..., 0] // cams.shape[3]).double()
        self.offset_sums += (((peak_row - centre) / h).cpu() * u).sum(0)
        if context_mask is not None and paired is not None:
            if context_mask.shape != mask.shape or len(paired) != self.num_classes:
                raise ValueError(f"context_mask {tuple(context_mask.shape)} must match mask {tuple(mask.shape)} and "
                                 f"paired ({len(paired)}) the {self.num_classes} classes")
            self.placed = True
            at = mask.flatten(1).gather(1, arg[..., 0])  # (B, C): the label under each CAM's peak
            ctx = context_mask.flatten(1).gather(1, arg[..., 0])
            own = torch.arange(1, self.num_classes + 1, device=at.device)[None]
            pair = torch.as_tensor(paired, device=ctx.device)[None]
            place = torch.full_like(at, PEAK_PLACES.index("backdrop"))
            for name, hit in (("other context", ctx >= 0), ("paired context", ctx == pair),
                              ("unlabelled", at == 255), ("other object", (at > 0) & (at != 255)),
                              ("own object", at == own)):  # later rows win
                place = place.masked_fill(hit, PEAK_PLACES.index(name))
            onehot = F.one_hot(place.cpu(), len(PEAK_PLACES)).double() * u[..., None]  # (B, C, P)
            self.place_sums += onehot.sum(0).T

    def compute(self) -> dict[str, float]:
        n = self.n or math.nan
        pairs = self.class_sums[3]
        per = self.class_sums[:3] / pairs.clamp_min(1)
        per[:, pairs == 0] = math.nan
        offset = self.offset_sums / pairs.clamp_min(1)
        offset[pairs == 0] = math.nan
        out: dict = {}
        if self.placed:
            shares = self.place_sums / pairs.clamp_min(1)
            shares[:, pairs == 0] = math.nan
            total_n = float(pairs.sum()) or math.nan
            out = {"cam_peak_on": {p: float(self.place_sums[i].sum()) / total_n for i, p in enumerate(PEAK_PLACES)},
                   "cam_peak_on_per_class": {p: shares[i].tolist() for i, p in enumerate(PEAK_PLACES)}}
        return {**out, "cam_mass_in_object": self.mass_in / n, "object_pixel_share": self.pixel_share / n,
                "cam_peak_on_object": self.peak_hits / n, "cam_peak_in_box": self.box_hits / n, "num_pairs": self.n,
                "cam_empty_share": 1 - self.n / self.n_present if self.n_present else math.nan,
                "cam_mass_in_object_per_class": per[0].tolist(), "cam_peak_on_object_per_class": per[1].tolist(),
                "cam_peak_in_box_per_class": per[2].tolist(), "cam_peak_offset_y_per_class": offset.tolist()}


class SurroundLeakage:
    """CAM mass on an object's own context surround (share of the class's normalised CAM mass), per class,
    separately for objects on their paired context and on an unpaired one.

    Inputs per batch: ``surround`` (B, H, W) long, k + 1 on the visible context pixels around the object of
    class k (0 elsewhere), and ``surround_paired`` (B, C): 1 paired, 0 unpaired, -1 no surround.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.sums = torch.zeros(2, num_classes, dtype=torch.float64)  # [unpaired, paired] x class
        self.counts = torch.zeros(2, num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, cams: torch.Tensor, surround: torch.Tensor, surround_paired: torch.Tensor) -> None:
        if cams.shape[:2] != surround_paired.shape or cams.shape[2:] != surround.shape[1:]:
            raise ValueError(f"cams {tuple(cams.shape)} do not fit surround {tuple(surround.shape)} and "
                             f"surround_paired {tuple(surround_paired.shape)}")
        cams = cams / cams.amax(dim=(2, 3), keepdim=True).clamp_min(1e-5)
        region = _onehot(surround, self.num_classes)
        share = (cams * region).sum(dim=(2, 3)) / cams.sum(dim=(2, 3)).clamp_min(1e-12)  # (B, C)
        has = (region.sum(dim=(2, 3)) > 0) & (cams.sum(dim=(2, 3)) > 0)
        for paired in (0, 1):
            use = has & (surround_paired == paired)
            self.sums[paired] += (share * use).sum(0).double().cpu()
            self.counts[paired] += use.sum(0).double().cpu()

    def compute(self) -> dict[str, object]:
        per = self.sums / self.counts.clamp_min(1)
        per[self.counts == 0] = math.nan
        diff = per[1] - per[0]

        def mean(x: torch.Tensor) -> float:
            x = x[~torch.isnan(x)]
            return float(x.mean()) if len(x) else math.nan

        return {"surround_leakage_paired": mean(per[1]), "surround_leakage_unpaired": mean(per[0]),
                "confounding_leakage": mean(diff), "confounding_leakage_per_class": diff.tolist(),
                "surround_objects": [int(self.counts[0].sum()), int(self.counts[1].sum())]}
