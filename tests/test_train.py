import dataclasses

import pytest
import torch
import torch.nn as nn
from _helpers import ToyMultiLabel
from torch._dynamo import register_backend
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from conta_kit.data import collate
from conta_kit.train import TrainCfg, epoch_order, fit, make_optimizer, multilabel_loss, poly_lr


def Toy(n=64):  # noqa: N802 - a dataset
    return ToyMultiLabel(n, seed=0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x, x_m=None):  # the kit's classifier signature; x_m unused
        return self.fc(self.drop(torch.relu(self.conv(x)).mean(dim=(2, 3))))


def test_poly_schedule_values():
    assert poly_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert poly_lr(0.1, 50, 100, power=0.9) == pytest.approx(0.1 * 0.5**0.9)
    assert poly_lr(0.1, 100, 100) == 0.0
    with pytest.raises(ValueError):
        poly_lr(0.1, 0, 0)


def test_sgd_gets_keyword_arguments():
    opt = make_optimizer(Net(), TrainCfg(lr=0.1, momentum=0.9, weight_decay=1e-4))
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD) and g["momentum"] == 0.9 and g["weight_decay"] == 1e-4


def test_head_lr_mult_reaches_the_cam_head():
    from conta_kit.config import RunCfg
    from conta_kit.models import build_classifier

    model = build_classifier("tiny", 4)
    head = model.head.weight
    for mult in (10.0, 1.0, 2.5):
        opt = make_optimizer(model, TrainCfg(lr=0.05, head_lr_mult=mult))
        lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        assert lrs[id(head)] == pytest.approx(0.05 * mult)
        assert lrs[id(next(model.backbone.parameters()))] == pytest.approx(0.05)
    assert RunCfg.from_params("smoke", cls_head_lr_mult=1.0).baseline.cls_head_lr_mult == 1.0
    assert RunCfg.from_params("smoke", cls_weight_decay=5e-4).baseline.cls_weight_decay == 5e-4
    with pytest.raises(ValueError, match="cls_weight_decay must be >= 0, got -1"):
        RunCfg.from_params("smoke", cls_weight_decay=-1)
    with pytest.raises(ValueError, match="cls_head_lr_mult must be > 0, got 0"):
        RunCfg.from_params("smoke", cls_head_lr_mult=0)
    with pytest.raises(ValueError, match="head_lr_mult must be > 0"):
        TrainCfg(head_lr_mult=-1)


