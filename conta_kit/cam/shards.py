"""A dataset's CAMs streamed to resumable float16 shards on disk (:func:`cams_to_shards`) and read back
(:func:`load_cams`); memory stays at one batch plus one shard."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..data import collate
from ..io import atomic_torch_save, load_torch, read_json, write_json
from ..models.inference import fold_batchnorm, model_fingerprint
from ..progress import tqdm
from .analytic import cam_precision, check_options, compute_cams

SHARD_FORMAT = "conta_kit.cam_shards/1"


RESOLUTIONS = ("strided", "full")


_SHARD_DTYPES = {"float16": torch.float16, "float32": torch.float32}


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
    check_options(scales, amp, max_pixels)
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
        collate_fn = collate
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
        shard = load_torch(out / name, map_location="cpu")
        for i, k, cam in zip(shard["indices"].tolist(), shard["keys"], shard["cams"]):
            if i != expected:
                raise ValueError(f"{out / name} holds image {i} where image {expected} was expected")
            dense = torch.zeros(index["num_classes"], *cam.shape[1:])
            dense[k] = cam.float()
            expected += 1
            yield i, dense
    if expected != index["num_images"]:
        raise ValueError(f"{out} holds {expected} images, its index says {index['num_images']}")
