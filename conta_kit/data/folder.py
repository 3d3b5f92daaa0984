"""PASCAL VOC 2012 and MS-COCO 2014 (masks pre-rendered to PNG) read from a local folder, read-only.

Layout (VOC's; COCO uses the same one, see ``conta_kit.data.coco_masks`` to render its masks)::

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png       class ids per pixel (palette or grayscale PNG), 255 = ignore
    root/SegmentationClassAug/<id>.png    optional, SBD-augmented masks (VOC train_aug)
    root/ImageSets/Segmentation/<split>.txt   one id per line

Nothing is ever written under ``root``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# The 80 COCO category ids (with COCO's gaps) in order; contiguous class k+1 <-> COCO_CATEGORY_IDS[k].
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
    34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
IGNORE_INDEX = 255


class SegmentationFolder(Dataset):
    """Base class: images + class-id masks from a VOC-layout folder. Subclasses set the class table.

    Items are the same dicts as :class:`~conta_kit.data.ConfoundedScenes` gives, without ``context_mask``:
    ``image`` (3, H, W) float32 in [0, 1], ``labels`` (C,) float32 multi-hot derived from the mask (0 and 255
    excluded), ``mask`` (H, W) int64, ``meta`` (id, image and mask paths). ``transform``, if given, is
    applied to the item dict (joint image/mask augmentation).
    """

    class_names: tuple[str, ...] = ()
    image_dir = "JPEGImages"
    mask_dirs: tuple[str, ...] = ("SegmentationClass",)
    allow_grayscale = False

    def __init__(self, root: str | Path, split: str = "train", *,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.root = Path(root)
        self._warned: set[Path] = set()
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root {self.root} does not exist or is not a folder")
        self.split, self.transform = split, transform
        self.num_classes = len(self.class_names)
        self.ids = self._read_split(split)
        self.image_paths = [self.root / self.image_dir / f"{i}.jpg" for i in self.ids]
        self.mask_paths = [self._find_mask(i) for i in self.ids]
        missing = [str(p) for p in self.image_paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) listed in split {split!r} are missing, "
                                    f"e.g. {missing[:3]}")

    def _read_split(self, split: str) -> list[str]:
        sets = self.root / "ImageSets" / "Segmentation"
        path = sets / f"{split}.txt"
        if not path.is_file():
            have = sorted(p.stem for p in sets.glob("*.txt")) if sets.is_dir() else []
            raise FileNotFoundError(f"split file {path} not found; splits present: {have or 'none'}")
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        if not ids:
            raise ValueError(f"split file {path} lists no image ids")
        return ids

    def _find_mask(self, image_id: str) -> Path:
        for d in self.mask_dirs:
            p = self.root / d / f"{image_id}.png"
            if p.is_file():
                return p
        tried = ", ".join(str(self.root / d / f"{image_id}.png") for d in self.mask_dirs)
        raise FileNotFoundError(f"no mask for image {image_id!r} (tried {tried})")

    def __len__(self) -> int:
        return len(self.ids)

    def _load_image(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                if mode == "L" and self.allow_grayscale:
                    im = im.convert("RGB")
                elif mode != "RGB":
                    raise ValueError(f"image {path} has mode {mode!r}; expected an RGB image")
                return np.array(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"cannot read image {path}: corrupt or not an image ({e})") from e

    def _load_mask(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("P", "L"):
                    raise ValueError(f"mask {path} has mode {im.mode!r}; expected a palette or grayscale "
                                     "PNG of class ids")
                mask = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"cannot read mask {path}: corrupt or not an image ({e})") from e
        return self._remap_mask(mask, path)

    def _remap_mask(self, mask: np.ndarray, path: Path) -> np.ndarray:
        bad = np.unique(mask[(mask > self.num_classes) & (mask != IGNORE_INDEX)])
        if bad.size:
            raise ValueError(f"mask {path} holds class ids {bad.tolist()[:10]} outside 0..{self.num_classes} "
                             f"and {IGNORE_INDEX}")
        return mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        img_path, mask_path = self.image_paths[index], self.mask_paths[index]
        image = self._load_image(img_path)
        mask = self._load_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {img_path} is "
                             f"{image.shape[1]}x{image.shape[0]} (width x height)")
        present = np.bincount(mask.ravel(), minlength=256)[1 : self.num_classes + 1] > 0
        if not present.any() and mask_path not in self._warned:  # a weak label of nothing: say so, once
            self._warned.add(mask_path)
            log.warning("mask %s holds no class (only background or %d): image %s gets no labels", mask_path,
                        IGNORE_INDEX, img_path)
        item = {
            "image": torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0),
            "labels": torch.from_numpy(present.astype(np.float32)),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "meta": {"id": self.ids[index], "image_path": str(img_path), "mask_path": str(mask_path)},
        }
        return self.transform(item) if self.transform is not None else item


class VOCSegmentation(SegmentationFolder):
    """PASCAL VOC 2012: 21 classes (background + the 20 in ``class_names``; ``num_classes`` = 20).

    Args:
        root: the ``VOC2012`` folder (holding JPEGImages, SegmentationClass, ImageSets, ...).
        split: a file name in ``ImageSets/Segmentation`` without ``.txt``: "train", "val", "trainval", or
            "train_aug" (10,582 ids; put the list there yourself).
        masks: "auto" reads ``SegmentationClass`` and falls back to ``SegmentationClassAug`` per image (so
            seeds are scored on the official masks where they exist); "aug" prefers
            ``SegmentationClassAug``; "class" uses ``SegmentationClass`` only.
    """

    class_names = VOC_CLASSES

    def __init__(self, root: str | Path, split: str = "train", *, masks: str = "auto",
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        order = {"auto": ("SegmentationClass", "SegmentationClassAug"),
                 "aug": ("SegmentationClassAug", "SegmentationClass"), "class": ("SegmentationClass",)}
        if masks not in order:
            raise ValueError(f"masks must be one of {sorted(order)}, got {masks!r}")
        self.mask_dirs = order[masks]
        super().__init__(root, split, transform=transform)


class COCOSegmentation(SegmentationFolder):
    """MS-COCO 2014 with masks pre-rendered to PNG in the VOC layout: 81 classes (background + 80).

    Args:
        root: folder with ``JPEGImages`` (or symlinks to train2014/val2014 images), ``SegmentationClass``
            and ``ImageSets/Segmentation/{train,val}.txt``.
        split: a split file name, e.g. "train" or "val".
        mask_ids: "contiguous" if the PNGs hold 1..80 (what ``coco_masks`` renders), "coco" if they hold
            COCO's gapped category ids 1..90, which are remapped to 1..80 on load.

    COCO 2014 contains some grayscale JPEGs; they are converted to RGB (``allow_grayscale``).
    """

    class_names = COCO_CLASSES
    allow_grayscale = True

    def __init__(self, root: str | Path, split: str = "train", *, mask_ids: str = "contiguous",
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        if mask_ids not in ("contiguous", "coco"):
            raise ValueError(f"mask_ids must be 'contiguous' or 'coco', got {mask_ids!r}")
        self.mask_ids = mask_ids
        lut = np.full(256, 254, np.uint8)  # 254 marks an id that is not a COCO category
        lut[0], lut[IGNORE_INDEX] = 0, IGNORE_INDEX
        lut[list(COCO_CATEGORY_IDS)] = np.arange(1, 81, dtype=np.uint8)
        self._lut = lut
        super().__init__(root, split, transform=transform)

    def _remap_mask(self, mask: np.ndarray, path: Path) -> np.ndarray:
        if self.mask_ids == "coco":
            bad = np.unique(mask[self._lut[mask] == 254])
            if bad.size:
                raise ValueError(f"mask {path} holds ids {bad.tolist()[:10]} that are not COCO category ids")
            mask = self._lut[mask]
        return super()._remap_mask(mask, path)
