"""Render MS-COCO 2014 instance annotations into VOC-layout class-id PNGs for :class:`COCOSegmentation`.

Optional: needs ``pycocotools`` (``pip install 'conta_kit[coco]'``). Usage::

    python -m conta_kit.data.coco_masks --annotations annotations/instances_train2014.json \
        --images train2014 --out coco_voc --split train

writes ``coco_voc/SegmentationClass/<id>.png`` (0 background, 1..80 contiguous classes, 255 on crowd
regions), ``coco_voc/JPEGImages/<id>.jpg`` as symlinks to the source images and
``coco_voc/ImageSets/Segmentation/<split>.txt``. Images without any non-crowd object are left out (the
usual WSSS convention: 82,081 train / 40,137 val images). Instances are painted largest first, so small
objects stay visible. Re-running resumes: finished PNGs are kept. The source folders are only read.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..io import atomic_write_bytes, atomic_write_text
from .folder import COCO_CATEGORY_IDS, IGNORE_INDEX

_CONTIGUOUS = {cid: k + 1 for k, cid in enumerate(COCO_CATEGORY_IDS)}


def render_class_mask(anns: Iterable[dict[str, Any]], height: int, width: int,
                      ann_to_mask: Callable[[dict[str, Any]], np.ndarray]) -> np.ndarray:
    """Paint instances (largest area first) into an (H, W) uint8 class-id mask; crowd regions -> 255."""
    mask = np.zeros((height, width), np.uint8)
    for ann in sorted(anns, key=lambda a: -float(a.get("area", 0.0))):
        if ann["category_id"] not in _CONTIGUOUS:
            raise ValueError(f"annotation {ann.get('id')} has unknown category id {ann['category_id']}")
        m = ann_to_mask(ann).astype(bool)
        if m.shape != (height, width):
            raise ValueError(f"annotation {ann.get('id')} mask is {m.shape}, image is {(height, width)}")
        mask[m] = IGNORE_INDEX if ann.get("iscrowd", 0) else _CONTIGUOUS[ann["category_id"]]
    return mask


def convert(annotations: str | Path, images: str | Path, out: str | Path, split: str) -> int:
    """Render one COCO split into ``out``; returns the number of images kept."""
    try:
        from pycocotools.coco import COCO
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("rendering COCO masks needs pycocotools: pip install pycocotools") from e
    images, out = Path(images).resolve(), Path(out)
    if not images.is_dir():
        raise FileNotFoundError(f"COCO image folder {images} not found")
    if out.resolve() == images or images in out.resolve().parents:
        raise ValueError(f"output folder {out} must not be inside the source image folder {images}")
    coco = COCO(str(annotations))
    for sub in ("SegmentationClass", "JPEGImages", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    kept = []
    for img_id in tqdm(sorted(coco.getImgIds()), desc=f"COCO {split} masks"):
        info = coco.loadImgs(img_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None))
        if not any(not a.get("iscrowd", 0) for a in anns):
            continue
        stem = Path(info["file_name"]).stem
        png = out / "SegmentationClass" / f"{stem}.png"
        if not png.exists():
            mask = render_class_mask(anns, info["height"], info["width"], coco.annToMask)
            atomic_write_bytes(png, _png_bytes(mask))
        link = out / "JPEGImages" / f"{stem}.jpg"
        if not link.exists():
            os.symlink(images / info["file_name"], link)
        kept.append(stem)
    atomic_write_text(out / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(kept) + "\n", overwrite=True)
    return len(kept)


def _png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--annotations", required=True, help="instances_<split>2014.json")
    p.add_argument("--images", required=True, help="folder of the split's JPEGs (train2014 or val2014)")
    p.add_argument("--out", required=True, help="output root in VOC layout (never the source folder)")
    p.add_argument("--split", required=True, help="name of the split file to write, e.g. train or val")
    a = p.parse_args(argv)
    n = convert(a.annotations, a.images, a.out, a.split)
    print(f"wrote {n} masks to {Path(a.out) / 'SegmentationClass'}")


if __name__ == "__main__":
    main()
