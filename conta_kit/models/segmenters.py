"""Segmentation models over background + C classes, in the plain dict ``SEGMENTERS``: logits (B, C + 1, H, W)
for images in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io import load_torch
from .backbones import IMAGENET_MEAN, IMAGENET_STD, conv_bn, pw_bn


class TinySegmenter(nn.Module):
    """Small encoder-decoder for the embedded benchmark: (B, 3, H, W) in [0, 1] -> logits (B, K, H, W)."""

    def __init__(self, num_labels: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(conv_bn(3, w, 2), conv_bn(w, w, 1))  # /2
        self.enc2 = nn.Sequential(conv_bn(w, 2 * w, 2), conv_bn(2 * w, 2 * w, 1))  # /4
        self.enc3 = nn.Sequential(conv_bn(2 * w, 4 * w, 2), conv_bn(4 * w, 4 * w, 1))  # /8
        self.dec2 = pw_bn(4 * w + 2 * w, 2 * w)  # 1x1 fusions keep the decoder cheap on a CPU
        self.dec1 = pw_bn(2 * w + w, w)
        self.out = nn.Conv2d(w, num_labels, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = (x - self.mean) / self.std
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=False), e1], 1))
        return F.interpolate(self.out(d1), size=size, mode="bilinear", align_corners=False)


class TorchvisionSegmenter(nn.Module):
    """torchvision DeepLabV3 (ResNet-50/101) returning plain logits (B, K, H, W) for [0, 1] images."""

    def __init__(self, name: str, num_labels: int, pretrained_backbone: str | Path | None = None) -> None:
        super().__init__()
        import torchvision  # heavy (about a second): only the ResNet / DeepLab models need it

        ctor = getattr(torchvision.models.segmentation, name)
        self.net = ctor(weights=None, weights_backbone=None, num_classes=num_labels, aux_loss=False)
        if pretrained_backbone is not None:
            path = Path(pretrained_backbone)
            if not path.is_file():
                raise FileNotFoundError(f"backbone weights file {path} not found")
            state = {k: v for k, v in load_torch(path, map_location="cpu").items()
                     if not k.startswith("fc.")}
            missing, unexpected = self.net.backbone.load_state_dict(state, strict=False)
            if unexpected:
                raise ValueError(f"{path} does not fit the {name} backbone: unexpected {unexpected[:5]}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)["out"]


SEGMENTERS: dict[str, Callable[..., nn.Module]] = {
    "tiny": lambda k, **kw: TinySegmenter(k, width=kw.get("width", 32)),
    "deeplabv3_resnet50": lambda k, **kw: TorchvisionSegmenter("deeplabv3_resnet50", k, kw.get("pretrained_backbone")),
    "deeplabv3_resnet101": lambda k, **kw: TorchvisionSegmenter("deeplabv3_resnet101", k,
                                                                kw.get("pretrained_backbone")),
}


def build_segmenter(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Segmentation model over ``num_classes + 1`` labels (background is label 0; train with ignore 255).

    Args:
        name: "tiny" (CPU, embedded benchmark), "deeplabv3_resnet50" or "deeplabv3_resnet101".
        num_classes: C foreground classes.
        **kwargs: ``width`` (tiny) or ``pretrained_backbone`` (path to a torchvision ResNet state dict).
    """
    if name not in SEGMENTERS:
        raise ValueError(f"segmenter must be one of {sorted(SEGMENTERS)}, got {name!r}")
    return SEGMENTERS[name](num_classes + 1, **kwargs)
