"""DistributedDataParallel through fit(): 2 CPU processes (gloo) against one process at the same global batch."""

import faulthandler
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from _helpers import ToyMultiLabel

from conta_kit import distributed
from conta_kit.train import TrainCfg, fit, multilabel_loss

# Uneven last batches on purpose: 21 = 8 + 8 + 5 (ranks take 3 and 2 images), 17 = 8 + 8 + 1 (rank 1 idles
# with weight 0 in the last step).
SIZES = (21, 17)
CFG = TrainCfg(epochs=3, batch_size=8, lr=0.5, seed=4)
TIMEOUT_S = 150


def Toy(n):  # noqa: N802 - a dataset
    return ToyMultiLabel(n, seed=n)


class Net(nn.Module):
    """No batch norm and no dropout: with them each rank would see its own batch statistics and masks."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x, x_m=None):  # the kit's classifier signature; x_m unused
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _net():
    torch.manual_seed(0)
    return Net()


class Stop(Exception):
    pass


def _stop_in_epoch_2(model, epoch):
    if epoch == 1:  # before epoch 2's checkpoint: the resumed run must start from epoch 1's
        raise Stop
    return {}


def _train(n, cfg=CFG, **kw):
    net = _net()
    hist = fit(net, Toy(n), multilabel_loss, cfg, progress=False, **kw)
    return [h["loss"] for h in hist], {k: v.clone() for k, v in net.state_dict().items()}


def _worker(rank, world, port, out):
    faulthandler.enable()  # a crash in native code shows where the worker was
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import conta_kit.train as train

    writes = []
    save = train.save_checkpoint
    train.save_checkpoint = lambda *a, **k: writes.append(rank) or save(*a, **k)
    try:
        result = {"runs": {n: _train(n) for n in SIZES}, "world": distributed.world_size(), "rank": distributed.rank()}
        with pytest.raises(ValueError, match=r"batch_size \(1\) is the global batch size and must be >= .* \(2\)"):
            fit(_net(), Toy(4), multilabel_loss, TrainCfg(batch_size=1), progress=False)
        ckpt = Path(out) / "ckpt"
        with pytest.raises(Stop):
            _train(SIZES[0], ckpt_dir=ckpt, val_fn=_stop_in_epoch_2)
        result["resumed"] = _train(SIZES[0], ckpt_dir=ckpt, resume=True)
        result["writes"] = len(writes)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.cleanup()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world, out, worker=None):
    """Run ``worker(rank, world, port, out)`` in ``world`` processes; fail the test after TIMEOUT_S."""
    ctx = mp.start_processes(worker or _worker, args=(world, _free_port(), str(out)), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {world} training processes did not finish within {TIMEOUT_S} s")
    if worker is not None:
        return None
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _close(a, b, rtol=1e-5, atol=1e-6):
    return all(abs(x - y) <= atol + rtol * abs(y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
def test_two_processes_follow_the_single_process_run(tmp_path):
    ranks = _spawn(2, tmp_path)
    single = {n: _train(n) for n in SIZES}
    for r, res in enumerate(ranks):
        assert res["world"] == 2 and res["rank"] == r
        for n in SIZES:
            losses, state = res["runs"][n]
            assert _close(losses, single[n][0]), (n, r, losses, single[n][0])
            for k, v in state.items():
                torch.testing.assert_close(v, single[n][1][k], rtol=1e-5, atol=1e-6)
        resumed_losses, resumed_state = res["resumed"]
        assert _close(resumed_losses, single[SIZES[0]][0])
        for k, v in resumed_state.items():
            torch.testing.assert_close(v, single[SIZES[0]][1][k], rtol=1e-5, atol=1e-6)
    assert [res["writes"] for res in ranks] == [3, 0]  # epoch 1, then epochs 2 and 3 after the resume: rank 0 only
    # the comparison can tell runs apart: another data order (seed) moves the losses well beyond the tolerance
    other, _ = _train(SIZES[0], TrainCfg(epochs=3, batch_size=8, lr=0.5, seed=5))
    assert not _close(other, single[SIZES[0]][0], rtol=1e-3)


def test_rank_batches_split_every_global_batch():
    order = list(range(100, 121))  # 21 items, batch 8: 8, 8, 5
    plans = [distributed.rank_batches(order, 8, r, 3) for r in range(3)]
    assert [len(p) for p in plans] == [3, 3, 3]
    for step in range(3):
        group = order[step * 8 : (step + 1) * 8]
        assert sorted(i for p in plans for i in p[step][0]) == group  # every item once, on one rank
        # DDP averages the rank gradients: the weighted rank means average to the global batch's mean
        means = [sum(p[step][0]) / p[step][1] for p in plans]
        assert sum(p[step][2] * m for p, m in zip(plans, means)) / 3 == pytest.approx(sum(group) / len(group))
    assert [p[2][1:] for p in plans] == [(2, 3 * 2 / 5), (2, 3 * 2 / 5), (1, 3 * 1 / 5)]
    assert distributed.rank_batches(list(range(9)), 4, 1, 2)[2] == ([8], 0, 0.0)  # last batch of one item
    assert distributed.rank_batches(order, 8)[0] == (order[:8], 8, 1.0)
    with pytest.raises(ValueError, match=r"batch_size \(2\) is the global batch size .* \(3\)"):
        distributed.rank_batches(order, 2, 0, 3)
    with pytest.raises(ValueError, match="rank must be in 0..1"):
        distributed.rank_batches(order, 8, 2, 2)


def test_outside_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.init_from_env()
    assert (distributed.is_distributed(), distributed.rank(), distributed.world_size()) == (False, 0, 1)
    assert distributed.all_reduce_sum([1.5, 2]) == [1.5, 2.0]
    assert distributed.rank_device("cuda") == torch.device("cuda")
    distributed.barrier()
    distributed.cleanup()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be a positive integer, got 'two'"):
        distributed.init_from_env()


_CONTA_ARGS = ["conta", "--preset", "smoke", "--seeds", "0", "--no-progress", "-p", "image_size", "32",
               "-p", "num_train", "24", "-p", "num_val", "12", "-p", "num_shifted", "12", "-p", "num_ood", "12",
               "-p", "cls_epochs", "1", "-p", "seg_epochs", "1", "-p", "cam_scales", "[1.0]", "-p", "rounds", "1"]


def _cli_worker(rank, world, port, out):
    faulthandler.enable()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import conta_kit.pipeline.round as pipeline
    from conta_kit.cli import main

    states = []
    build = pipeline.build_round_classifier

    def keep(*a, **k):  # each rank's classifiers, to compare their weights after training
        model = build(*a, **k)
        states.append(model)
        return model

    pipeline.build_round_classifier = keep
    rc = main([*_CONTA_ARGS, "--runs-root", str(Path(out) / "runs")])
    torch.save({"rc": rc, "states": [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in states]},
               Path(out) / f"cli{rank}.pt")


@pytest.mark.slow
def test_conta_cli_under_two_processes_writes_one_run_with_synchronised_models(tmp_path):
    _spawn(2, tmp_path, _cli_worker)
    res = [torch.load(tmp_path / f"cli{r}.pt", weights_only=False) for r in range(2)]
    assert [r["rc"] for r in res] == [0, 0]
    (run,) = (tmp_path / "runs").iterdir()  # rank 0 made the folder, rank 1 used it
    params = (run / "params.json").read_text()
    assert '"world_size": 2' in params
    for t in (0, 1):
        assert (run / "seed_0" / f"round_{t}" / "metrics.json").exists()
    for arm in ("oracle", "conta_gt"):
        assert (run / "seed_0" / arm / "metrics.json").exists()
    assert len(res[0]["states"]) == len(res[1]["states"]) == 4  # rounds 0 and 1, the oracle, CONTA on true C, x_m
    for a, b in zip(res[0]["states"], res[1]["states"]):  # DDP kept the ranks' weights equal
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    assert not any(p.name.startswith(".") for p in run.rglob("*"))  # no temporary file left behind
