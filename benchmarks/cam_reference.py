"""The baseline of ``bench_cam.py``: multi-scale CAMs following IRNet's protocol literally.

One image at a time; per scale one forward pass of the pair [image, its horizontal flip]; fp32; the CAM
``ReLU(conv2d(features, head.weight))``, the flipped half flipped back and added; resized bilinearly to the
stride-4 size ceil(H/4) x ceil(W/4) ("strided") and, for "high_res", to the next multiple of 16 and then
cropped to H x W; summed over scales; the image's classes kept; each map divided by its maximum + 1e-5.

Two choices follow the kit so the outputs can be compared: scales are resized from the (3, H, W) tensor
with bilinear interpolation (IRNet rescales the PIL image in its data loader) and every class gets a map
(zero for the classes the image does not have; IRNet stores the present ones only). For H and W that are
multiples of 16 the high_res crop is a no-op and the kit's direct resize to H x W is the same map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.no_grad()
def reference_cams(model: nn.Module, image: torch.Tensor, labels: torch.Tensor,
                   scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """CAMs of one image, IRNet's way.

    Args:
        model: a CAM classifier (``features(x)`` and a bias-free 1x1 ``head``), in eval mode.
        image: (3, H, W) in [0, 1]. labels: (C,) multi-hot.
        scales: input scales, each run with its flip.

    Returns:
        (high_res (C, H, W), strided (C, ceil(H/4), ceil(W/4))), float32 in [0, 1].
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got shape {tuple(image.shape)}")
    if labels.dim() != 1 or labels.shape[0] != model.head.weight.shape[0]:
        raise ValueError(f"labels must be ({model.head.weight.shape[0]},), got shape {tuple(labels.shape)}")
    h, w = image.shape[1:]
    strided_size = (math.ceil(h / 4), math.ceil(w / 4))
    up_size = (math.ceil(h / 16) * 16, math.ceil(w / 16) * 16)
    c = model.head.weight.shape[0]
    strided = torch.zeros(c, *strided_size, device=image.device)
    high = torch.zeros(c, *up_size, device=image.device)
    for s in scales:
        x = image[None]
        if s != 1.0:
            x = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        pair = torch.cat([x, x.flip(-1)])
        cam = F.relu(F.conv2d(model.features(pair), model.head.weight))
        cam = (cam[0] + cam[1].flip(-1))[None]
        strided += F.interpolate(cam, strided_size, mode="bilinear", align_corners=False)[0]
        high += F.interpolate(cam, up_size, mode="bilinear", align_corners=False)[0]
    high = high[:, :h, :w]
    keep = (labels > 0).to(strided.dtype)[:, None, None]
    strided, high = strided * keep, high * keep
    strided = strided / (F.adaptive_max_pool2d(strided, (1, 1)) + 1e-5)
    high = high / (F.adaptive_max_pool2d(high, (1, 1)) + 1e-5)
    return high, strided
