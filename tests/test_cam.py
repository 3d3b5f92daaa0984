import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from conta_kit.cam import cams_to_shards, compute_cams, grad_cam, load_cams, normalize_cams
from conta_kit.cam.analytic import present_classes
from conta_kit.models import build_classifier, eval_mode, fold_batchnorm
from conta_kit.models.inference import normalized_inputs


class Identity(nn.Module):
    """features(x) = x: the CAM of class k is ReLU(sum_d w_kd x_d)."""

    def __init__(self, c=2):
        super().__init__()
        self.head = nn.Conv2d(3, c, 1, bias=False)

    def features(self, x, x_m=None, m_term=True):  # the kit's classifier signature; x_m unused
        return x


def test_golden_values_from_hand_set_head():
    m = Identity(2)
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.weight[0] = 1.0  # class 0: channel sum
        m.head.weight[1, 0] = -1.0  # class 1: -channel 0 (ReLU -> 0 where channel 0 > 0)
    x = torch.rand(2, 3, 6, 5)
    cams = compute_cams(m, x, torch.ones(2, 2), scales=(1.0,), flip=False)
    s = x.sum(1)
    torch.testing.assert_close(cams[:, 0], s / (s.amax(dim=(1, 2), keepdim=True) + 1e-5))
    assert float(cams[:, 1].abs().max()) == 0.0


def test_contract_shapes_range_absent_classes():
    m = build_classifier("tiny", 4)
    x = torch.rand(3, 3, 40, 36)
    labels = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 1]]).float()
    cams, strided = compute_cams(m, x, labels, return_strided=True)
    assert cams.shape == (3, 4, 40, 36) and strided.shape == (3, 4, 10, 9)
    assert float(cams.min()) >= 0 and float(cams.max()) <= 1
    assert float(cams[0, 1:3].abs().max()) == 0 and float(strided[1, 0].abs().max()) == 0


