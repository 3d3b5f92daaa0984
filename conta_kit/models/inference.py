"""Model utilities shared by every stage: eval mode as a context, batch-norm folding and input normalisation
once per batch for inference, a state-dict fingerprint, and loading a kit checkpoint with
``weights_only=True``."""

from __future__ import annotations

import copy
import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..io import load_torch
from .classifier import Classifier


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore its previous train/eval state on exit, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def normalized_inputs(model: nn.Module, images: torch.Tensor) -> Iterator[torch.Tensor | None]:
    """Normalise a batch once, outside the model: yields ``images`` (B, 3, H, W) in [0, 1] as the model's
    :class:`~conta_kit.models.Classifier` normalises them (:meth:`~conta_kit.models.Classifier.normalize`), and
    while the context is open that classifier takes its input as it is
    (:attr:`~conta_kit.models.Classifier.takes_normalized`).

    The CAM pyramid resizes and flips every batch into many views; bilinear resizing and flipping commute
    with the per-channel affine normalisation up to float rounding, so one normalisation of the batch
    replaces one per view. Where ``model`` holds no Classifier, or more than one, or one already inside this
    context, it yields None and changes nothing. The flag is restored on exit, even on error.
    """
    found = [m for m in model.modules() if isinstance(m, Classifier)]
    if len(found) != 1 or found[0].takes_normalized:
        yield None
        return
    net = found[0]
    normalized = net.normalize(images)
    net.takes_normalized = True
    try:
        yield normalized
    finally:
        net.takes_normalized = False


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(shift)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with every BatchNorm2d folded into the Conv2d that feeds it.

    In eval mode batch norm is the affine map ``(x - mean) / sqrt(var + eps) * gamma + beta``, so the
    convolution before it can absorb it: weights times ``s = gamma / sqrt(var + eps)``, bias
    ``(b - mean) * s + beta``. The outputs are the eval-mode outputs up to float rounding, with one pass over
    each activation less. Folded pairs: a Conv2d directly followed by a BatchNorm2d inside an
    ``nn.Sequential`` (the kit's tiny models, the ResNet stem and downsample paths, DeepLab's heads) and
    ``conv{k}``/``bn{k}`` in torchvision's ResNet blocks; anything else is left as it is.

    Returns:
        A deep copy in eval mode whose parameters do not require gradients (``model`` is not changed).
        Train ``model``, not the copy: the copy has no batch norm left.
    """
    resnet = sys.modules.get("torchvision.models.resnet")  # not imported: the model holds none of its blocks
    blocks = (resnet.BasicBlock, resnet.Bottleneck) if resnet is not None else ()
    net = copy.deepcopy(model).eval()
    for parent in list(net.modules()):
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            pairs = list(zip(names, names[1:]))
        elif isinstance(parent, blocks):
            pairs = [(f"conv{k}", f"bn{k}") for k in (1, 2, 3) if hasattr(parent, f"bn{k}")]
        else:
            continue
        for a, b in pairs:
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None:
                _fold_into(conv, bn)
                parent._modules[b] = nn.Identity()
    return net.requires_grad_(False)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the state dict (names and values; the memory format does not matter)."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a kit checkpoint (or plain state dict) into ``model`` with ``weights_only=True``.

    Raises:
        ValueError: naming the file when its tensors do not fit the model (e.g. another architecture).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = load_torch(path, map_location="cpu")
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}: "
                         f"{str(e).splitlines()[0]} ...") from e
    return ckpt if isinstance(ckpt, dict) else {}
