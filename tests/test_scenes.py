import numpy as np
import pytest
import torch

from conta_kit.data import ConfoundedScenes, collate
from conta_kit.data.stats import scene_statistics


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in ("image", "labels", "mask", "context_mask"))


def test_item_contract():
    ds = ConfoundedScenes("train", num_images=20, image_size=64)
    it = ds[3]
    assert it["image"].shape == (3, 64, 64) and it["image"].dtype == torch.float32
    assert 0.0 <= float(it["image"].min()) and float(it["image"].max()) <= 1.0
    assert it["labels"].shape == (ds.num_classes,) and it["labels"].dtype == torch.float32
    assert it["mask"].dtype == torch.int64 and it["context_mask"].dtype == torch.int64
    assert set(it["mask"].unique().tolist()) <= set(range(ds.num_classes + 1)) | {255}
    assert int(it["context_mask"].min()) >= -1 and int(it["context_mask"].max()) < ds.num_contexts
    assert len(ds.paired_context) == ds.num_classes == len(ds.class_names)
    assert [ds.context_names[ds.paired_context[k]] for k in range(2)] == ["sky", "tree"]


def test_sample_depends_only_on_config_seed_and_index():
    a = ConfoundedScenes("train", num_images=50, seed=3)
    b = ConfoundedScenes("train", num_images=10_000, seed=3)
    _ = [a[i] for i in (7, 1, 9)]  # access order must not matter
    assert _same(a[5], b[5])
    assert _same(a[5], a[5])
    assert _same(b[9_999], ConfoundedScenes("train", num_images=10_000, seed=3)[9_999])
    assert not torch.equal(a[5]["image"], a[6]["image"])
    assert not torch.equal(a[5]["image"], ConfoundedScenes("train", num_images=50, seed=4)[5]["image"])
    assert not torch.equal(a[5]["image"], ConfoundedScenes("val", num_images=50, seed=3)[5]["image"])


def test_no_two_images_identical():
    ds = ConfoundedScenes("train", num_images=200, image_size=48)
    flat = torch.stack([ds[i]["image"] for i in range(len(ds))]).flatten(1)
    assert torch.unique(flat, dim=0).shape[0] == len(ds)


def test_labels_equal_classes_in_mask():
    for split in ("train", "val", "shifted"):
        ds = ConfoundedScenes(split, num_images=150, image_size=64, boundary_ignore=1 if split == "val" else 0)
        for i in range(len(ds)):
            it = ds[i]
            ids = set(it["mask"].unique().tolist()) - {0, 255}
            assert set((torch.nonzero(it["labels"]).flatten() + 1).tolist()) == ids
            assert it["labels"].sum() >= 1


def test_cooccurrence_dial_measured_from_context_masks():
    full = scene_statistics(ConfoundedScenes("train", num_images=400, cooccurrence=1.0, rider_rate=0.0),
                            progress=False)
    assert full["paired_rate"] > 0.97
    chance_ds = ConfoundedScenes("train", num_images=400, rider_rate=0.0)
    chance = 1.0 / chance_ds.num_contexts
    at_chance = scene_statistics(ConfoundedScenes("train", num_images=400, cooccurrence=chance, rider_rate=0.0),
                                 progress=False)
    assert abs(at_chance["paired_rate"] - chance) < 0.05
    shifted = ConfoundedScenes("shifted", num_images=400, cooccurrence=0.99, rider_rate=0.0)
    assert shifted.rho == pytest.approx(chance)
    assert abs(scene_statistics(shifted, progress=False)["paired_rate"] - chance) < 0.05


def test_same_layouts_at_every_rho():
    lo = ConfoundedScenes("train", num_images=5, cooccurrence=0.2)
    hi = ConfoundedScenes("train", num_images=5, cooccurrence=0.95)
    for i in range(5):
        assert torch.equal(lo[i]["mask"], hi[i]["mask"])


@pytest.mark.parametrize("kind", ["hard", "random"])
def test_ood_images_hold_no_object(kind):
    ds = ConfoundedScenes("ood", num_images=60, ood_kind=kind)
    paired = set(ds.paired_context)
    for i in range(len(ds)):
        it = ds[i]
        assert int(it["mask"].max()) == 0 and float(it["labels"].sum()) == 0
        ctx = set(it["context_mask"].unique().tolist()) - {-1}
        assert ctx, "an OoD image shows some context"
        assert ctx <= paired if kind == "hard" else not (ctx & paired)


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_rider_rate(rate):
    stats = scene_statistics(ConfoundedScenes("train", num_images=500, rider_rate=rate), progress=False)
    assert abs(stats["rider_rate"] - rate) < 0.08


