"""Render MS-COCO 2014 instance annotations into VOC-layout class-id PNGs for :class:`COCOSegmentation`.

Optional: needs ``pycocotools`` (``pip install 'conta_kit[coco]'``) to decode polygons and RLE. Usage::

    python -m conta_kit.data.coco_masks --annotations annotations/instances_train2014.json \
        --images train2014 --out coco_voc --split train

writes ``coco_voc/SegmentationClass/<id>.png`` (0 background, 1..80 contiguous classes, 255 on crowd
regions), ``coco_voc/JPEGImages/<id>.jpg`` as symlinks to the source images and
``coco_voc/ImageSets/Segmentation/<split>.txt``. Images without any non-crowd object are left out (the
usual WSSS convention: 82,081 train / 40,137 val images). Instances are painted largest first, so small
objects stay visible.

Safe by construction: the whole JSON is checked (structure, ids, sizes, file names) before anything is
written, and an error names the file and the entry; a split or file name that would leave ``--out`` or the
image folder is refused; annotations whose image is missing are skipped and counted (``--strict``: refused).
Re-running resumes: finished PNGs are kept, the temporaries and dangling links a killed run left are
recognised and removed. The source folders are only read.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io import atomic_write_bytes, atomic_write_text
from ..progress import tqdm
from .folder import COCO_CATEGORY_IDS, IGNORE_INDEX

log = logging.getLogger(__name__)
_CONTIGUOUS = {cid: k + 1 for k, cid in enumerate(COCO_CATEGORY_IDS)}
_SPLIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SUBFOLDERS = ("SegmentationClass", "JPEGImages", "ImageSets/Segmentation")


@dataclass
class Report:
    """What :func:`convert` did: images kept, and what it left out and why."""

    kept: int = 0
    no_object: int = 0
    missing_image: list[str] = field(default_factory=list)
    resumed: int = 0
    cleaned: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"kept {self.kept} images ({self.resumed} already rendered by an earlier run)",
               f"left out {self.no_object} images without a non-crowd object"]
        if self.missing_image:
            out.append(f"skipped {len(self.missing_image)} images missing from the image folder, e.g. "
                       f"{self.missing_image[:3]}")
        if self.cleaned:
            out.append(f"removed {len(self.cleaned)} leftovers of a stopped run (temporaries, dangling links)")
        return out


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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_segmentation(seg: Any) -> str | None:
    """None when ``seg`` is a COCO polygon list or RLE dict, else what is wrong with it."""
    if isinstance(seg, list):
        if not seg:
            return "an empty polygon list"
        for poly in seg:
            if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly)):
                return "a polygon that is not a flat list of >= 3 (x, y) number pairs"
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
            return "an RLE whose 'size' is not [height, width]"
        if not isinstance(counts, (list, str)):
            return "an RLE whose 'counts' is neither a list nor a string"
        return None
    return f"a {type(seg).__name__}, not a polygon list or an RLE dict"


def load_annotations(path: str | Path) -> tuple[dict[int, dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    """Read and check a COCO instances JSON: (image id -> image entry, image id -> its annotations).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file and the first entry that is not a valid COCO image or annotation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}; a truncated "
                         "download?)") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e.reason})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a COCO instances file is a JSON object, got a {type(data).__name__}")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: no '{key}' list (is this an instances_*.json file?)")
    images: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            raise ValueError(f"{where} has no integer 'id'")
        if not all(_is_int(img.get(k)) and img[k] > 0 for k in ("height", "width")):
            raise ValueError(f"{where} (id {img['id']}): height and width must be positive integers, got "
                             f"{img.get('height')!r} x {img.get('width')!r}")
        name = img.get("file_name")
        if not isinstance(name, str) or not name or name != Path(name).name or name in (".", "..") \
                or "\\" in name or "\0" in name or not Path(name).stem.strip("."):
            raise ValueError(f"{where} (id {img['id']}): file_name {name!r} must be a plain file name inside the "
                             "image folder (no folders, '..' or absolute paths)")
        if img["id"] in images:
            raise ValueError(f"{where}: image id {img['id']} appears twice")
        images[img["id"]] = img
    anns: dict[int, list[dict[str, Any]]] = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise ValueError(f"{where} is not an object")
        where += f" (id {ann.get('id')})"
        if ann.get("image_id") not in images:
            raise ValueError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in _CONTIGUOUS:
            raise ValueError(f"{where}: category_id {ann.get('category_id')!r} is not a COCO category id")
        if "segmentation" not in ann:
            raise ValueError(f"{where}: no 'segmentation'")
        problem = _check_segmentation(ann["segmentation"])
        if problem:
            raise ValueError(f"{where}: 'segmentation' is {problem}")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise ValueError(f"{where}: iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}")
        anns.setdefault(ann["image_id"], []).append(ann)
    return images, anns


