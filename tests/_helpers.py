"""Test helpers shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
