"""Classifiers with an explicit ``features(x)`` and a bias-free 1x1-conv ``head`` (CAMs need no hooks),
and segmentation models. Constructors live in plain dicts: ``BACKBONES`` and ``SEGMENTERS``.

IRNet's classifier choices are named options of :func:`build_classifier` with IRNet's values as the
defaults for the ResNets: frozen batch-norm statistics (``freeze_bn``), frozen stem (``freeze_stem``),
the output of ``layer2`` detached so only ``layer3``/``layer4`` and the head learn (``detach_until``),
and a 10x learning rate for the head (:meth:`Classifier.param_groups`). IRNet's optimizer passes the
weight decay positionally into SGD's momentum slot; the kit's optimizer uses keyword arguments and does not
reproduce that bug (see :mod:`conta_kit.train`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _pw_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """A small CNN (output stride 8, 4 x width channels) that trains on the embedded benchmark on a CPU."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv_bn(3, w, 2), _conv_bn(w, w, 1))
        self.layer1 = nn.Sequential(_conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w, 1))
        self.layer2 = nn.Sequential(_conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w, 1))
        self.layer3 = nn.Sequential(_conv_bn(4 * w, 4 * w, 1), _conv_bn(4 * w, 4 * w, 1))
        self.out_channels = 4 * w
        self.stages = ("stem", "layer1", "layer2", "layer3")


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk (no avgpool/fc) at output stride 16 (default) or 8."""

    def __init__(self, name: str, output_stride: int = 16, dilate: bool = True) -> None:
        super().__init__()
        import torchvision

        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        ctor = getattr(torchvision.models, name)
        replace = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
        if name == "resnet18" or not dilate:
            net = ctor(weights=None)
            for layer, flag in zip(("layer3", "layer4"), replace[1:]):
                if flag:  # drop the stride without dilation (IRNet's literal choice; BasicBlock can't dilate)
                    blk = getattr(net, layer)[0]
                    (blk.conv2 if hasattr(blk, "conv3") else blk.conv1).stride = (1, 1)
                    blk.downsample[0].stride = (1, 1)
        else:
            net = ctor(weights=None, replace_stride_with_dilation=replace)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = net.fc.in_features
        self.stages = ("stem", "layer1", "layer2", "layer3", "layer4")
        self._tv_name = name

    def load_torchvision_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a torchvision ResNet state dict (``conv1.weight``, ``layer1...``; ``fc`` ignored)."""
        mapped = {}
        for k, v in state.items():
            if k.startswith("fc."):
                continue
            head, _, rest = k.partition(".")
            if head == "conv1":
                mapped[f"stem.0.{rest}"] = v
            elif head == "bn1":
                mapped[f"stem.1.{rest}"] = v
            else:
                mapped[k] = v
        try:
            missing, unexpected = self.load_state_dict(mapped, strict=False)
        except RuntimeError as e:
            raise ValueError(f"{source} does not fit a {self._tv_name} backbone: {str(e).splitlines()[0]}") from e
        if missing or unexpected:
            raise ValueError(f"{source} does not fit a {self._tv_name} backbone: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "tiny": lambda **kw: TinyBackbone(width=kw.get("width", 32)),
    "resnet18": lambda **kw: ResNetBackbone("resnet18", kw.get("output_stride", 16), kw.get("dilate", True)),
    "resnet50": lambda **kw: ResNetBackbone("resnet50", kw.get("output_stride", 16), kw.get("dilate", True)),
    "resnet101": lambda **kw: ResNetBackbone("resnet101", kw.get("output_stride", 16), kw.get("dilate", True)),
}
_TV_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights"}


