"""W-OoD: prototypes, K-means, the metric and OoD terms, mining, and the fine-tuning stage in a round."""

import math

import pytest
import torch
import torch.nn as nn

from conta_kit.config import RunCfg, WOoDConfig
from conta_kit.data import ConfoundedScenes, collate
from conta_kit.data.splits import load_splits
from conta_kit.io import RoundLayout, Run, read_json
from conta_kit.methods.wood import (
    build_prototypes,
    kmeans,
    metric_terms,
    mine_hard_ood,
    ood_ascent,
    ood_bce,
    pooled_features,
)
from conta_kit.models import build_classifier
from conta_kit.pipeline import load_round_classifier, run_conta
from conta_kit.train import TrainCfg, fit, multilabel_loss


def test_pull_is_zero_when_features_sit_on_their_prototypes():
    protos = torch.randn(4, 8)
    labels = torch.eye(4)
    pull, _ = metric_terms(protos.clone(), labels, protos, torch.randn(5, 8))
    assert float(pull) == pytest.approx(0.0, abs=1e-5)
    pull_off, _ = metric_terms(protos + 1.0, labels, protos, torch.randn(5, 8))
    assert float(pull_off) > 0.1


def test_pull_is_scaled_by_classes_over_centres():
    feat, protos = torch.zeros(2, 1), torch.tensor([[3.0], [4.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    pull, _ = metric_terms(feat, labels, protos, torch.zeros(4, 1))
    assert float(pull) == pytest.approx((3 + 3 + 4) / 4 * (2 / 4))


@pytest.mark.parametrize("b,k,frac", [(4, 10, 0.2), (3, 7, 0.2), (16, 50, 0.2), (2, 5, 1.0)])
def test_push_uses_exactly_the_closest_ceil_fraction_of_pairs(b, k, frac):
    torch.manual_seed(0)
    feat = torch.randn(b, 6, requires_grad=True)
    centres = torch.randn(k, 6)
    _, push = metric_terms(feat, torch.ones(b, 3), torch.randn(3, 6), centres, push_frac=frac)
    e = torch.cdist(feat, centres).flatten()
    n = math.ceil(frac * b * k)
    assert float(push.detach()) == pytest.approx(float(e.detach().sort().values[:n].sum()) / (b * k), rel=1e-5)
    # exactly n pairs carry gradient
    (g,) = torch.autograd.grad(push, feat)
    per_pair = torch.stack([torch.autograd.grad(torch.cdist(feat, centres).flatten()[i], feat, retain_graph=True)[0]
                            for i in range(b * k)])
    chosen = e.argsort()[:n]
    assert torch.allclose(g, per_pair[chosen].sum(0) / (b * k), atol=1e-6)


def test_margin_bounds_the_push():
    feat = torch.zeros(1, 1)
    centres = torch.tensor([[0.5], [3.0]])
    _, push = metric_terms(feat, torch.ones(1, 1), torch.zeros(1, 1), centres, push_frac=1.0, margin=1.0)
    assert float(push) == pytest.approx(-(1.0 - 0.5) / 2)  # the far centre is beyond the margin
    _, free = metric_terms(feat, torch.ones(1, 1), torch.zeros(1, 1), centres, push_frac=1.0)
    assert float(free) == pytest.approx((0.5 + 3.0) / 2)


def test_a_descent_step_on_the_metric_loss_pulls_to_prototypes_and_pushes_from_ood():
    torch.manual_seed(1)
    protos, centres = torch.randn(3, 5), torch.randn(6, 5)
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    feat = torch.randn(2, 5, requires_grad=True)
    pull, push = metric_terms(feat, labels, protos, centres, push_frac=0.5)
    (g_pull,) = torch.autograd.grad(pull, feat, retain_graph=True)
    (g_push,) = torch.autograd.grad(-push, feat)
    with torch.no_grad():
        d0 = (torch.cdist(feat, protos) * labels).sum()
        e0 = torch.cdist(feat, centres).min()
        d1 = (torch.cdist(feat - 0.01 * g_pull, protos) * labels).sum()
        e1 = torch.cdist(feat - 0.01 * g_push, centres).min()
    assert d1 < d0  # closer to the own classes' prototypes
    assert e1 > e0  # farther from the nearest OoD centre


def test_metric_terms_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes do not fit"):
        metric_terms(torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(3, 5), torch.zeros(2, 4))


def test_kmeans_is_seeded_and_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    true = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.3 * torch.randn(40, 2, generator=g) for c in true])
    c1, a1 = kmeans(x, 3, seed=5)
    c2, a2 = kmeans(x, 3, seed=5)
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
    order = torch.cdist(true, c1).argmin(1)
    assert torch.allclose(c1[order], true, atol=0.2)
    first, _ = kmeans(x[torch.randperm(len(x), generator=g)], 3, init="first")
    assert torch.allclose(first[torch.cdist(true, first).argmin(1)], true, atol=0.2)
    with pytest.raises(ValueError, match="k must be"):
        kmeans(x, 500)


def test_ood_bce_targets_zero_labels_and_the_exclusion_flips():
    logits = torch.tensor([[3.0, -1.0, 0.0], [-2.0, 0.5, 4.0]])
    full = ood_bce(logits, id_batch_size=4)
    per = nn.functional.multilabel_soft_margin_loss(logits, torch.zeros_like(logits), reduction="none")
    assert float(full) == pytest.approx(float(per.sum()) / 4)
    # the official quirk: images whose top class is the excluded one get no loss
    assert float(ood_bce(logits, 4, exclude=0)) == pytest.approx(float(per[1]) / 4)
    assert float(ood_bce(logits, 4, exclude=1)) == pytest.approx(float(full))
    assert float(ood_bce(torch.full((2, 3), -20.0), 4)) < 1e-6
    with pytest.raises(ValueError, match="exclude"):
        ood_bce(logits, 4, exclude=3)


def _tiny(num_classes=3):
    torch.manual_seed(0)
    return build_classifier("tiny", num_classes).eval()


def test_ood_ascent_raises_the_max_logit_inside_the_value_range_without_touching_parameters():
    model = _tiny()
    x = torch.rand(4, 3, 32, 32) * 0.8 + 0.1
    bn = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model.train()
    y = ood_ascent(model, x, eps=0.07)
    assert model.training  # the mode is restored
    assert all(torch.equal(a, m.running_mean) for a, m in zip(bn, [m for m in model.modules()
                                                                     if isinstance(m, nn.BatchNorm2d)]))
    assert all(p.grad is None for p in model.parameters())
    assert float(y.min()) >= float(x.min()) - 1e-6 and float(y.max()) <= float(x.max()) + 1e-6
    assert float((y - x).abs().max()) == pytest.approx(0.07, rel=1e-4)
    model.eval()
    with torch.no_grad():
        assert (model(y).amax(1) > model(x).amax(1)).all()
    assert torch.equal(ood_ascent(model, x, eps=0.0), x)


def test_pooled_features_match_the_classifier_forward():
    model = _tiny()
    x = torch.rand(2, 3, 32, 32)
    f, logits = pooled_features(model, x)
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-6)
    assert f.shape == (2, model.backbone.out_channels)


