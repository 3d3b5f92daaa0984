"""CONTA's pieces: confounder set, backdoor adjustment, the adjusted classifier and its CAMs."""

import copy
import math

import pytest
import torch

from conta_kit.cam import compute_cams
from conta_kit.data.transforms import random_flip
from conta_kit.methods.conta import (
    BackdoorAdjustment,
    ConfounderSet,
    ContaClassifier,
    RawMaskFusion,
    attention_statistics,
    build_confounder_set,
    to_grid,
)
from conta_kit.models import build_classifier


def _orthogonal_set(k=3, h=2, w=2, prior=None):
    """Prototype i = the one-hot map of cell i (orthogonal), so attention can be made one-hot."""
    protos = torch.zeros(k, h, w)
    for i in range(k):
        protos[i].view(-1)[i] = 1.0
    p = torch.full((k,), 1.0 / k) if prior is None else prior
    return ConfounderSet(protos, p, torch.ones(k, dtype=torch.long), torch.arange(1, k + 1))


def _one_hot_adjustment(cs, **kw):
    hw = cs.prototypes[0].numel()
    adj = BackdoorAdjustment(cs, embed_dim=hw, **kw)
    with torch.no_grad():
        adj.w1.weight.copy_(torch.eye(hw) * 200.0)  # q = 200 x_m
        adj.w2.weight.copy_(torch.eye(hw))  # key_i = c_i
    return adj