def _decoder(height: int, width: int) -> Callable[[dict[str, Any]], np.ndarray]:
    try:
        from pycocotools import mask as mask_utils
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("rendering COCO masks needs pycocotools: pip install pycocotools") from e

    def decode(ann: dict[str, Any]) -> np.ndarray:
        seg = ann["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        return mask_utils.decode(rle)

    return decode


def _check_out(out: Path, images: Path, split: str) -> None:
    if not _SPLIT.match(split) or ".." in split:
        raise ValueError(f"--split {split!r} must be a plain name (letters, digits, '_', '-', '.'), e.g. train or val")
    resolved = out.resolve()
    if resolved == images or images in resolved.parents:
        raise ValueError(f"output folder {out} must not be inside the source image folder {images}")
    for p in [out, *out.parents]:
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"--out {out}: {p} is a file, not a folder")
            break
    for sub in _SUBFOLDERS:
        if (out / sub).exists() and not (out / sub).is_dir():
            raise NotADirectoryError(f"--out {out}: {out / sub} is a file, not a folder")


def _clean_leftovers(out: Path) -> list[str]:
    """Temporaries and dangling links a killed run left in ``out`` (only names this converter writes)."""
    gone = []
    for sub in _SUBFOLDERS:
        folder = out / sub
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            stale_tmp = p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()
            dangling = p.is_symlink() and not p.exists()
            if stale_tmp or dangling:
                p.unlink()
                gone.append(str(p))
    return gone


def convert(annotations: str | Path, images: str | Path, out: str | Path, split: str, *,
            strict: bool = False, progress: bool = True) -> Report:
    """Render one COCO split into ``out`` and return what was kept and skipped.

    Raises:
        FileNotFoundError: a missing annotation file or image folder (or, with ``strict``, a missing image).
        ValueError: an invalid JSON, an unsafe split or file name, or ``out`` inside the image folder.
        NotADirectoryError: when ``out`` (or one of its subfolders) is a file.
    """
    images, out = Path(images).resolve(), Path(out)
    if not images.is_dir():
        raise FileNotFoundError(f"COCO image folder {images} not found")
    _check_out(out, images, split)
    infos, anns = load_annotations(annotations)
    report = Report()
    todo = []
    for img_id in sorted(infos):
        info, own = infos[img_id], anns.get(img_id, [])
        if not any(not a.get("iscrowd", 0) for a in own):
            report.no_object += 1
        elif not (images / info["file_name"]).is_file():
            report.missing_image.append(info["file_name"])
        else:
            todo.append((info, own))
    if strict and report.missing_image:
        raise FileNotFoundError(f"{len(report.missing_image)} images of {annotations} are not in {images}, e.g. "
                                f"{report.missing_image[:3]} (without --strict they are skipped and counted)")
    report.cleaned = _clean_leftovers(out)
    for sub in _SUBFOLDERS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    kept = []
    for info, own in tqdm(todo, desc=f"COCO {split} masks", disable=not progress):
        stem = Path(info["file_name"]).stem
        png = out / "SegmentationClass" / f"{stem}.png"
        if png.exists():
            report.resumed += 1
        else:
            try:
                mask = render_class_mask(own, info["height"], info["width"], _decoder(info["height"], info["width"]))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{annotations}: image {info['id']} ({info['file_name']}): {e}") from e
            atomic_write_bytes(png, _png_bytes(mask))
        _link(out / "JPEGImages" / f"{stem}.jpg", images / info["file_name"])
        kept.append(stem)
    report.kept = len(kept)
    atomic_write_text(out / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(kept) + "\n", overwrite=True)
    return report


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target``, made atomically (a link to another target, e.g. a moved image folder, is
    replaced; a real file a user put there is kept)."""
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return
    elif link.exists():
        return
    tmp = link.with_name(f".{link.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conta_kit.data.coco_masks", description=__doc__.split("\n")[0])
    p.add_argument("--annotations", required=True, help="instances_<split>2014.json")
    p.add_argument("--images", required=True, help="folder of the split's JPEGs (train2014 or val2014)")
    p.add_argument("--out", required=True, help="output root in VOC layout (never the source folder)")
    p.add_argument("--split", required=True, help="name of the split file to write, e.g. train or val")
    p.add_argument("--strict", action="store_true", help="refuse (instead of skip) images missing from --images")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    a = p.parse_args(argv)
    try:
        report = convert(a.annotations, a.images, a.out, a.split, strict=a.strict)
    except (ValueError, OSError) as e:
        if a.debug:
            raise
        msg = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else str(e)
        print(f"coco_masks: error: {msg}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    print(f"masks in {Path(a.out) / 'SegmentationClass'}, split file {Path(a.out) / 'ImageSets' / 'Segmentation'}"
          f"/{a.split}.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