def test_build_prototypes_are_class_means_and_the_loss_scale_is_the_papers():
    ds = ConfoundedScenes("train", num_images=24, image_size=32, seed=0)
    ood = ConfoundedScenes("ood", num_images=12, image_size=32, seed=0, stream=1)
    torch.manual_seed(0)
    model = build_classifier("tiny", ds.num_classes)
    fit(model, ds, multilabel_loss, TrainCfg(epochs=3, batch_size=8, lr=0.1), collate_fn=collate, progress=False)
    p, q = build_prototypes(model, ds, ood, k=4, seed=0, progress=False)
    batch = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        f, logits = pooled_features(model, batch["image"])
    y = batch["labels"]
    c = int(torch.nonzero(y.sum(0)).flatten()[0])
    assert torch.allclose(p[c], f[y[:, c] > 0].mean(0), atol=1e-5)
    assert q.shape == (4, f.shape[1])
    # after some training, lambda = 0.007 makes the metric term a small fraction of the classification loss
    # (about 1 % in the official runs)
    pull, push = metric_terms(f, y, p, q)
    bce = nn.functional.multilabel_soft_margin_loss(logits, y)
    assert 1e-4 < 0.007 * abs(float(pull - push)) / float(bce) < 0.1
    empty = ConfoundedScenes("train", num_images=1, image_size=32, seed=0)
    with pytest.raises(ValueError, match="no training image"):
        build_prototypes(model, empty, ood, k=2, progress=False)


