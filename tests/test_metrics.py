import math

import numpy as np
import pytest
import torch

from conta_kit.metrics import (
    BoundaryFScore,
    ConfusionMatrix,
    ContextLeakage,
    average_precision,
    multilabel_map,
    ood_false_positive_rate,
)


def test_confusion_golden_values():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # mat[t, p]: t0 -> (0,1); t1 -> (1,1,0); t2 -> (2,0); the 255 pixel is skipped
    assert cm.mat.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 1]]
    r = cm.compute()
    # IoU: c0 = 1/(2+3-1), c1 = 2/(3+3-2), c2 = 1/(2+1-1)
    assert r["iou"] == pytest.approx([1 / 4, 2 / 4, 1 / 2])
    assert r["miou"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert r["precision"] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert r["recall"] == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    assert r["pixel_acc"] == pytest.approx(4 / 7)
    assert r["num_pixels"] == 7


def test_absent_classes_are_nan_and_left_out_of_the_mean():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]))
    r = cm.compute()
    assert r["iou"][:2] == [1.0, 1.0] and math.isnan(r["iou"][2]) and math.isnan(r["iou"][3])
    assert r["miou"] == 1.0
    cm.update(torch.tensor([3]), torch.tensor([0]))  # class 3 predicted, never present: IoU 0, counts
    assert cm.compute()["iou"][3] == 0.0


def test_ignore_only_and_reset():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([1, 0]), torch.tensor([255, 255]))
    r = cm.compute()
    assert r["num_pixels"] == 0 and math.isnan(r["miou"]) and math.isnan(r["pixel_acc"])
    cm.update(torch.tensor([1]), torch.tensor([1]))
    cm.reset()
    assert int(cm.mat.sum()) == 0


def _reference_miou(preds, targets, n, ignore=255):
    """Independent per-pixel loop in numpy."""
    inter, union = np.zeros(n), np.zeros(n)
    for p, t in zip(preds, targets):
        for pv, tv in zip(p.ravel(), t.ravel()):
            if tv == ignore:
                continue
            if pv == tv:
                inter[pv] += 1
                union[pv] += 1
            else:
                union[pv] += 1
                union[tv] += 1
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return iou


def test_confusion_agrees_with_independent_computation():
    rng = np.random.default_rng(1)
    n = 5
    preds = [rng.integers(0, n, size=(2, 9, 7)) for _ in range(3)]
    targets = [np.where(rng.random((2, 9, 7)) < 0.1, 255, rng.integers(0, n - 1, size=(2, 9, 7))) for _ in range(3)]
    cm = ConfusionMatrix(n)
    for p, t in zip(preds, targets):
        cm.update(torch.from_numpy(p), torch.from_numpy(t))
    ref = _reference_miou(preds, targets, n)
    np.testing.assert_allclose(cm.compute()["iou"], ref, rtol=1e-12)
    assert cm.compute()["miou"] == pytest.approx(np.nanmean(ref))
    one = ConfusionMatrix(n)  # batched in one call == accumulated
    one.update(torch.from_numpy(np.concatenate(preds)), torch.from_numpy(np.concatenate(targets)))
    assert torch.equal(one.mat, cm.mat)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_confusion_on_gpu_equals_cpu():
    p, t = torch.randint(0, 4, (2, 16, 16)), torch.randint(0, 4, (2, 16, 16))
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(p, t)
    b.update(p.cuda(), t.cuda())
    assert torch.equal(a.mat, b.mat)


def test_confusion_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="pred holds values outside 0..2"):
        cm.update(torch.tensor([255]), torch.tensor([0]))
    with pytest.raises(ValueError, match="target holds values outside"):
        cm.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(3), torch.zeros(3, dtype=torch.long))


def _square(h, w, y0, x0, s, v=1):
    m = torch.zeros(h, w, dtype=torch.long)
    m[y0 : y0 + s, x0 : x0 + s] = v
    return m


def test_boundary_f_golden():
    gt = _square(20, 20, 5, 5, 8)  # boundary: 8*4 - 4 = 28 pixels
    bf = BoundaryFScore(2, tolerance=0)
    bf.update(gt, gt)
    assert bf.compute()["bf"] == 1.0
    shifted = _square(20, 20, 5, 6, 8)
    bf0 = BoundaryFScore(2, tolerance=0)
    bf0.update(shifted, gt)
    # pred ring: rows 5, 12 (x 6..13) and columns 6, 13 (y 6..11); gt ring: rows 5, 12 (x 5..12) and
    # columns 5, 12. Shared at tolerance 0: rows 5 and 12 for x in 6..12 = 14 of 28, both ways by symmetry
    r = bf0.compute()
    assert r["precision"][1] == pytest.approx(14 / 28) and r["recall"][1] == pytest.approx(14 / 28)
    assert r["bf"] == pytest.approx(0.5)
    bf1 = BoundaryFScore(2, tolerance=1)
    bf1.update(shifted, gt)
    assert bf1.compute()["bf"] == 1.0


