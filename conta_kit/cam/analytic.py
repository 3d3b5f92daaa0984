r"""Class activation maps.

Analytic CAM (no hooks): for a classifier with ``features(x)`` (B, D, h, w) and a bias-free 1x1 ``head``
(C, D, 1, 1), :math:`\mathrm{CAM}_k = \mathrm{ReLU}(\sum_d w_{kd} F_d)`. :func:`compute_cams` follows IRNet's
``make_cam``: every scale of the batch is run together with its horizontal flip, each CAM is un-flipped,
resized bilinearly (``align_corners=False``) to the input size ("high_res") and to a stride-4 size
("strided", ceil(H/4) x ceil(W/4)), summed over scales and flips, kept for the image's classes only, and
divided by its own spatial max + 1e-5. One difference: IRNet resizes high_res to a multiple of 16 and
crops; the kit resizes to H x W directly.

Where a cell goes: resizing with ``align_corners=False`` puts cell i of a stride-s map at the centre of its
s x s block of pixels, s i + (s - 1) / 2, but the stride-2 layers of the tiny backbone and of the ResNets (3 x 3
with padding 1, 1 x 1 without; 7 x 7 with padding 3) centre its receptive field on pixel s i: IRNet's
placement puts every CAM (s - 1) / 2 pixels below and right of its cells' receptive-field centres (3.5 px at
stride 8, 7 px for the 0.5 view); the flip averages the horizontal offset away, not the vertical one.
``cell_origin`` places the cells at ``cell_origin + s i`` instead (0 for those backbones). A trained cell need
not look at its geometric centre: ``benchmarks/cam_placement.py`` measures where it does and scores the
placements on a run's classifiers (the pipeline keeps IRNet's: docs/benchmark_health.md).

Speed: all images of a batch and their flips go through the model in one forward pass per scale (fewer
with ``max_pixels``), optionally in channels-last memory format and under bf16/fp16 autocast
(:func:`cam_precision`); the batch is normalised once before it is resized and flipped
(:func:`~conta_kit.models.inference.normalized_inputs`), each scale's views are cast to the forward
pass's precision and layout in one copy, and only the classes of each image are resized and summed
(:func:`present_classes`, as IRNet keeps its ``valid_cat``). ``benchmarks/bench_cam.py`` measures it against a
one-image-at-a-time reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.inference import eval_mode, normalized_inputs
from ..precision import AMP_MODES, DTYPES, resolve


def check_inputs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if labels.dim() != 2 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be (B, C) with B = {images.shape[0]} (images), got {tuple(labels.shape)}")
    c = model.head.weight.shape[0]
    if labels.shape[1] != c:
        raise ValueError(f"labels have {labels.shape[1]} classes but the model's head has {c}")


def check_options(scales: Sequence[float], amp: str, max_pixels: int | None) -> None:
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {tuple(scales)}")
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be None or an int >= 1, got {max_pixels!r}")


def cam_from_features(features: torch.Tensor, head_weight: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) features and (C, D[, 1, 1]) head weights -> ReLU CAM (B, C, h, w)."""
    w = head_weight.reshape(head_weight.shape[0], -1)
    if w.shape[1] != features.shape[1]:
        raise ValueError(f"head expects {w.shape[1]} channels, features have {features.shape[1]}")
    return F.relu(torch.einsum("bdhw,cd->bchw", features, w.to(features.dtype)))