class _Fixed(nn.Module):
    """A 'classifier' whose logits are the mean of channel c of the image: scores are set by the data."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 3, 1, bias=False)
        nn.init.eye_(self.head.weight[:, :, 0, 0])

    def features(self, x, x_m=None, m_term=True):  # the kit's classifier signature; x_m unused
        return x

    def forward(self, x, x_m=None):  # the kit's classifier signature; x_m unused
        return self.head(x.mean(dim=(2, 3), keepdim=True)).flatten(1)


class _Images(torch.utils.data.Dataset):
    def __init__(self, levels):
        self.levels = levels

    def __len__(self):
        return len(self.levels)

    def __getitem__(self, i):
        img = torch.full((3, 4, 4), -10.0)
        img[i % 3] = self.levels[i]
        return {"image": img, "labels": torch.zeros(3)}


def test_mine_hard_ood_keeps_false_positives_hardest_first(tmp_path):
    levels = [-3.0, 2.0, 0.5, 4.0, -1.0, 1.0]  # sigmoid >= 0.5 where level >= 0
    rows = mine_hard_ood(_Fixed(), _Images(levels), thr=0.5, progress=False, out_csv=tmp_path / "m.csv")
    assert [r[0] for r in rows] == [3, 1, 5, 2]
    assert rows[0][2] == 0 and rows[1][2] == 1  # top class = the channel the level was put in
    assert (tmp_path / "m.csv").read_text().splitlines()[1].startswith("3,")
    assert [r[0] for r in mine_hard_ood(_Fixed(), _Images(levels), thr=0.8, top_n=1, progress=False)] == [3]


def test_wood_config_checks_its_options():
    with pytest.raises(ValueError, match="pool"):
        WOoDConfig(pool="all")
    with pytest.raises(ValueError, match="margin"):
        WOoDConfig(margin=0.0)
    cfg = RunCfg.from_params("smoke", finetune="wood", margin=2.0, exclude_class=4)
    assert cfg.wood.margin == 2.0 and cfg.wood.exclude_class == 4
    with pytest.raises(ValueError, match="background-only"):
        RunCfg.from_params("voc", data_root="/data/voc", finetune="wood")
    assert RunCfg.from_params("voc", data_root="/data/voc", finetune="plain").wood.ft_epochs == 5


def test_wood_pool_is_disjoint_from_the_held_out_ood_split():
    cfg = RunCfg.from_params("smoke", finetune="wood", num_pool=8)
    splits = load_splits(cfg)
    pool, held = splits["wood_pool"], splits["ood"]
    assert len(pool) == 8 and pool.split == "ood" and pool.ood_kind == "hard"
    assert not torch.equal(pool[0]["image"], held[0]["image"])
    assert float(pool[0]["labels"].sum()) == 0.0
    assert "wood_pool" not in load_splits(RunCfg.from_params("smoke", finetune="plain"))


_TINY = dict(image_size=32, num_train=32, num_val=16, num_shifted=16, num_ood=16, cls_epochs=1, seg_epochs=1,
             cam_scales=[1.0], rounds=1, num_pool=16, k=4, cls_batch_size=16, seg_batch_size=16)


def test_wood_round_records_its_terms_refreshes_prototypes_and_is_reloaded(tmp_path):
    cfg = RunCfg.from_params("smoke", finetune="wood", ft_epochs=2, refresh_every=1, **_TINY)
    run = Run.create("wood", tmp_path)
    rounds = run_conta(cfg, run, progress=False)
    for t, m in enumerate(rounds):
        ft = m["finetune"]
        assert ft["mode"] == "wood" and ft["k"] == 4 and len(ft["history"]) == 2
        assert {"bce", "pull", "push", "ood"} <= set(ft["history"][0])
        assert ft["history"][0]["prototypes_refreshed"] == 1.0
        assert set(m["ood"]) == {"hard", "random"} and 0.0 <= m["ood"]["hard"]["fp_rate"] <= 1.0
        assert len(m["seed"]["per_class_precision_fixed"]) == 9  # background + 8 classes
        protos = torch.load(run.path / f"round_{t}" / "artifacts" / "wood_prototypes.pt", weights_only=True)
        assert sorted(protos) == [0, 1]
        assert not torch.equal(protos[0][0], protos[1][0])
    ck = RoundLayout(run.path / "round_1").final_classifier
    assert ck.parent.name == "classifier_ft"
    model, x_m = load_round_classifier(cfg, run.path, 1, 8)
    assert "wood_pool" in x_m  # the OoD pool got x_m from round 0's segmenter, for the ContaClassifier
    state = torch.load(ck, weights_only=True)["model"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert read_json(run.path / "metrics.json")["conta"]["rounds"][1]["finetune"]["mode"] == "wood"


def test_a_stopped_wood_stage_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    import conta_kit.train as train_mod

    cfg = RunCfg.from_params("smoke", finetune="wood", ft_epochs=2, **{**_TINY, "rounds": 0})
    full = Run.create("full", tmp_path)
    run_conta(cfg, full, progress=False)
    real, calls = train_mod.save_checkpoint, []

    def stop_in_second_ft_epoch(path, *a, **kw):
        if "classifier_ft" in str(path):
            calls.append(path)
            if len(calls) == 2:
                raise KeyboardInterrupt
        return real(path, *a, **kw)

    stopped = Run.create("stopped", tmp_path)
    monkeypatch.setattr(train_mod, "save_checkpoint", stop_in_second_ft_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_conta(cfg, stopped, progress=False)
    monkeypatch.setattr(train_mod, "save_checkpoint", real)
    assert torch.load(RoundLayout(stopped.path / "round_0").final_classifier, weights_only=True)["epoch"] == 0
    rounds = run_conta(cfg, stopped, progress=False)
    a = torch.load(RoundLayout(full.path / "round_0").final_classifier, weights_only=True)["model"]
    b = torch.load(RoundLayout(stopped.path / "round_0").final_classifier, weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    untimed = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert untimed(rounds[0]["finetune"]["history"]) == untimed(
        read_json(full.path / "round_0" / "metrics.json")["finetune"]["history"])