def test_batched_equals_per_sample_and_flip_consistency():
    m = build_classifier("tiny", 3)
    x, labels = torch.rand(3, 3, 32, 32), torch.ones(3, 3)
    batched = compute_cams(m, x, labels)
    single = torch.cat([compute_cams(m, x[i : i + 1], labels[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compute_cams(m, x.flip(-1), labels), batched.flip(-1), rtol=1e-4, atol=1e-5)


def test_grad_cam_equals_analytic_cam_for_gap_linear_head():
    m = build_classifier("tiny", 3)
    m.eval()
    with torch.no_grad():
        m.head.weight *= 1e4  # an untrained head gives CAM maxima near IRNet's 1e-5 epsilon; lift them clear
    x = torch.rand(2, 3, 32, 32)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    analytic = compute_cams(m, x, labels, scales=(1.0,), flip=False)
    gc = grad_cam(m, x, labels)
    torch.testing.assert_close(gc, analytic, rtol=1e-4, atol=1e-4)


class Boom(Exception):
    pass


def test_hooks_released_and_mode_restored_on_error():
    m = build_classifier("tiny", 2)
    m.train()
    layer = m.backbone.layer3

    def explode(module, inputs, output):
        raise Boom

    handle = m.backbone.layer2.register_forward_hook(explode)
    with pytest.raises(Boom):
        grad_cam(m, torch.rand(1, 3, 32, 32), torch.ones(1, 2), layer=layer)
    handle.remove()
    assert m.training
    assert not layer._forward_hooks and not layer._forward_pre_hooks and not layer._backward_hooks
    with pytest.raises(Boom), eval_mode(m):
        assert not m.training
        raise Boom
    assert m.training


def test_bad_input():
    m = build_classifier("tiny", 3)
    with pytest.raises(ValueError, match=r"labels must be \(B, C\) with B = 2"):
        compute_cams(m, torch.rand(2, 3, 16, 16), torch.ones(3, 3))
    with pytest.raises(ValueError, match="labels have 4 classes but the model's head has 3"):
        compute_cams(m, torch.rand(2, 3, 16, 16), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        compute_cams(m, torch.rand(3, 16, 16), torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"cams must be \(B, C, H, W\)"):
        normalize_cams(torch.rand(3, 16, 16))


def _load_reference():
    """The benchmark's literal IRNet-protocol baseline (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cam_reference.py"
    spec = importlib.util.spec_from_file_location("cam_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_cams


def _calibrated(backbone="tiny", c=3):
    """A classifier whose batch-norm statistics are not the identity (a few train-mode passes)."""
    m = build_classifier(backbone, c)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m.features(torch.rand(4, 3, 32, 32))
    return m.eval()


def test_reference_protocol_agrees_with_compute_cams():
    reference_cams = _load_reference()
    m = _calibrated()
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    variants = (((32, 48), True, (m, {}), (fold_batchnorm(m), {"channels_last": True, "max_pixels": 2000})),
                ((40, 36), False, (m, {})))  # off multiples of 16 IRNet's high_res crop differs from a resize
    for size, full, *runs in variants:
        x = torch.rand(2, 3, *size)
        ref = [reference_cams(m, x[i], labels[i]) for i in range(2)]
        for model, kw in runs:
            high, low = compute_cams(model, x, labels, return_strided=True, **kw)
            torch.testing.assert_close(low, torch.stack([r[1] for r in ref]), rtol=0, atol=1e-4)
            if full:
                torch.testing.assert_close(high, torch.stack([r[0] for r in ref]), rtol=0, atol=1e-4)
        assert float(torch.stack([r[1] for r in ref]).amax()) > 0.99  # maps normalised, not all zero
    with pytest.raises(ValueError, match=r"image must be \(3, H, W\)"):
        reference_cams(m, x, labels[0])


def test_channels_last_pixel_budget_and_amp_options():
    m = _calibrated()
    x, labels = torch.rand(3, 3, 32, 32), torch.ones(3, 3)
    base, base_low = compute_cams(m, x, labels, return_strided=True)
    for kw in ({"channels_last": True}, {"max_pixels": 1}, {"max_pixels": 3 * 32 * 32}):
        high, low = compute_cams(m, x, labels, return_strided=True, **kw)
        torch.testing.assert_close(high, base, rtol=0, atol=1e-5)
        torch.testing.assert_close(low, base_low, rtol=0, atol=1e-5)
    for amp in ("auto", "fp16"):  # auto is fp32 on a CPU without bf16 units (forced in conftest), fp16 CUDA only
        assert torch.equal(compute_cams(m, x, labels, amp=amp), base)
    with pytest.raises(ValueError, match="amp must be one of"):
        compute_cams(m, x, labels, amp="int8")
    with pytest.raises(ValueError, match="max_pixels must be None or an int >= 1, got 0"):
        compute_cams(m, x, labels, max_pixels=0)


def test_cam_pyramid_normalises_each_batch_once_and_restores_the_classifier():
    m = _calibrated()
    x, labels = torch.rand(2, 3, 32, 32), torch.ones(2, 3)
    with torch.no_grad():
        plain = m.features(x)
        with normalized_inputs(m, x) as normalized:
            assert m.takes_normalized
            torch.testing.assert_close(m.features(normalized), plain, rtol=0, atol=1e-5)
            with normalized_inputs(m, x) as inner:  # already open: nothing to do twice
                assert inner is None
        assert not m.takes_normalized and torch.equal(m.features(x), plain)
        with pytest.raises(RuntimeError, match="boom"), normalized_inputs(m, x):
            raise RuntimeError("boom")
        assert not m.takes_normalized  # restored on error
        with normalized_inputs(nn.ModuleList([m, _calibrated()]), x) as normalized:  # two classifiers: left alone
            assert normalized is None and not m.takes_normalized
        with normalized_inputs(Identity(3), x) as normalized:
            assert normalized is None
        with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"), normalized_inputs(m, x[:, :2]):
            pass
        assert not m.takes_normalized  # a bad batch is refused before the flag is set
    seen = []  # what the first stage receives: normalised views in the forward pass's precision
    hook = m.backbone.stem.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    try:
        base = compute_cams(m, x, labels, scales=(1.0, 0.5))
        assert set(seen) == {torch.float32}
        seen.clear()
        low = compute_cams(m, x, labels, scales=(1.0, 0.5), amp="bf16")
        assert set(seen) == {torch.bfloat16} and float((low - base).abs().max()) < 0.1
    finally:
        hook.remove()
    assert not m.takes_normalized


def test_only_the_images_classes_are_resized_and_each_lands_in_its_place():
    order, valid = present_classes(torch.tensor([[0.0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]))
    assert order.tolist() == [[1, 3], [0, 1], [0, 1]] and valid.tolist() == [[True, True], [True, False],
                                                                              [False, False]]
    assert present_classes(torch.zeros(2, 3))[0].shape == (2, 1)  # no class anywhere: one padding row
    m = _calibrated(c=4)
    x = torch.rand(3, 3, 32, 32)
    labels = torch.tensor([[0.0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    every, every_low = compute_cams(m, x, torch.ones(3, 4), return_strided=True)
    cams, low = compute_cams(m, x, labels, return_strided=True)
    mask = (labels > 0)[:, :, None, None]
    torch.testing.assert_close(cams, every * mask, rtol=0, atol=1e-6)  # the same maps, absent classes zero
    torch.testing.assert_close(low, every_low * mask, rtol=0, atol=1e-6)
    assert float(cams[0, 1].amax()) > 0.99 and float(cams[2].abs().sum()) == 0.0


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
def test_fold_batchnorm_keeps_outputs_and_leaves_the_model(backbone):
    m = _calibrated(backbone)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    folded = fold_batchnorm(m)
    assert m.training and any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in folded.modules())
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), eval_mode(m):
        ref = m.features(x)
        torch.testing.assert_close(folded.features(x), ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


class Items(Dataset):
    """Seeded images and labels; counts item reads; raises at ``fail_at``."""

    def __init__(self, n=7, c=3, fail_at=None):
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(n, 3, 32, 32, generator=g)
        self.y = (torch.rand(n, c, generator=g) > 0.5).float()
        self.y[:, 0] = 1.0
        self.fail_at, self.reads = fail_at, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError("stopped")
        self.reads.append(i)
        return {"image": self.x[i], "labels": self.y[i]}


def _expected(m, ds, batch_size, shard_size, **kw):
    out = []
    for s in range(0, len(ds), shard_size):
        for i in range(s, min(s + shard_size, len(ds)), batch_size):
            rows = slice(i, min(i + batch_size, s + shard_size, len(ds)))
            out.append(compute_cams(m, ds.x[rows], ds.y[rows], return_strided=True, **kw))
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def test_cam_shards_reassemble_to_compute_cams(tmp_path):
    m, ds = _calibrated(), Items()
    exact = {"dtype": "float32", "fold_bn": False, "channels_last": False, "amp": "off"}
    high, low = _expected(m, ds, 3, 4)
    for resolution, ref in (("strided", low), ("full", high)):
        index = cams_to_shards(m, ds, tmp_path / resolution, batch_size=3, shard_size=4, resolution=resolution,
                               progress=False, **exact)
        assert index["complete"] and index["shards"] == ["shard_00000.pt", "shard_00001.pt"]
        got = list(load_cams(tmp_path / resolution))
        assert [i for i, _ in got] == list(range(7))
        assert torch.equal(torch.stack([c for _, c in got]), ref)  # same batches, fp32: bit for bit
    index = cams_to_shards(m, ds, tmp_path / "fast", batch_size=3, shard_size=4, progress=False)  # fp16, folded
    assert index["dtype"] == "float16" and index["precision"] == "fp32"  # no autocast on a CPU
    shard = torch.load(tmp_path / "fast" / "shard_00001.pt", weights_only=True)
    assert shard["indices"].tolist() == [4, 5, 6] and shard["cams"][0].dtype == torch.float16
    assert [k.tolist() for k in shard["keys"]] == [torch.nonzero(ds.y[i]).flatten().tolist() for i in (4, 5, 6)]
    got = torch.stack([c for _, c in load_cams(tmp_path / "fast")])
    torch.testing.assert_close(got, low, rtol=0, atol=1e-3)


def test_cam_shards_resume_after_a_stop(tmp_path):
    m = _calibrated()
    with pytest.raises(RuntimeError, match="stopped"):
        cams_to_shards(m, Items(fail_at=5), tmp_path, batch_size=2, shard_size=4, progress=False)
    first = tmp_path / "shard_00000.pt"
    assert first.is_file() and not (tmp_path / "shard_00001.pt").exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="not complete"):
        list(load_cams(tmp_path))
    stamp = first.stat().st_mtime_ns
    ds = Items()
    cams_to_shards(m, ds, tmp_path, batch_size=2, shard_size=4, progress=False)
    assert sorted(ds.reads) == [4, 5, 6] and first.stat().st_mtime_ns == stamp  # shard 0 was not redone
    assert len(list(load_cams(tmp_path))) == 7
    ds = Items()
    cams_to_shards(m, ds, tmp_path, batch_size=2, shard_size=4, progress=False)
    assert ds.reads == []  # finished: nothing to do


def test_cam_shards_refuse_foreign_folders_other_settings_and_bad_args(tmp_path):
    m, ds = _calibrated(), Items()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty and holds no CAM shard index"):
        cams_to_shards(m, ds, tmp_path / "notes", progress=False)
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["a.txt"]
    cams_to_shards(m, ds, tmp_path / "cams", shard_size=4, progress=False)
    with pytest.raises(ValueError, match=r"written with scales=\[1.0, 0.5, 1.5, 2.0\], not \[1.0\]"):
        cams_to_shards(m, ds, tmp_path / "cams", shard_size=4, scales=(1.0,), progress=False)
    with pytest.raises(ValueError, match="written with model_sha256="):
        cams_to_shards(_calibrated(c=3).train(), ds, tmp_path / "cams", shard_size=4, progress=False)
    for kw, msg in (({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
                    ({"shard_size": 2.5}, "shard_size must be an int >= 1, got 2.5"),
                    ({"resolution": "half"}, "resolution must be one of"),
                    ({"dtype": "int8"}, "dtype must be one of"),
                    ({"scales": (1.0, -0.5)}, "scales must be positive"),
                    ({"amp": "yes"}, "amp must be one of")):
        with pytest.raises(ValueError, match=msg):
            cams_to_shards(m, ds, tmp_path / "bad", progress=False, **kw)
    with pytest.raises(ValueError, match=r"dataset items must be dicts with 'image' and 'labels', got .*'image'"):
        cams_to_shards(m, [{"image": torch.rand(3, 32, 32)}], tmp_path / "unlabelled", progress=False)
    with pytest.raises(ValueError, match="dataset is empty"):
        cams_to_shards(m, Items(0), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(FileNotFoundError, match="no index.json"):
        list(load_cams(tmp_path / "notes"))


def test_cpu_bf16_is_asked_for_by_name_and_stays_close():
    torch.manual_seed(0)
    model = build_classifier("tiny", 3).eval()
    x, lab = torch.rand(2, 3, 32, 32), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    ref = compute_cams(model, x, lab, scales=(1.0, 0.5))
    assert torch.equal(compute_cams(model, x, lab, scales=(1.0, 0.5), amp="auto"), ref)  # auto: fp32 without bf16 units
    low = compute_cams(model, x, lab, scales=(1.0, 0.5), amp="bf16")
    assert not torch.equal(low, ref)  # it did run in bf16
    assert float((low - ref).abs().max()) < 0.1 and low.dtype == torch.float32


def test_resolution_ceiling_is_exact_at_full_resolution_and_coarser_on_a_coarse_grid():
    from conta_kit.cam.diagnostics import ceiling_cams
    from conta_kit.cam.pseudo import cams_to_labels

    mask = torch.zeros(1, 16, 16, dtype=torch.long)
    mask[0, 3:9, 5:12] = 2
    mask[0, 0, :] = 255
    labels = torch.tensor([[0.0, 1.0]])
    full = ceiling_cams(mask, labels, (16, 16))
    assert full[0, 0].abs().max() == 0  # absent class: zero map
    pred = cams_to_labels(full, labels, 0.5)[0]
    valid = mask[0] != 255
    assert torch.equal(pred[valid], mask[0][valid])  # the grid holds the ground truth exactly
    coarse = cams_to_labels(ceiling_cams(mask, labels, (2, 2)), labels, 0.5)[0]
    assert (coarse != mask[0])[valid].any()  # a 2x2 grid cannot


def test_cam_localisation_and_surround_leakage_by_hand():
    from conta_kit.cam.diagnostics import CamLocalisation, SurroundLeakage

    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[:, 2:4, 2:4] = 1  # class 0: 4 pixels of 64
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    cams = torch.zeros(2, 2, 8, 8)
    cams[0, 0, 2:4, 2:4] = 1.0  # image 0: on the object only
    cams[1, 0] = 1.0  # image 1: everywhere, peak at (0, 0), off the object
    loc = CamLocalisation(2)
    loc.update(cams, labels, mask)
    out = loc.compute()
    assert out["num_pairs"] == 2 and out["cam_mass_in_object"] == pytest.approx((1 + 4 / 64) / 2)
    assert out["object_pixel_share"] == pytest.approx(4 / 64) and out["cam_peak_on_object"] == 0.5
    assert out["cam_peak_on_object_per_class"][0] == 0.5 and math.isnan(out["cam_peak_on_object_per_class"][1])
    assert out["cam_mass_in_object_per_class"][0] == pytest.approx((1 + 4 / 64) / 2)
    # peaks at rows 2 (the first maximum) and 0 against the object's mean row 2.5, in image heights
    assert out["cam_peak_offset_y_per_class"][0] == pytest.approx((-0.5 - 2.5) / 2 / 8)
    assert math.isnan(out["cam_peak_offset_y_per_class"][1])
    assert out["cam_empty_share"] == 0.0
    # a third image whose present class has an empty CAM: left out of the scores, counted as empty
    loc.update(torch.zeros(1, 2, 8, 8), labels[:1], mask[:1])
    again = loc.compute()
    assert again["cam_empty_share"] == pytest.approx(1 / 3) and again["num_pairs"] == 2
    assert again["cam_peak_on_object"] == out["cam_peak_on_object"]
    assert math.isnan(CamLocalisation(2).compute()["cam_empty_share"])
    from conta_kit.pipeline.round import empty_cams_warning

    assert "33 % of the CAMs of present classes on train are empty" in empty_cams_warning(again)
    assert empty_cams_warning(out) is None and empty_cams_warning({}) is None
    assert empty_cams_warning({"cam_empty_share": math.nan}) is None

    surround = torch.zeros(2, 8, 8, dtype=torch.long)
    surround[:, 4:8, :] = 1  # half the image is class 0's surround
    paired = torch.tensor([[1.0, -1.0], [0.0, -1.0]])  # image 0 paired, image 1 unpaired
    cams = torch.zeros(2, 2, 8, 8)
    cams[0, 0, 4:8, :] = 1.0  # paired: all mass on the surround
    cams[1, 0] = 1.0  # unpaired: half of it
    leak = SurroundLeakage(2)
    leak.update(cams, surround, paired)
    res = leak.compute()
    assert res["surround_leakage_paired"] == 1.0 and res["surround_leakage_unpaired"] == 0.5
    assert res["confounding_leakage"] == 0.5 and res["surround_objects"] == [1, 1]


def test_cam_peak_in_box_tells_a_peak_between_parts_from_one_elsewhere():
    from conta_kit.cam.diagnostics import CamLocalisation

    # class 0 is a ring: its box is rows 1-5, cols 1-5, its pixels the border of that box
    mask = torch.zeros(3, 8, 8, dtype=torch.long)
    mask[:, 1:6, 1:6] = 1
    mask[:, 2:5, 2:5] = 0
    labels = torch.tensor([[1.0, 0.0]] * 3)
    cams = torch.zeros(3, 2, 8, 8)
    cams[0, 0, 1, 1] = 1.0  # on the ring
    cams[1, 0, 3, 3] = 1.0  # in the hole: in the box, off the object
    cams[2, 0, 7, 6] = 1.0  # outside the box
    loc = CamLocalisation(2)
    loc.update(cams, labels, mask)
    out = loc.compute()
    assert out["cam_peak_on_object"] == pytest.approx(1 / 3) and out["cam_peak_in_box"] == pytest.approx(2 / 3)
    assert out["cam_peak_in_box_per_class"][0] == pytest.approx(2 / 3)
    assert math.isnan(out["cam_peak_in_box_per_class"][1])
    # the box's last row and column count, the next ones do not
    edge = torch.zeros(2, 2, 8, 8)
    edge[0, 0, 5, 5] = 1.0
    edge[1, 0, 6, 5] = 1.0
    loc = CamLocalisation(2)
    loc.update(edge, labels[:2], mask[:2])
    assert loc.compute()["cam_peak_in_box"] == 0.5


def test_cam_peak_on_says_what_a_missed_peak_lies_on():
    from conta_kit.cam.diagnostics import PEAK_PLACES, CamLocalisation

    # two classes; class 0 pairs with context 0, class 1 with context 1
    mask = torch.zeros(3, 8, 8, dtype=torch.long)
    mask[:, 1, 1], mask[:, 5, 5], mask[:, 7, 7] = 1, 2, 255
    ctx = torch.full((3, 8, 8), -1, dtype=torch.long)
    ctx[:, 3, :4], ctx[:, 6, :4] = 0, 1
    labels = torch.ones(3, 2)
    cams = torch.zeros(3, 2, 8, 8)
    cams[0, 0, 3, 0] = 1.0  # class 0 on its paired context
    cams[0, 1, 1, 1] = 1.0  # class 1 on class 0's object
    cams[1, 0, 1, 1] = 1.0  # on its own object
    cams[1, 1, 0, 7] = 1.0  # on the backdrop
    cams[2, 0, 6, 2] = 1.0  # on another class's context
    cams[2, 1, 7, 7] = 1.0  # on an unlabelled pixel
    loc = CamLocalisation(2)
    loc.update(cams, labels, mask)
    assert "cam_peak_on" not in loc.compute()  # no context map given: nothing to say
    loc = CamLocalisation(2)
    loc.update(cams, labels, mask, ctx, (0, 1))
    out = loc.compute()
    assert set(out["cam_peak_on"]) == set(PEAK_PLACES)
    assert out["cam_peak_on_per_class"]["paired context"] == pytest.approx([1 / 3, 0.0])
    assert out["cam_peak_on_per_class"]["own object"] == pytest.approx([1 / 3, 0.0])
    assert out["cam_peak_on_per_class"]["other context"] == pytest.approx([1 / 3, 0.0])
    assert out["cam_peak_on_per_class"]["other object"] == pytest.approx([0.0, 1 / 3])
    assert out["cam_peak_on_per_class"]["backdrop"] == pytest.approx([0.0, 1 / 3])
    assert out["cam_peak_on_per_class"]["unlabelled"] == pytest.approx([0.0, 1 / 3])
    assert sum(out["cam_peak_on"].values()) == pytest.approx(1.0)
    assert out["cam_peak_on"]["own object"] == pytest.approx(out["cam_peak_on_object"])
    with pytest.raises(ValueError, match="paired \\(1\\) the 2 classes"):
        loc.update(cams, labels, mask, ctx, (0,))


class PooledDot(nn.Module):
    """features(x) = a 9 x 9 box average at stride 8 with padding 4: cell i looks at pixels 8i - 4 .. 8i + 4,
    centred on pixel 8i, as the tiny backbone's stride-2 3 x 3 layers centre theirs."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.ones_(self.head.weight)

    def features(self, x, x_m=None, m_term=True):
        return nn.functional.avg_pool2d(x, 9, stride=8, padding=4, count_include_pad=False)


def test_cell_origin_places_cells_where_they_look_and_irnet_half_a_cell_lower():
    x = torch.zeros(1, 3, 96, 96)
    x[0, :, 40, 40] = 1.0  # a dot on the centre of cell (5, 5)'s receptive field
    labels = torch.ones(1, 1)
    peak = lambda cams: divmod(int(cams[0, 0].argmax()), 96)  # noqa: E731
    for flip in (False, True):
        placed = compute_cams(PooledDot(), x, labels, scales=(1.0,), flip=flip, cell_origin=0.0)
        irnet = compute_cams(PooledDot(), x, labels, scales=(1.0,), flip=flip)
        row, col = peak(placed)
        assert row == 40 and (col == 40 if not flip else col in (39, 40))  # the flip's dot is seen from cell 7
        row, col = peak(irnet)
        assert row in (43, 44)  # 3.5 px lower: the centre of the cell's 8 x 8 block
        top = (irnet[0, 0, row] >= irnet[0, 0, row].max() - 1e-6).nonzero().flatten().float()
        if not flip:
            assert col in (43, 44) and len(top) <= 2
        else:  # the flip averages the horizontal offset away, blurring: a plateau 35.5 .. 43.5 around 39.5
            assert abs(float(top.mean()) - 39.5) <= 0.5 and len(top) >= 7
    # a view at another scale: the dot on pixels 80-81 of a 192-px image is pixel 40 of its 0.5 view, cell 5's
    # centre, which lies at 80.5 of the image
    big = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
    half = compute_cams(PooledDot(), big, labels, scales=(0.5,), flip=False, cell_origin=0.0)
    assert divmod(int(half[0, 0].argmax()), 192) in ((80, 80), (80, 81), (81, 80), (81, 81))
    strided = compute_cams(PooledDot(), x, labels, scales=(1.0,), flip=False, cell_origin=0.0, return_strided=True)[1]
    assert divmod(int(strided[0, 0].argmax()), 24) == (10, 10)  # pixel 40 at stride 4
    with pytest.raises(ValueError, match="cell_origin must be None or a finite number"):
        compute_cams(PooledDot(), x, labels, cell_origin=float("nan"))


@pytest.mark.parametrize("name,stride,size", [("tiny", 8, 96), ("tiny", 4, 96), ("resnet18", 16, 512)])
def test_backbones_centre_cell_i_on_pixel_stride_times_i(name, stride, size):
    """``cell_origin=0`` is right for these backbones: with every kernel uniform and positive (batch norm the
    identity), cell i's receptive field is symmetric about its centre, so the input gradient's centroid is it."""
    from conta_kit.models.backbones import BACKBONES

    net = BACKBONES[name](output_stride=stride).eval()
    for parent in net.modules():  # a max pool's gradient picks one pixel of a tie; an average pool of the same
        for key, m in parent.named_children():  # geometry spreads it evenly
            if isinstance(m, nn.MaxPool2d):
                setattr(parent, key, nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
    x = torch.ones(1, 3, size, size, requires_grad=True)
    f = x
    for stage in net.stages:
        f = getattr(net, stage)(f)
    i = f.shape[-1] // 2
    (g,) = torch.autograd.grad(f[0, :, i, i].sum(), x)
    a = g[0].sum(0)
    at = torch.arange(size, dtype=torch.float64)
    row, col = float((a.sum(1).double() * at).sum() / a.sum()), float((a.sum(0).double() * at).sum() / a.sum())
    assert size // f.shape[-1] == stride
    assert abs(row - stride * i) < 0.05 and abs(col - stride * i) < 0.05, (row, col, stride * i)