class Classifier(nn.Module):
    """Multi-label classifier: ``logits = head(GAP(features(x)))``; CAM = ``head.weight`` applied to features.

    Inputs are images in [0, 1] (B, 3, H, W); ImageNet normalisation is a registered buffer.

    Args:
        backbone: a module with ``stages`` (names of its sequential stages) and ``out_channels``.
        num_classes: C foreground classes.
        freeze_bn: keep batch-norm statistics and affine parameters fixed (IRNet's FixedBatchNorm).
        freeze_stem: no gradient for the stem (IRNet freezes conv1/bn1).
        detach_until: name of the stage whose output is detached (IRNet: "layer2"), or None.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, freeze_bn: bool = False, freeze_stem: bool = False,
                 detach_until: str | None = None) -> None:
        super().__init__()
        if detach_until is not None and detach_until not in backbone.stages:
            raise ValueError(f"detach_until must be one of {backbone.stages} or None, got {detach_until!r}")
        self.backbone, self.num_classes = backbone, num_classes
        self.head = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.head.weight)
        self.freeze_bn, self.detach_until = freeze_bn, detach_until
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D, h, w) feature map."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
        x = (x - self.mean) / self.std
        for name in self.backbone.stages:
            x = getattr(self.backbone, name)(x)
            if name == self.detach_until:
                x = x.detach()
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, C)."""
        f = self.features(x)
        return self.head(f.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def param_groups(self, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """Backbone parameters at lr x1, head at lr x ``head_lr_mult`` (IRNet: 10); frozen ones left out."""
        back = [p for p in self.backbone.parameters() if p.requires_grad]
        return [{"params": back, "lr_mult": 1.0}, {"params": list(self.head.parameters()), "lr_mult": head_lr_mult}]


def _imagenet_state(name: str) -> dict[str, torch.Tensor]:
    import urllib.error

    import torchvision

    weights = getattr(torchvision.models, _TV_WEIGHTS[name]).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise RuntimeError(
            f"could not fetch torchvision's ImageNet weights for {name} ({type(e).__name__}: {e}). Offline, "
            f"download {weights.url} elsewhere and pass its local path: pretrained='/path/to/"
            f"{Path(weights.url).name}'") from e


def build_classifier(backbone: str, num_classes: int, pretrained: str | Path | None = None, output_stride: int = 16,
                     *, dilate: bool = True, freeze_bn: bool | None = None, freeze_stem: bool | None = None,
                     detach_until: str | None = "irnet", width: int = 32) -> Classifier:
    """Build a CAM classifier.

    Args:
        backbone: a key of ``BACKBONES``: "tiny", "resnet18", "resnet50", "resnet101".
        num_classes: C foreground classes.
        pretrained: None, "imagenet" (torchvision's weights API; needs the network or a warm torch hub cache),
            or a path to a torchvision ResNet state-dict file (loaded with ``weights_only=True``).
        output_stride: 16 (IRNet) or 8 for ResNets; the tiny backbone is always 8.
        dilate: ResNets keep their receptive field with dilation (torchvision); False drops the stride only,
            as IRNet does.
        freeze_bn, freeze_stem: IRNet's choices; default True for ResNets, False for "tiny".
        detach_until: "irnet" = "layer2" for ResNets and None for "tiny"; or a stage name, or None.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    net = BACKBONES[backbone](output_stride=output_stride, dilate=dilate, width=width)
    is_resnet = backbone != "tiny"
    if pretrained is not None:
        if not is_resnet:
            raise ValueError("pretrained weights exist only for the ResNet backbones")
        if pretrained == "imagenet":
            state, source = _imagenet_state(backbone), f"torchvision ImageNet weights for {backbone}"
        else:
            path = Path(pretrained)
            if not path.is_file():
                raise FileNotFoundError(f"pretrained weights file {path} not found")
            state, source = torch.load(path, map_location="cpu", weights_only=True), str(path)
        net.load_torchvision_state(state, source)
    if detach_until == "irnet":
        detach_until = "layer2" if is_resnet else None
    return Classifier(net, num_classes, freeze_bn=is_resnet if freeze_bn is None else freeze_bn,
                      freeze_stem=is_resnet if freeze_stem is None else freeze_stem, detach_until=detach_until)


class TinySegmenter(nn.Module):
    """Small encoder-decoder for the embedded benchmark: (B, 3, H, W) in [0, 1] -> logits (B, K, H, W)."""

    def __init__(self, num_labels: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(_conv_bn(3, w, 2), _conv_bn(w, w, 1))  # /2
        self.enc2 = nn.Sequential(_conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w, 1))  # /4
        self.enc3 = nn.Sequential(_conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w, 1))  # /8
        self.dec2 = _pw_bn(4 * w + 2 * w, 2 * w)  # 1x1 fusions keep the decoder cheap on a CPU
        self.dec1 = _pw_bn(2 * w + w, w)
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
        import torchvision

        ctor = getattr(torchvision.models.segmentation, name)
        self.net = ctor(weights=None, weights_backbone=None, num_classes=num_labels, aux_loss=False)
        if pretrained_backbone is not None:
            path = Path(pretrained_backbone)
            if not path.is_file():
                raise FileNotFoundError(f"backbone weights file {path} not found")
            state = {k: v for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
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


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a kit checkpoint (or plain state dict) into ``model`` with ``weights_only=True``.

    Raises:
        ValueError: naming the file when its tensors do not fit the model (e.g. another architecture).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}: "
                         f"{str(e).splitlines()[0]} ...") from e
    return ckpt if isinstance(ckpt, dict) else {}