def test_rider_overlaps_horse():
    ds = ConfoundedScenes("train", num_images=200, rider_rate=1.0)
    horse, person = ds.class_names.index("horse") + 1, ds.class_names.index("person") + 1
    seen = 0
    for i in range(len(ds)):
        it = ds[i]
        riders = [o for o in it["meta"]["objects"] if o["rider"]]
        if riders:
            seen += 1
            _, x0, y1, x1 = riders[0]["bbox"]
            hb = [o for o in it["meta"]["objects"] if o["class"] == horse - 1][0]["bbox"]
            assert y1 > hb[0] and x0 < hb[3] and x1 > hb[1], "rider box overlaps horse box"
            assert (it["mask"] == person).any()
    assert seen > 20


def test_boundary_ignore_band():
    ds = ConfoundedScenes("train", num_images=5, boundary_ignore=2)
    m = ds[0]["mask"]
    assert (m == 255).any()
    # every object pixel that borders background is ignore
    obj = (m > 0) & (m < 255)
    bg = m == 0
    assert not (obj[:, 1:] & bg[:, :-1]).any() and not (obj[1:, :] & bg[:-1, :]).any()


def test_collate_and_dataloader():
    ds = ConfoundedScenes("train", num_images=8, image_size=32)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["labels"].shape == (4, ds.num_classes)
    assert isinstance(batch["meta"], list) and len(batch["meta"]) == 4
    with pytest.raises(ValueError, match="different shapes"):
        collate([ds[0], ConfoundedScenes("train", num_images=2, image_size=48)[0]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="test"), "split"),
    (dict(cooccurrence=1.5), "cooccurrence"),
    (dict(image_size=8), "image_size"),
    (dict(num_images=-1), "num_images"),
    (dict(ood_kind="easy"), "ood_kind"),
    (dict(num_classes=9), "num_classes"),
    (dict(objects_per_image=(0, 2)), "objects_per_image"),
    (dict(rider_rate=2.0), "rider_rate"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConfoundedScenes(**kwargs)


def test_index_out_of_range():
    ds = ConfoundedScenes("val", num_images=3)
    with pytest.raises(IndexError):
        ds[3]
    assert torch.equal(ds[-1]["image"], ds[2]["image"])


def test_fewer_classes():
    ds = ConfoundedScenes("train", num_images=30, num_classes=3, num_distractors=0, objects_per_image=(1, 2))
    assert ds.num_classes == 3 and ds.num_contexts == 3
    assert max(int(ds[i]["mask"].max()) for i in range(30)) <= 3
    assert np.isnan(scene_statistics(ds, progress=False)["rider_rate"])


def test_speed_script_prints_its_figure_and_writes_it(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scenes.py"
    out = subprocess.run([sys.executable, str(script), "--images", "40", "--repeats", "1", "--size", "48",
                          "--out", str(tmp_path / "scenes.json")], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert json.loads((tmp_path / "scenes.json").read_text()) == result
    assert result["environment"]["threads"] >= 1
    assert result["image_size"] == 48 and result["threads"] == 1
    assert result["default"]["items_per_s"] > 0 and result["earlier"]["items_per_s"] > 0
    assert result["default"]["options"]["layout"] == "prior_strip" and result["earlier"]["options"]["layout"] == "prior"


def test_shift_augmentation_moves_image_and_maps_together():
    from conta_kit.data import collate
    from conta_kit.data.transforms import joint_augment

    ds = ConfoundedScenes("train", num_images=4, image_size=32)
    batch = collate([ds[i] for i in range(4)])
    torch.manual_seed(0)
    out = joint_augment(batch, flip=False, shift=6)
    assert out["image"].shape == batch["image"].shape and torch.equal(out["labels"], batch["labels"])
    for i in range(4):
        found = False
        for dy in range(-6, 7):
            for dx in range(-6, 7):
                src = batch["mask"][i, max(0, -dy):32 - max(0, dy), max(0, -dx):32 - max(0, dx)]
                dst = out["mask"][i, max(0, dy):32 - max(0, -dy), max(0, dx):32 - max(0, -dx)]
                img = torch.equal(batch["image"][i, :, max(0, -dy):32 - max(0, dy), max(0, -dx):32 - max(0, dx)],
                                  out["image"][i, :, max(0, dy):32 - max(0, -dy), max(0, dx):32 - max(0, -dx)])
                if torch.equal(src, dst) and img:
                    uncovered = out["mask"][i] == 255
                    assert (out["image"][i][:, uncovered] == 0.5).all()
                    found = True
        assert found, i
    with pytest.raises(ValueError, match="shift"):
        joint_augment(batch, shift=-1)