def test_one_hot_attention_gives_prior_times_prototype():
    prior = torch.tensor([0.5, 0.3, 0.2])
    cs = _orthogonal_set(prior=prior)
    adj = _one_hot_adjustment(cs)
    x_m = cs.prototypes[1:2]  # (1, 2, 2): equals prototype 1
    m, alpha = adj(x_m)
    assert m.shape == (1, 1, 2, 2) and alpha.shape == (1, 3)
    torch.testing.assert_close(alpha, torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(m[0, 0], prior[1] * cs.prototypes[1], atol=1e-6, rtol=0)
    convex = _one_hot_adjustment(cs, m_scale="convex")
    torch.testing.assert_close(convex(x_m)[0][0, 0], cs.prototypes[1], atol=1e-5, rtol=0)
    with torch.no_grad():
        assert float(_one_hot_adjustment(cs, m_scale="max")(x_m)[0].max()) == pytest.approx(1.0)


def test_attention_rows_sum_to_one_and_temperature_flattens_it():
    cs = _orthogonal_set(k=4, h=3, w=3)
    x_m = torch.rand(5, 3, 3)
    sharp = _one_hot_adjustment(cs, temperature=1.0).attention(x_m)
    flat = _one_hot_adjustment(cs, temperature=1000.0).attention(x_m)
    torch.testing.assert_close(sharp.sum(1), torch.ones(5))
    labels = torch.ones(5, 4)
    assert attention_statistics(flat, labels, cs.class_ids)["entropy"] > \
        attention_statistics(sharp, labels, cs.class_ids)["entropy"]
    assert BackdoorAdjustment(cs).temperature == pytest.approx(math.sqrt(4))  # the paper's sqrt(n)


def test_gradient_reaches_w1_and_w2():
    cs = _orthogonal_set(k=3, h=2, w=2)
    adj = BackdoorAdjustment(cs)
    m, _ = adj(torch.rand(4, 2, 2))
    (m * torch.rand_like(m)).sum().backward()
    assert float(adj.w1.weight.grad.abs().sum()) > 0 and float(adj.w2.weight.grad.abs().sum()) > 0
    assert adj.prototypes.grad is None and "prototypes" in dict(adj.named_buffers())


def test_confounder_set_equals_hand_average():
    # two 4x4 images; class 1 in both, class 2 only in the second; class 3 in none
    a = torch.zeros(4, 4, dtype=torch.long)
    a[:2, :2] = 1
    b = torch.zeros(4, 4, dtype=torch.long)
    b[:2, :] = 1
    b[3, 3] = 2
    b[0, 0] = 255  # ignored pixel: counts for no class
    cs = build_confounder_set([torch.stack([a, b])], num_classes=3, grid=(4, 4))
    c1 = ((a == 1).float() + (b == 1).float()) / 2
    torch.testing.assert_close(cs.prototypes[0], c1)
    torch.testing.assert_close(cs.prototypes[1], (b == 2).float())
    assert float(cs.prototypes[2].abs().sum()) == 0 and cs.counts.tolist() == [2, 1, 0]
    torch.testing.assert_close(cs.prior, torch.full((3,), 1 / 3))
    assert cs.class_ids.tolist() == [1, 2, 3]
    freq = build_confounder_set([torch.stack([a, b])], num_classes=3, grid=(4, 4), prior="freq")
    torch.testing.assert_close(freq.prior, torch.tensor([2 / 3, 1 / 3, 0.0]))
    bg = build_confounder_set([torch.stack([a, b])], num_classes=3, grid=(4, 4), include_bg=True)
    assert len(bg) == 4 and bg.class_ids.tolist() == [0, 1, 2, 3] and float(bg.prior.sum()) == pytest.approx(1.0)


def test_confounder_set_resizes_streams_and_uses_labels():
    big = torch.zeros(2, 8, 8, dtype=torch.long)
    big[0, :4, :4] = 1  # block (0, 0) of a 2x2 grid
    big[1, :4, :] = 1
    cs = build_confounder_set([big], num_classes=1, grid=(2, 2))
    torch.testing.assert_close(cs.prototypes[0], torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    # streamed one image at a time (a generator, consumed once) = one big batch
    streamed = build_confounder_set((big[i : i + 1] for i in range(2)), num_classes=1, grid=(2, 2))
    torch.testing.assert_close(streamed.prototypes, cs.prototypes)
    # with image labels, an image labelled 1 whose prediction missed it counts as an empty mask
    labels = torch.tensor([[1.0], [1.0], [1.0]])
    with_miss = torch.cat([big, torch.zeros(1, 8, 8, dtype=torch.long)])
    by_label = build_confounder_set([(with_miss, labels)], num_classes=1, grid=(2, 2))
    torch.testing.assert_close(by_label.prototypes[0], cs.prototypes[0] * 2 / 3)
    # soft prototypes from probabilities (B, 1 + C, H, W)
    probs = torch.stack([1.0 - (big == 1).float() * 0.8, (big == 1).float() * 0.8], 1)
    soft = build_confounder_set([probs], num_classes=1, grid=(2, 2))
    torch.testing.assert_close(soft.prototypes[0], cs.prototypes[0] * 0.8)


def test_confounder_set_bad_input_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="mask ids"):
        build_confounder_set([torch.full((1, 4, 4), 7)], num_classes=3, grid=(2, 2))
    with pytest.raises(ValueError, match="labels must be"):
        build_confounder_set([(torch.zeros(2, 4, 4, dtype=torch.long), torch.ones(2, 5))], 3, (2, 2))
    with pytest.raises(ValueError, match="masks must be"):
        build_confounder_set([torch.zeros(2, 2, 4, 4)], num_classes=3, grid=(2, 2))
    with pytest.raises(ValueError, match="prior"):
        build_confounder_set([], num_classes=3, grid=(2, 2), prior="zipf")
    with pytest.raises(ValueError, match="prototypes must be"):
        ConfounderSet(torch.zeros(3, 4), torch.ones(3), torch.ones(3), torch.arange(3))
    cs = _orthogonal_set(k=3, h=2, w=2)
    path = cs.save(tmp_path / "c.pt")
    back = ConfounderSet.load(path, num_prototypes=3, grid=(2, 2))
    for name in ("prototypes", "prior", "counts", "class_ids"):
        assert torch.equal(getattr(back, name), getattr(cs, name))
    with pytest.raises(ValueError, match="holds 3 prototypes, expected 20"):
        ConfounderSet.load(path, num_prototypes=20)
    with pytest.raises(ValueError, match=r"grid \(2, 2\), expected \(12, 12\)"):
        ConfounderSet.load(path, grid=(12, 12))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a confounder set"):
        ConfounderSet.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ConfounderSet.load(tmp_path / "missing.pt")


def _conta(fusion="last", kind="backdoor", backbone="tiny", classes=4, grid=(6, 6)):
    base = build_classifier(backbone, classes, width=8) if backbone == "tiny" else build_classifier(backbone, classes)
    reference = copy.deepcopy(base).eval()
    cs = ConfounderSet(torch.rand(classes, *grid), torch.full((classes,), 1 / classes),
                       torch.ones(classes, dtype=torch.long), torch.arange(1, classes + 1))
    adj = BackdoorAdjustment(cs) if kind == "backdoor" else RawMaskFusion(grid)
    return ContaClassifier(base, adj, fusion=fusion).eval(), reference


@pytest.mark.parametrize("fusion", ["last", "layer2", "input"])
def test_zero_adjustment_fuses_nothing_whatever_the_weights(fusion):
    from conta_kit.config import RunCfg
    from conta_kit.methods.conta import ZeroFusion, build_adjustment

    base = build_classifier("tiny", 4, width=8)
    reference = copy.deepcopy(base).eval()
    cs = ConfounderSet(torch.rand(4, 6, 6), torch.full((4,), 0.25), torch.ones(4, dtype=torch.long),
                       torch.arange(1, 5))
    adj = build_adjustment("zero", cs)
    assert isinstance(adj, ZeroFusion)
    model = ContaClassifier(base, adj, fusion=fusion, fusion_init="normal").eval()  # random weights for M
    x, x_m = torch.rand(3, 3, 48, 40), torch.rand(3, 48, 40)
    m, alpha = model.adjust(x_m)
    assert alpha is None and m.shape == (3, 1, 6, 6) and not m.any()
    with torch.no_grad():
        torch.testing.assert_close(model(x, x_m), reference(x), atol=1e-6, rtol=0)
        assert torch.equal(model(x, x_m), model(x, torch.ones_like(x_m)))  # x_m is never read
    assert RunCfg.from_params("smoke", adjustment="zero").conta.adjustment == "zero"
    with pytest.raises(ValueError, match="'backdoor', 'raw_mask' or 'zero'"):
        build_adjustment("none", cs)


@pytest.mark.parametrize("fusion", ["last", "layer3", "layer1", "stem", "input"])
def test_zero_initialised_m_weight_reproduces_the_baseline_logits(fusion):
    model, reference = _conta(fusion)
    x, x_m = torch.rand(3, 3, 48, 40), torch.rand(3, 48, 40)
    assert torch.equal(model(x, x_m), reference(x))


def test_raw_mask_fusion_and_training_moves_m_then_w1():
    model, reference = _conta("last", kind="raw_mask")
    x, x_m = torch.rand(2, 3, 48, 48), torch.rand(2, 48, 48)
    assert torch.equal(model(x, x_m), reference(x))
    model, _ = _conta("last")
    opt = torch.optim.SGD([p for g in model.param_groups() for p in g["params"]], lr=1.0)
    w1 = model.adjustment.w1.weight.detach().clone()
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    for step in range(2):  # step 1: only the M column gets a gradient (w_M = 0 blocks W1/W2); step 2: W1 too
        model.train()
        loss = torch.nn.functional.multilabel_soft_margin_loss(model(x, x_m), labels)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert float(model.adjustment.w1.weight.grad.abs().sum()) == 0
        opt.step()
    assert float(model.head.m_weight.detach().abs().sum()) > 0
    assert not torch.equal(model.adjustment.w1.weight, w1)


def test_param_groups_cover_every_trainable_parameter_once():
    model, _ = _conta("layer1")
    groups = model.param_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert groups[1]["lr_mult"] == 10.0 and id(model.adjustment.w1.weight) in {id(p) for p in groups[1]["params"]}


def test_bad_fusion_points_and_shapes():
    base = build_classifier("tiny", 4, width=8)
    cs = _orthogonal_set(k=4, h=3, w=3)
    with pytest.raises(ValueError, match="fusion must be"):
        ContaClassifier(base, BackdoorAdjustment(cs), fusion="block9")
    with pytest.raises(ValueError, match="projection shortcut"):  # resnet18's layer1 has no downsample
        ContaClassifier(build_classifier("resnet18", 4), BackdoorAdjustment(cs), fusion="stem")
    model = ContaClassifier(base, BackdoorAdjustment(cs))
    with pytest.raises(ValueError, match="x_m must be"):
        model(torch.rand(2, 3, 32, 32), torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="x_m must be"):
        BackdoorAdjustment(cs)(torch.rand(2, 7))
    with pytest.raises(ValueError, match="m_scale"):
        BackdoorAdjustment(cs, m_scale="huge")


def test_ir_net_detach_moves_when_m_enters_early():
    model, _ = _conta("layer1", backbone="resnet18")
    assert model.base.detach_until is None  # M enters before layer2's detach: the detach is removed
    model, _ = _conta("last", backbone="resnet18")
    assert model.base.detach_until == "layer2"


def test_cams_flip_consistent_with_m_and_the_without_m_diagnostic():
    model, _ = _conta("last")
    with torch.no_grad():
        model.head.m_weight.normal_(std=2.0)
    x, x_m = torch.rand(2, 3, 40, 40), torch.rand(2, 40, 40)
    labels = torch.tensor([[1.0, 0, 1, 1], [0, 1, 1, 0]])
    cams = compute_cams(model, x, labels, scales=(1.0, 0.5), x_m=x_m)
    flipped = compute_cams(model, x.flip(-1), labels, scales=(1.0, 0.5), x_m=x_m.flip(-1))
    torch.testing.assert_close(flipped, cams.flip(-1), atol=1e-5, rtol=1e-4)
    on, off = compute_cams(model, x, labels, scales=(1.0, 0.5), x_m=x_m, m_term="both")
    torch.testing.assert_close(on, cams)
    torch.testing.assert_close(off, compute_cams(model, x, labels, scales=(1.0, 0.5), x_m=x_m, m_term=False))
    assert not torch.allclose(on, off)
    # the one-pass path (fusion "last") equals the two-pass path (M = 0 through the network)
    early, _ = _conta("layer1")
    on2, off2 = compute_cams(early, x, labels, scales=(1.0,), x_m=x_m, m_term="both")
    torch.testing.assert_close(on2, compute_cams(early, x, labels, scales=(1.0,), x_m=x_m))
    torch.testing.assert_close(off2, compute_cams(early, x, labels, scales=(1.0,), x_m=x_m, m_term=False))
    with pytest.raises(ValueError, match="needs x_m"):
        compute_cams(build_classifier("tiny", 4, width=8), x, labels, m_term="both")


def test_x_m_gets_the_image_flip():
    img = torch.rand(6, 3, 8, 8)
    batch = {"image": img, "x_m": img[:, 0].clone(), "labels": torch.ones(6, 2)}
    out = random_flip(batch)
    assert torch.equal(out["x_m"], out["image"][:, 0])
    assert not torch.equal(out["image"], img)  # some were flipped (seeded)


def test_to_grid_block_means_and_flip():
    x = torch.rand(2, 12, 12)
    torch.testing.assert_close(to_grid(x, (4, 4)), x.view(2, 4, 3, 4, 3).mean(dim=(2, 4)))
    torch.testing.assert_close(to_grid(x.flip(-1), (5, 5)), to_grid(x, (5, 5)).flip(-1))
    torch.testing.assert_close(to_grid(x.flip(-1), (20, 20)), to_grid(x, (20, 20)).flip(-1))


def test_prototype_quality_against_a_reference():
    from conta_kit.methods.conta import prototype_quality

    ref = _orthogonal_set(k=3, h=2, w=2)
    same = prototype_quality(ref, ref)
    assert same["mean_cosine"] == pytest.approx(1.0) and same["mean_abs_diff"] == 0.0
    assert same["within_cosine"] == pytest.approx(0.0)  # orthogonal prototypes are fully distinct
    blurred = ConfounderSet(torch.full((3, 2, 2), 0.25), ref.prior, ref.counts, ref.class_ids)
    q = prototype_quality(blurred, ref)
    assert q["mean_cosine"] == pytest.approx(0.5) and q["within_cosine"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sets differ"):
        prototype_quality(_orthogonal_set(k=2, h=2, w=2), ref)


@pytest.mark.parametrize("fusion", ["last", "input", "layer2"])
def test_folded_fast_path_gives_the_same_cams_for_an_adjusted_classifier(fusion):
    from conta_kit.models import fold_batchnorm

    torch.manual_seed(0)
    base = build_classifier("tiny", 3)
    model = ContaClassifier(base, BackdoorAdjustment(_orthogonal_set(3, 4, 4)), fusion=fusion)
    with torch.no_grad():  # non-trivial batch-norm statistics and M weights
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, xm, lab = torch.rand(2, 3, 32, 32), torch.rand(2, 32, 32), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    ref = compute_cams(model, x, lab, scales=(1.0, 0.5), x_m=xm, m_term="both")
    fast = compute_cams(fold_batchnorm(model), x, lab, scales=(1.0, 0.5), x_m=xm, m_term="both", channels_last=True)
    for a, b in zip(ref, fast):
        assert torch.allclose(a, b, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x, xm), fold_batchnorm(model)(x, xm), atol=1e-4)
