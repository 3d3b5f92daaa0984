"""CAMs -> pseudo-masks: a constant background plane, argmax over the image's classes, optional CRF.

Label ids: 0 background, k + 1 for class index k, 255 ignore. Classes absent from an image never appear.
``REFINERS`` maps a name to a refinement function ``(images, probs) -> probs``; "none" and, when the
optional ``pydensecrf2`` is installed, "crf" (IRNet's settings).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

IGNORE_INDEX = 255


def _check(cams: torch.Tensor, labels: torch.Tensor) -> None:
    if cams.dim() != 4:
        raise ValueError(f"cams must be (B, C, H, W), got shape {tuple(cams.shape)}")
    if labels.shape != cams.shape[:2]:
        raise ValueError(f"labels must be (B, C) = {tuple(cams.shape[:2])}, got {tuple(labels.shape)}")


def _with_background(cams: torch.Tensor, labels: torch.Tensor, bg: float) -> torch.Tensor:
    """(B, 1 + C, H, W) scores: plane 0 = ``bg``, absent classes at -inf."""
    fg = cams.masked_fill(labels[:, :, None, None] <= 0, float("-inf"))
    return torch.cat([torch.full_like(cams[:, :1], bg), fg], dim=1)


def foreground_argmax(cams: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best present class per pixel: (score, label id 1..C), each (B, H, W); -inf / 0 without a class.

    ``where(score > t, ids, 0)`` then equals :func:`cams_to_labels` at background threshold ``t`` (the
    background plane wins ties, like ``argmax``), so a threshold sweep costs one argmax in all.
    """
    _check(cams, labels)
    score, idx = cams.masked_fill(labels[:, :, None, None] <= 0, float("-inf")).max(dim=1)
    return score, idx + 1


def cams_to_labels(cams: torch.Tensor, labels: torch.Tensor, bg_threshold: float = 0.15,
                   refine: str = "none", images: torch.Tensor | None = None) -> torch.Tensor:
    """Argmax over a constant background plane and the present classes: (B, H, W) long in 0..C."""
    _check(cams, labels)
    if refine == "none":
        score, ids = foreground_argmax(cams, labels)
        return torch.where(score > bg_threshold, ids, torch.zeros_like(ids))
    scores = _with_background(cams, labels, bg_threshold)
    if refine != "none":
        if refine not in REFINERS:
            raise ValueError(f"refine must be one of {sorted(REFINERS) + ['none']}, got {refine!r}")
        if images is None:
            raise ValueError("refinement needs the images")
        probs = torch.softmax(scores.float().clamp_min(-1e4) * 10.0, dim=1)
        scores = REFINERS[refine](images, probs)
    return scores.argmax(dim=1)


def cams_to_pseudo_masks(cams: torch.Tensor, labels: torch.Tensor, bg_threshold: float = 0.15, *,
                         conf_fg: float | None = None, conf_bg: float | None = None, refine: str = "none",
                         images: torch.Tensor | None = None) -> torch.Tensor:
    """Pseudo-masks from normalised CAMs.

    Args:
        cams: (B, C, H, W) in [0, 1]. labels: (B, C) image-level multi-hot.
        bg_threshold: background plane when ``conf_fg``/``conf_bg`` are not given (one mask, no ignore).
        conf_fg, conf_bg: IRNet's confident regions (0.30 / 0.05): a pixel is class k where the run with
            background ``conf_fg`` says k, background where the run with ``conf_bg`` says background, and
            255 otherwise.
        refine: "none" or a key of ``REFINERS`` ("crf" with pydensecrf2), applied to each run.

    Returns:
        (B, H, W) long with 0, 1..C and (with confident regions) 255.
    """
    if (conf_fg is None) != (conf_bg is None):
        raise ValueError("give both conf_fg and conf_bg, or neither")
    if conf_fg is None:
        return cams_to_labels(cams, labels, bg_threshold, refine, images)
    if conf_bg > conf_fg:
        raise ValueError(f"conf_bg ({conf_bg}) must not exceed conf_fg ({conf_fg})")
    fg = cams_to_labels(cams, labels, conf_fg, refine, images)
    bg = cams_to_labels(cams, labels, conf_bg, refine, images)
    out = fg.clone()
    out[fg == 0] = IGNORE_INDEX
    out[bg == 0] = 0
    return out


def _crf(images: torch.Tensor, probs: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """Dense CRF with IRNet's settings (gaussian sxy 3 compat 3; bilateral sxy 50, srgb 5, compat 10)."""
    try:
        import pydensecrf.densecrf as dcrf  # optional extra: only the CRF refiner needs it
        from pydensecrf.utils import unary_from_softmax
    except ImportError as e:
        raise ImportError("refine='crf' needs the optional extra: pip install pydensecrf2==1.1") from e

    out = torch.empty_like(probs)
    for i in range(images.shape[0]):
        img = np.ascontiguousarray((images[i].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8))
        p = probs[i].float().cpu().numpy()
        n, h, w = p.shape
        d = dcrf.DenseCRF2D(w, h, n)
        d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(p)))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=img, compat=10)
        q = np.array(d.inference(iters)).reshape(n, h, w)
        out[i] = torch.from_numpy(q).to(probs)
    return out


REFINERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"crf": _crf}
