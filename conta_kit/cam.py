r"""Class activation maps.

Analytic CAM (no hooks): for a classifier with ``features(x)`` (B, D, h, w) and a bias-free 1x1 ``head``
(C, D, 1, 1), :math:`\mathrm{CAM}_k = \mathrm{ReLU}(\sum_d w_{kd} F_d)`. :func:`compute_cams` follows IRNet's
``make_cam``: every scale of the batch is run together with its horizontal flip, each CAM is un-flipped,
resized bilinearly (``align_corners=False``) to the input size ("high_res") and to a stride-4 size
("strided", ceil(H/4) x ceil(W/4)), summed over scales and flips, kept for the image's classes only, and
divided by its own spatial max + 1e-5. One difference: IRNet resizes high_res to a multiple of 16 and
crops; the kit resizes to H x W directly.

Speed: all images of a batch and their flips go through the model in one forward pass per scale (fewer
with ``max_pixels``), optionally in channels-last memory format and, on CUDA, under bf16/fp16 autocast.
:func:`fold_batchnorm` makes an inference copy with batch norm folded into the convolutions, and
:func:`cams_to_shards` streams a whole dataset's CAMs to disk in resumable shards (:func:`load_cams` reads
them back). ``benchmarks/bench_cam.py`` measures all of it against a one-image-at-a-time reference.
"""

from __future__ import annotations

import copy
import hashlib
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .io import atomic_torch_save, read_json, write_json
from .train import AMP_MODES