def test_boundary_f_missing_class_and_ignore():
    gt = _square(12, 12, 2, 2, 5)
    bf = BoundaryFScore(3, tolerance=1)
    bf.update(torch.zeros(12, 12, dtype=torch.long), gt)  # class 1 missed entirely
    r = bf.compute()
    assert r["bf_per_class"][1] == 0.0 and math.isnan(r["bf_per_class"][2]) and math.isnan(r["bf_per_class"][0])
    ign = BoundaryFScore(2, tolerance=0)
    target = torch.full((12, 12), 255)
    target[2:7, 2:7] = 1
    pred = _square(12, 12, 2, 2, 5)
    pred[9:11, 9:11] = 1  # a spurious blob inside the ignore region is not counted
    ign.update(pred, target)
    assert ign.compute()["bf"] == 1.0


def test_boundary_f_image_border_is_not_a_boundary():
    full = torch.ones(6, 6, dtype=torch.long)
    bf = BoundaryFScore(2)
    bf.update(full, full)
    assert math.isnan(bf.compute()["bf"])  # no boundary anywhere


def test_context_leakage_golden():
    # one class (k=0) paired with context 0; an image with the class and a 4x4 image
    ctx = torch.full((1, 4, 4), -1)
    ctx[0, :, :2] = 0  # left half is the paired context
    cams = torch.zeros(1, 1, 4, 4)
    cams[0, 0, :, 2:] = 2.0  # object on the right, CAM max 2
    cams[0, 0, 0, 0] = 1.0  # one leaking pixel at half strength
    labels = torch.ones(1, 1)
    leak = ContextLeakage([0])
    leak.update_cams(cams, labels, ctx)
    # normalised mass: 8 * 1.0 (object) + 0.5 (context) -> 0.5 / 8.5
    assert leak.compute()["cam_leakage"] == pytest.approx(0.5 / 8.5)
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, :2, :2] = 1  # labels 4 of the 8 context pixels as class 1 (index 0)
    leak.update_masks(pred, labels, ctx)
    assert leak.compute()["mask_leakage"] == pytest.approx(4 / 8)
    # an image without the class does not count, nor does one where the context is not visible
    leak.update_cams(cams, torch.zeros(1, 1), ctx)
    leak.update_masks(pred, torch.ones(1, 1), torch.full((1, 4, 4), -1))
    r = leak.compute()
    assert r["cam_leakage"] == pytest.approx(0.5 / 8.5) and r["mask_leakage"] == pytest.approx(0.5)


def test_context_leakage_bad_shapes():
    leak = ContextLeakage([0, 1])
    with pytest.raises(ValueError, match=r"labels must be \(B, 2\)"):
        leak.update_cams(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="cams must be"):
        leak.update_cams(torch.zeros(2, 4, 4), torch.zeros(1, 2), torch.zeros(1, 4, 4, dtype=torch.long))


def _brute_ap(s, t):
    """AP as the mean over positives of precision at that positive's score threshold (ties included)."""
    pos = np.flatnonzero(t)
    return np.mean([((s >= s[i]) & (t == 1)).sum() / (s >= s[i]).sum() for i in pos])


def test_average_precision_golden_and_random():
    s = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    t = torch.tensor([[1], [0], [1], [0]])
    assert average_precision(s, t)[0] == pytest.approx((1.0 + 2 / 3) / 2)
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((60, 4)), 1)  # coarse values force ties
    targets = (rng.random((60, 4)) < 0.3).astype(int)
    targets[:, 3] = 0
    ap = average_precision(torch.from_numpy(scores), torch.from_numpy(targets))
    for c in range(3):
        assert ap[c] == pytest.approx(_brute_ap(scores[:, c], targets[:, c]))
    assert math.isnan(ap[3])
    assert multilabel_map(torch.from_numpy(scores), torch.from_numpy(targets))["map"] == pytest.approx(
        float(np.mean(ap[:3].numpy())))


def test_ood_false_positive_rate():
    probs = torch.tensor([[0.1, 0.2], [0.6, 0.1], [0.5, 0.5], [0.9, 0.99]])
    assert ood_false_positive_rate(probs) == 0.5
    assert ood_false_positive_rate(probs, threshold=0.95) == 0.25
    with pytest.raises(ValueError, match="probabilities"):
        ood_false_positive_rate(probs * 3)