def test_fit_lowers_loss_and_follows_the_schedule():
    torch.manual_seed(0)
    net = Net()
    hist = fit(net, Toy(), multilabel_loss, TrainCfg(epochs=6, batch_size=16, lr=0.5), progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"] * 0.8
    assert hist[-1]["lr_end"] == pytest.approx(poly_lr(0.5, 6 * 4 - 1, 6 * 4))
    assert not net.training


def test_resume_continues_to_the_same_result(tmp_path):
    cfg = TrainCfg(epochs=3, batch_size=16, lr=0.3, seed=5)
    torch.manual_seed(1)
    straight = Net()
    fit(straight, Toy(), multilabel_loss, cfg, ckpt_dir=tmp_path / "a", progress=False)

    class Stop(Exception):
        pass

    def stop_in_epoch_2(model, epoch):
        if epoch == 1:  # the hook runs before epoch 2's checkpoint is written: the run stops after epoch 1's
            raise Stop
        return {}

    torch.manual_seed(1)
    stopped = Net()
    with pytest.raises(Stop):
        fit(stopped, Toy(), multilabel_loss, cfg, ckpt_dir=tmp_path / "b", progress=False, val_fn=stop_in_epoch_2)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 0
    resumed = Net()  # fresh weights: everything must come from the checkpoint
    hist = fit(resumed, Toy(), multilabel_loss, cfg, ckpt_dir=tmp_path / "b", resume=True, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    cfg = TrainCfg(epochs=3, batch_size=16, lr=0.1)
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        value = multilabel_loss(model, batch)
        return value * float("nan") if calls["n"] > 5 else value

    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, step 2.*last\.pt"):
        fit(Net(), Toy(), loss, cfg, ckpt_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_bad_config():
    with pytest.raises(ValueError, match="optimizer"):
        TrainCfg(optimizer="lamb")
    with pytest.raises(ValueError, match="empty"):
        fit(Net(), Toy(0), multilabel_loss, TrainCfg(), progress=False)


def test_collate_fn_is_used():
    hist = fit(Net(), Toy(16), multilabel_loss, TrainCfg(epochs=1, batch_size=8), collate_fn=collate, progress=False)
    assert len(hist) == 1


class Indexed(ToyMultiLabel):
    def __getitem__(self, i):
        return {**super().__getitem__(i), "index": torch.tensor(i)}


def test_epoch_order_is_the_earlier_loops_order_and_fit_follows_it():
    for n, seed in ((1, 0), (10, 3), (64, 1_000_003 * 7 + 2)):
        earlier = tqdm(DataLoader(list(range(n)), batch_size=4, shuffle=True,  # the loop before epoch_order
                                  generator=torch.Generator().manual_seed(seed)), disable=True)
        assert epoch_order(n, seed) == [int(i) for b in earlier for i in b]
    seen = []

    def loss(model, batch):
        seen.extend(batch["index"].tolist())
        return multilabel_loss(model, batch)

    fit(Net(), Indexed(10), loss, TrainCfg(epochs=2, batch_size=4, seed=3), progress=False)
    assert seen == epoch_order(10, 3 * 1_000_003) + epoch_order(10, 3 * 1_000_003 + 1)
    assert sorted(seen[:10]) == list(range(10)) and seen[:10] != seen[10:]


def _plain_net():
    torch.manual_seed(0)
    net = Net()
    net.drop = nn.Identity()
    return net


def test_channels_last_and_compile_follow_the_plain_run():
    graphs = []

    def recording_backend(gm, example_inputs):  # a torch.compile backend that runs the captured graph as is
        graphs.append(gm)
        return gm.forward

    register_backend(recording_backend, name="conta_kit_test_recording")
    cfg = TrainCfg(epochs=2, batch_size=16, lr=0.3)
    plain = _plain_net()
    base = [h["loss"] for h in fit(plain, Toy(32), multilabel_loss, cfg, progress=False)]
    for kw in ({"channels_last": True}, {"compile": "conta_kit_test_recording"}):
        net = _plain_net()
        hist = fit(net, Toy(32), multilabel_loss, dataclasses.replace(cfg, **kw), progress=False)
        assert [h["loss"] for h in hist] == pytest.approx(base, rel=1e-5), kw
        for a, b in zip(net.state_dict().values(), plain.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert list(net.state_dict()) == list(plain.state_dict())  # parameter names unchanged
        if "channels_last" in kw:
            assert net.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert graphs  # the forward went through torch.compile
    with pytest.raises(ValueError, match="compile must be True, False or a torch.compile backend name, got ''"):
        TrainCfg(compile="")


def test_a_resumed_fit_keeps_the_earlier_epochs_time_and_says_so(tmp_path, caplog):
    from conta_kit.train import checkpoint_progress

    cfg = TrainCfg(epochs=1, batch_size=16, lr=0.1, seed=0)
    hist = fit(Net(), Toy(), multilabel_loss, cfg, ckpt_dir=tmp_path, progress=False)
    assert hist[0]["seconds"] > 0
    assert checkpoint_progress(tmp_path) == (1, hist[0]["seconds"]) and checkpoint_progress(tmp_path / "no") == (0, 0)
    with caplog.at_level("WARNING"):
        fit(Net(), Toy(), multilabel_loss, dataclasses.replace(cfg, epochs=2), ckpt_dir=tmp_path, resume=True,
            progress=False)
    assert any("covers epochs 2-2 only" in r.getMessage() for r in caplog.records)