def normalize_cams(cams: torch.Tensor, labels: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Zero absent classes and divide each (image, class) map by its spatial max + eps. (B, C, H, W)."""
    if cams.dim() != 4:
        raise ValueError(f"cams must be (B, C, H, W), got shape {tuple(cams.shape)}")
    if labels is not None:
        cams = cams * (labels > 0).to(cams.dtype)[:, :, None, None]
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + eps)


def cam_precision(device: torch.device, amp: str) -> str:
    """The precision CAM forward passes run in: :func:`conta_kit.precision.resolve` (on CUDA bf16 unless
    ``amp`` is "off" or "fp16"; on a CPU bf16 for "bf16", and for "auto" where the CPU has bf16 units)."""
    return resolve(device, amp)


def _view_cams(model: nn.Module, x: torch.Tensor, xm: torch.Tensor | None, terms: tuple[bool, ...],
               one_pass: bool, amp: str) -> list[torch.Tensor]:
    """One forward pass over views ``x`` -> the fp32 CAM of each M term (features under autocast)."""
    precision = cam_precision(x.device, amp)
    with torch.autocast(x.device.type, dtype=DTYPES[precision], enabled=precision != "fp32"):
        if xm is None or one_pass:
            feats = {True: model.features(x, xm)}
        else:
            feats = {t: model.features(x, xm, t) for t in terms}
    weight = model.head.weight
    cams = []
    for t in terms:
        if t in feats:
            cams.append(cam_from_features(feats[t].float(), weight).float())
        else:  # one pass, M = 0: the M channel's contribution is dropped from the same features
            cams.append(cam_from_features(feats[True][:, :-1].float(), weight[:, :-1]).float())
    return cams


@torch.no_grad()
def compute_cams(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True,
                 return_strided: bool = False, x_m: torch.Tensor | None = None,
                 m_term: bool | str = True, *, channels_last: bool = False, amp: str = "off",
                 max_pixels: int | None = None, cell_origin: float | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Multi-scale, flip-averaged, normalised CAMs.

    Args:
        model: exposes ``features(x, x_m=None, m_term=True)`` and ``head`` (a 1x1 conv, no bias).
        images: (B, 3, H, W) in [0, 1]. labels: (B, C) multi-hot; absent classes get zero maps.
        scales: input scales; flip: add the horizontal flip of every scale.
        return_strided: also return the (B, C, ceil(H/4), ceil(W/4)) map.
        x_m: (B, H', W') masks for a :class:`~conta_kit.methods.conta.ContaClassifier`; every view gets x_m resized
            and flipped exactly like its image, so M follows the image.
        m_term: True (the adjusted classifier's CAM), False (M = 0: the diagnostic CAM without the M term)
            or "both" (returns the CAMs with and without it, in that order).
        channels_last: feed the views in channels-last (NHWC) memory format; same values up to float
            rounding. The model is not changed (``model.to(memory_format=torch.channels_last)`` once saves
            the per-call weight reorder).
        amp: "off" (fp32), "auto", "bf16" or "fp16" (:mod:`conta_kit.precision`): on CUDA the forward passes
            run under autocast; on a CPU under bf16 autocast for "bf16", and for "auto" where the CPU has bf16
            units (AMX, AVX512-BF16), fp32 otherwise. CAMs are formed from the features in fp32 either way.
        max_pixels: at most this many input pixels (views x height x width) per forward pass; None puts every
            image of the batch and its flip through one pass per scale. Lower it to bound activation memory.
        cell_origin: None (IRNet's placement: each view's CAM resized bilinearly, ``align_corners=False``, its
            cells at the centres of their blocks) or the input pixel on which cell 0's receptive field is
            centred (pixel centres at integers; 0 for the tiny backbone and the ResNets): every view's cell i
            is then placed at ``cell_origin + stride * i`` of that view (:func:`place_cells`), flips un-flipped
            after placing.

    Returns:
        (B, C, H, W) float in [0, 1]; then the strided map when asked; with ``m_term="both"`` a tuple
        (cams, [strided,] cams_without_m, [strided_without_m]).
    """
    check_inputs(model, images, labels)
    check_options(scales, amp, max_pixels)
    if m_term not in (True, False, "both"):
        raise ValueError(f"m_term must be True, False or 'both', got {m_term!r}")
    if x_m is None and m_term is not True:
        raise ValueError("m_term=False/'both' needs x_m (only a ContaClassifier has an M term)")
    if cell_origin is not None and not math.isfinite(cell_origin):
        raise ValueError(f"cell_origin must be None or a finite number of pixels, got {cell_origin!r}")
    if x_m is not None and (x_m.dim() != 3 or x_m.shape[0] != images.shape[0]):
        raise ValueError(f"x_m must be (B, H, W) with B = {images.shape[0]}, got {tuple(x_m.shape)}")
    b, _, h, w = images.shape
    strided = (math.ceil(h / 4), math.ceil(w / 4))
    terms = (True, False) if m_term == "both" else (bool(m_term),)
    one_pass = x_m is not None and getattr(model, "fusion", None) == "last"  # M is the last channel: drop it
    order, valid = present_classes(labels)  # only the image's classes are resized and summed (IRNet's valid_cat)
    k = order.shape[1]
    high = [torch.zeros(b, k, h, w, device=images.device) for _ in terms]
    low = [torch.zeros(b, k, *strided, device=images.device) for _ in terms]
    precision = cam_precision(images.device, amp)
    rows = torch.cat([order, order]) if flip else order  # the classes of every view: images, then their flips
    with eval_mode(model), normalized_inputs(model, images) as normalized:
        base = images if normalized is None else normalized  # normalised once per batch, not once per view
        # the normalised views go in cast to the forward pass's precision (what autocast would do to them)
        dtype = torch.float32 if normalized is None else DTYPES[precision]
        for s in scales:
            x = base if s == 1.0 else F.interpolate(base, scale_factor=s, mode="bilinear", align_corners=False,
                                                    recompute_scale_factor=False)
            xm = None
            if x_m is not None:
                xm = F.interpolate(x_m[:, None].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            x = x.to(dtype, memory_format=torch.channels_last if channels_last else torch.preserve_format)
            if flip:  # flipped after the cast: the same values, fewer bytes to move
                x = torch.cat([x, x.flip(-1)])
                xm = None if xm is None else torch.cat([xm, xm.flip(-1)])
            n = len(x) if max_pixels is None else max(1, max_pixels // (x.shape[-2] * x.shape[-1]))
            parts = [_view_cams(model, x[i : i + n], None if xm is None else xm[i : i + n], terms, one_pass, amp)
                     for i in range(0, len(x), n)]
            for j in range(len(terms)):
                cam = parts[0][j] if len(parts) == 1 else torch.cat([p[j] for p in parts])
                cam = torch.gather(cam, 1, rows[:, :, None, None].expand(-1, -1, *cam.shape[-2:]))
                if cell_origin is not None:  # each view's cells placed where they look, then un-flipped
                    for acc, size in ((high[j], (h, w)), (low[j], strided)):
                        up = place_cells(cam, size, tuple(x.shape[-2:]), cell_origin)
                        acc += (up[:b] + up[b:].flip(-1)) if flip else up
                    continue
                if flip:
                    cam = cam[:b] + cam[b:].flip(-1)
                high[j] += F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
                low[j] += F.interpolate(cam, size=strided, mode="bilinear", align_corners=False)
    c = labels.shape[1]
    out: list[torch.Tensor] = []
    for j in range(len(terms)):
        out.append(_scatter_classes(normalize_cams(high[j], valid), order, c))
        if return_strided:
            out.append(_scatter_classes(normalize_cams(low[j], valid), order, c))
    return out[0] if len(out) == 1 else tuple(out)


def place_cells(maps: torch.Tensor, size: tuple[int, int], view: tuple[int, int], origin: float) -> torch.Tensor:
    """(N, k, h', w') cell maps of views of ``view`` (H', W') pixels -> (N, k, *size) maps of the image those
    views were resized from, cell i of each axis at ``origin + stride * i`` view pixels (pixel centres at
    integers; the stride the power of two nearest H' / h'), bilinear between cells, the edge cells' values
    beyond them."""
    axes = []
    for out, v, c in zip(size, view, maps.shape[-2:]):
        stride = 2.0 ** round(math.log2(v / c))
        at = (torch.arange(out, dtype=torch.float32, device=maps.device) + 0.5) * v / out - 0.5  # in view pixels
        axes.append((at - origin) / stride * 2 / max(c - 1, 1) - 1)  # cell index, as grid_sample's -1..1
    gy, gx = torch.meshgrid(axes[0], axes[1], indexing="ij")
    grid = torch.stack([gx, gy], -1).expand(len(maps), -1, -1, -1)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)


def present_classes(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (B, C) -> ``order`` (B, k) int64 and ``valid`` (B, k) bool, k the most classes any image has
    (at least 1): each row lists its image's classes first, in class order, then absent ones as padding,
    which ``valid`` marks False. The rows are distinct classes, so scattering back puts each map in its place."""
    present = labels > 0
    k = max(1, int(present.sum(1).max())) if len(labels) else 1
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :k]
    return order, torch.gather(present, 1, order)


def _scatter_classes(maps: torch.Tensor, order: torch.Tensor, c: int) -> torch.Tensor:
    """(B, k, H, W) maps of the classes ``order`` lists -> (B, C, H, W), zero for every other class."""
    out = maps.new_zeros(maps.shape[0], c, *maps.shape[-2:])
    return out.scatter_(1, order[:, :, None, None].expand_as(maps), maps)
