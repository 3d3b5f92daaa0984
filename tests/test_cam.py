import pytest
import torch
import torch.nn as nn

from conta_kit.cam import compute_cams, eval_mode, grad_cam, normalize_cams
from conta_kit.models import build_classifier


class Identity(nn.Module):
    """features(x) = x: the CAM of class k is ReLU(sum_d w_kd x_d)."""

    def __init__(self, c=2):
        super().__init__()
        self.head = nn.Conv2d(3, c, 1, bias=False)

    def features(self, x):
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