SHARD_FORMAT = "conta_kit.cam_shards/1"
RESOLUTIONS = ("strided", "full")
_SHARD_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore its previous train/eval state on exit, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _check(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if labels.dim() != 2 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be (B, C) with B = {images.shape[0]} (images), got {tuple(labels.shape)}")
    c = model.head.weight.shape[0]
    if labels.shape[1] != c:
        raise ValueError(f"labels have {labels.shape[1]} classes but the model's head has {c}")


def _check_options(scales: Sequence[float], amp: str, max_pixels: int | None) -> None:
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


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cam_precision(device: torch.device, amp: str) -> str:
    """The precision CAM forward passes run in: on CUDA as ``amp`` says ("auto" = bf16), on a CPU bf16 only
    when asked for by name (bf16 matrix units such as AMX), fp32 everywhere else."""
    if device.type == "cuda":
        return "fp32" if amp == "off" else ("fp16" if amp == "fp16" else "bf16")
    return "bf16" if device.type == "cpu" and amp == "bf16" else "fp32"


def _view_cams(model: nn.Module, x: torch.Tensor, xm: torch.Tensor | None, terms: tuple[bool, ...],
               one_pass: bool, amp: str) -> list[torch.Tensor]:
    """One forward pass over views ``x`` -> the fp32 CAM of each M term (features under autocast)."""
    precision = cam_precision(x.device, amp)
    with torch.autocast(x.device.type, dtype=_DTYPES[precision], enabled=precision != "fp32"):
        if xm is None:
            feats = {True: model.features(x)}
        elif one_pass:
            feats = {True: model.features(x, xm, True)}
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
                 max_pixels: int | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Multi-scale, flip-averaged, normalised CAMs.

    Args:
        model: exposes ``features(x)`` (or ``features(x, x_m, m_term)``) and ``head`` (a 1x1 conv, no bias).
        images: (B, 3, H, W) in [0, 1]. labels: (B, C) multi-hot; absent classes get zero maps.
        scales: input scales; flip: add the horizontal flip of every scale.
        return_strided: also return the (B, C, ceil(H/4), ceil(W/4)) map.
        x_m: (B, H', W') masks for a :class:`~conta_kit.conta.ContaClassifier`; every view gets x_m resized
            and flipped exactly like its image, so M follows the image.
        m_term: True (the adjusted classifier's CAM), False (M = 0: the diagnostic CAM without the M term)
            or "both" (returns the CAMs with and without it, in that order).
        channels_last: feed the views in channels-last (NHWC) memory format; same values up to float
            rounding. The model is not changed (``model.to(memory_format=torch.channels_last)`` once saves
            the per-call weight reorder).
        amp: "off" (fp32), "auto" or "bf16" (bfloat16 autocast) or "fp16": the forward passes run under
            autocast on CUDA; on a CPU only "bf16" named explicitly does (faster where the CPU has bf16
            units, CAMs differ by about 1e-2), everything else runs the fp32 path unchanged. CAMs are formed
            from the features in fp32 either way.
        max_pixels: at most this many input pixels (views x height x width) per forward pass; None puts every
            image of the batch and its flip through one pass per scale. Lower it to bound activation memory.

    Returns:
        (B, C, H, W) float in [0, 1]; then the strided map when asked; with ``m_term="both"`` a tuple
        (cams, [strided,] cams_without_m, [strided_without_m]).
    """
    _check(model, images, labels)
    _check_options(scales, amp, max_pixels)
    if m_term not in (True, False, "both"):
        raise ValueError(f"m_term must be True, False or 'both', got {m_term!r}")
    if x_m is None and m_term is not True:
        raise ValueError("m_term=False/'both' needs x_m (only a ContaClassifier has an M term)")
    if x_m is not None and (x_m.dim() != 3 or x_m.shape[0] != images.shape[0]):
        raise ValueError(f"x_m must be (B, H, W) with B = {images.shape[0]}, got {tuple(x_m.shape)}")
    b, _, h, w = images.shape
    strided = (math.ceil(h / 4), math.ceil(w / 4))
    terms = (True, False) if m_term == "both" else (bool(m_term),)
    one_pass = x_m is not None and getattr(model, "fusion", None) == "last"  # M is the last channel: drop it
    high = [torch.zeros(b, labels.shape[1], h, w, device=images.device) for _ in terms]
    low = [torch.zeros(b, labels.shape[1], *strided, device=images.device) for _ in terms]
    with eval_mode(model):
        for s in scales:
            x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False,
                                                      recompute_scale_factor=False)
            xm = None
            if x_m is not None:
                xm = F.interpolate(x_m[:, None].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            if flip:
                x = torch.cat([x, x.flip(-1)])
                xm = None if xm is None else torch.cat([xm, xm.flip(-1)])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            n = len(x) if max_pixels is None else max(1, max_pixels // (x.shape[-2] * x.shape[-1]))
            parts = [_view_cams(model, x[i : i + n], None if xm is None else xm[i : i + n], terms, one_pass, amp)
                     for i in range(0, len(x), n)]
            for j in range(len(terms)):
                cam = parts[0][j] if len(parts) == 1 else torch.cat([p[j] for p in parts])
                if flip:
                    cam = cam[:b] + cam[b:].flip(-1)
                high[j] += F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
                low[j] += F.interpolate(cam, size=strided, mode="bilinear", align_corners=False)
    out: list[torch.Tensor] = []
    for j in range(len(terms)):
        out.append(normalize_cams(high[j], labels))
        if return_strided:
            out.append(normalize_cams(low[j], labels))
    return out[0] if len(out) == 1 else tuple(out)


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


def _open_shard_dir(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Check ``out`` is new, empty or a shard folder written with the same settings; write its index."""
    index_path = out / "index.json"
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {out} is a file")
    if index_path.is_file():
        old = read_json(index_path)
        if not isinstance(old, dict) or old.get("format") != SHARD_FORMAT:
            raise FileExistsError(f"out_dir {out} has an index.json that is not a CAM shard index; refusing to "
                                  "write into it")
        for key, value in settings.items():
            if old.get(key) != value:
                raise ValueError(f"out_dir {out} holds CAM shards written with {key}={old.get(key)!r}, not "
                                 f"{value!r}; use another out_dir or delete it")
    elif out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"out_dir {out} is not empty and holds no CAM shard index; refusing to write into it")
    index = {**settings, "complete": False}
    write_json(index_path, index, overwrite=True)
    return index


@torch.no_grad()
def cams_to_shards(model: nn.Module, dataset: Dataset, out_dir: str | Path, *, batch_size: int = 16,
                   scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True, shard_size: int = 1024,
                   resolution: str = "strided", dtype: str = "float16", device: str | torch.device = "cpu",
                   amp: str = "auto", channels_last: bool = True, max_pixels: int | None = None,
                   fold_bn: bool = True, num_workers: int = 0, collate_fn: Callable | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Stream the CAMs of a whole dataset to ``out_dir`` in shards; resumable, memory flat.

    Shard ``k`` (``shard_{k:05d}.pt``) holds dataset items ``k * shard_size`` up to ``(k + 1) * shard_size``:
    ``{"indices": (n,) int64, "keys": [(K_i,) int64], "cams": [(K_i, h, w)]}``, the maps of each image's
    labelled classes only (the others are zero by definition), normalised as :func:`compute_cams` does, at
    the stride-4 size ceil(H/4) x ceil(W/4) (``resolution="strided"``, IRNet's ``cams``) or the input size
    (``"full"``, its ``high_res``), stored as ``dtype``. ``index.json`` records the settings, the model's
    fingerprint and the shard list; it is written first (``complete: false``) and rewritten when all
    shards exist. Every file is written atomically, so a stopped run leaves whole shards only: calling
    again with the same settings skips the finished shards. Memory holds one batch and one shard's maps.

    Args:
        model: a CAM classifier (see :func:`compute_cams`); items with ``x_m`` feed a ContaClassifier.
        dataset: map-style dataset of dicts with ``image`` (3, H, W) and ``labels`` (C,); the images of one
            batch must share a size (``batch_size=1`` for folders of mixed sizes).
        out_dir: a new or empty folder, or one this function wrote with the same settings.
        batch_size: images per call of :func:`compute_cams`. shard_size: images per shard file.
        scales, flip, amp, channels_last, max_pixels: as in :func:`compute_cams` (``amp="auto"``: bf16
            autocast on CUDA, fp32 elsewhere).
        resolution: "strided" or "full". dtype: "float16" (maps in [0, 1]: about 5e-4 absolute precision)
            or "float32".
        fold_bn: run a :func:`fold_batchnorm` copy of the model (``model`` itself is not changed).
        num_workers, collate_fn: DataLoader settings (default collate: :func:`conta_kit.data.collate`).

    Returns:
        The index (also in ``out_dir/index.json``).

    Raises:
        FileExistsError: ``out_dir`` is not empty and was not written by this function.
        ValueError: bad arguments, or ``out_dir`` holds shards written with other settings or another model.
    """
    _check_options(scales, amp, max_pixels)
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    if dtype not in _SHARD_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(_SHARD_DTYPES)}, got {dtype!r}")
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset is empty: no CAMs to compute")
    if collate_fn is None:
        from .data import collate as collate_fn
    device = torch.device(device)
    out = Path(out_dir)
    precision = cam_precision(device, amp)
    settings = {"format": SHARD_FORMAT, "num_images": n, "num_classes": int(model.head.weight.shape[0]),
                "shard_size": shard_size, "resolution": resolution, "dtype": dtype,
                "scales": [float(s) for s in scales], "flip": bool(flip), "precision": precision,
                "model_sha256": model_fingerprint(model),
                "shards": [f"shard_{k:05d}.pt" for k in range(math.ceil(n / shard_size))]}
    index = _open_shard_dir(out, settings)
    todo = [k for k, name in enumerate(settings["shards"]) if not (out / name).is_file()]
    batches = [list(range(i, min(i + batch_size, (k + 1) * shard_size, n)))
               for k in todo for i in range(k * shard_size, min((k + 1) * shard_size, n), batch_size)]
    net = fold_batchnorm(model) if fold_bn else model
    net.to(device)
    if fold_bn and channels_last:
        net.to(memory_format=torch.channels_last)  # the copy only
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    store = _SHARD_DTYPES[dtype]
    indices: list[int] = []
    keys: list[torch.Tensor] = []
    maps: list[torch.Tensor] = []
    bar = tqdm(total=len(batches), desc="CAM shards", disable=not progress)  # not around the loader: see fit()
    for rows, batch in zip(batches, loader):
        if not isinstance(batch, dict) or "image" not in batch or "labels" not in batch:
            raise ValueError(f"dataset items must be dicts with 'image' and 'labels', got a batch of "
                             f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}")
        labels = batch["labels"].to(device, non_blocking=True)
        x_m = batch.get("x_m")
        full, low = compute_cams(net, batch["image"].to(device, non_blocking=True), labels, scales, flip,
                                 return_strided=True, x_m=None if x_m is None else x_m.to(device, non_blocking=True),
                                 channels_last=channels_last, amp=amp, max_pixels=max_pixels)
        cams = (low if resolution == "strided" else full).to(store).cpu()
        present = (labels > 0).cpu()
        for i, row in enumerate(rows):
            k = torch.nonzero(present[i]).flatten()
            indices.append(row)
            keys.append(k)
            maps.append(cams[i, k].clone())
        shard = rows[0] // shard_size
        if len(indices) == min((shard + 1) * shard_size, n) - shard * shard_size:
            atomic_torch_save(out / settings["shards"][shard],
                              {"indices": torch.tensor(indices), "keys": keys, "cams": maps}, overwrite=False)
            indices, keys, maps = [], [], []
        bar.update()
    bar.close()
    index["complete"] = True
    write_json(out / "index.json", index, overwrite=True)
    return index


def load_cams(out_dir: str | Path) -> Iterator[tuple[int, torch.Tensor]]:
    """Read :func:`cams_to_shards` output back, one shard in memory at a time.

    Yields:
        (dataset index, (C, h, w) float32 CAMs with zero maps for the classes the image does not have),
        in dataset order.

    Raises:
        FileNotFoundError: no index. ValueError: not a shard folder, or not complete.
    """
    out = Path(out_dir)
    if not (out / "index.json").is_file():
        raise FileNotFoundError(f"{out} has no index.json (not a CAM shard folder)")
    index = read_json(out / "index.json")
    if not isinstance(index, dict) or index.get("format") != SHARD_FORMAT:
        raise ValueError(f"{out}/index.json is not a CAM shard index")
    if not index["complete"]:
        raise ValueError(f"the CAM shards in {out} are not complete; run cams_to_shards again to finish them")
    expected = 0
    for name in index["shards"]:
        shard = torch.load(out / name, map_location="cpu", weights_only=True)
        for i, k, cam in zip(shard["indices"].tolist(), shard["keys"], shard["cams"]):
            if i != expected:
                raise ValueError(f"{out / name} holds image {i} where image {expected} was expected")
            dense = torch.zeros(index["num_classes"], *cam.shape[1:])
            dense[k] = cam.float()
            expected += 1
            yield i, dense
    if expected != index["num_images"]:
        raise ValueError(f"{out} holds {expected} images, its index says {index['num_images']}")


def grad_cam(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             layer: nn.Module | None = None) -> torch.Tensor:
    """Grad-CAM through captum's ``LayerGradCam`` for any classifier: (B, C, H, W) normalised, absent = 0.

    ``layer`` defaults to the last stage of ``model.backbone``. Hooks are released and the train/eval mode
    restored even when the forward pass fails.
    """
    from captum.attr import LayerGradCam

    _check(model, images, labels)
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
