"""Grad-CAM through captum, for any classifier of the kit (the hook-based reference for the analytic CAM)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.inference import eval_mode
from .analytic import check_inputs, normalize_cams


def grad_cam(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             layer: nn.Module | None = None) -> torch.Tensor:
    """Grad-CAM through captum's ``LayerGradCam`` for any classifier: (B, C, H, W) normalised, absent = 0.

    ``layer`` defaults to the last stage of ``model.backbone``. Hooks are released and the train/eval mode
    restored even when the forward pass fails.
    """
    from captum.attr import LayerGradCam

    check_inputs(model, images, labels)
    if layer is None:
        layer = getattr(model.backbone, model.backbone.stages[-1])
    b, _, h, w = images.shape
    out = torch.zeros(b, labels.shape[1], h, w, device=images.device)
    with eval_mode(model):
        gc = LayerGradCam(model, layer)
        for k in range(labels.shape[1]):
            rows = torch.nonzero(labels[:, k] > 0).flatten()
            if rows.numel() == 0:
                continue
            attr = gc.attribute(images[rows], target=k, relu_attributions=True)  # (n, 1, h', w')
            out[rows, k] = F.interpolate(attr.detach().float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    out = out.clamp_min(0)
    out = out / out.amax(dim=(2, 3), keepdim=True).clamp_min(1e-30)  # Grad-CAM values can be far below eps
    return normalize_cams(out, labels)
