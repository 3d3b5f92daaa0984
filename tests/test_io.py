import json
import math

import pytest
import torch

from conta_kit.io import Run, atomic_write_text, open_run, to_jsonable, write_json


def test_run_folders_are_new_and_complete(tmp_path, monkeypatch):
    import datetime

    import conta_kit.io as kio

    class Frozen(datetime.datetime):  # both folders in the same second, however loaded the machine is
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(kio._dt, "datetime", Frozen)
    a = Run.create("exp", tmp_path, params={"rho": 0.9}, seed=3, device="cpu")
    b = Run.create("exp", tmp_path)
    assert a.path != b.path and a.path.parent == b.path.parent == tmp_path
    assert a.path.name.endswith("_exp") and b.path.name.startswith(a.path.name)  # same second: suffixed
    assert (a.path / "figures").is_dir()
    assert a.params == {"rho": 0.9}
    env = json.loads((a.path / "env.json").read_text())
    assert env["seed"] == 3 and env["device"] == "cpu" and env["versions"]["torch"].startswith("2.")
    assert "git_commit" in env and env["python"]
    assert a.metrics == {}


def test_log_metrics_merges_sections(tmp_path):
    run = Run.create("m", tmp_path)
    run.log_metrics("data", {"n": 1})
    run.log_metrics("cam", {"miou": float("nan"), "t": torch.tensor([1.5, 2.0])})
    m = json.loads((run.path / "metrics.json").read_text())  # strict JSON: NaN became null
    assert m == {"data": {"n": 1}, "cam": {"miou": None, "t": [1.5, 2.0]}}


def test_never_overwrite(tmp_path):
    p = atomic_write_text(tmp_path / "a.txt", "one")
    with pytest.raises(FileExistsError, match="a.txt"):
        atomic_write_text(p, "two")
    assert p.read_text() == "one"
    atomic_write_text(p, "two", overwrite=True)
    assert p.read_text() == "two"
    run = Run.create("f", tmp_path)
    import matplotlib.pyplot as plt

    fig = plt.figure()
    run.save_figure(fig, "x")
    with pytest.raises(FileExistsError):
        run.save_figure(fig, "x")
    plt.close(fig)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    class Boom:
        def tolist(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_json(tmp_path / "m.json", {"x": Boom()})
    assert list(tmp_path.iterdir()) == []


def test_to_jsonable():
    assert to_jsonable({"a": (1, float("inf")), 2: torch.tensor(0.5)}) == {"a": [1, None], "2": 0.5}
    assert math.isnan(float("nan")) and to_jsonable(float("nan")) is None


def test_open_run(tmp_path):
    run = Run.create("x", tmp_path)
    assert open_run(str(run.path), "ignored").path == run.path
    new = open_run(None, "nb", root=tmp_path)
    assert new.path != run.path and new.path.name.endswith("_nb")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_run(tmp_path / "missing", "nb")
    with pytest.raises(ValueError, match="plain folder name"):
        Run.create("../escape", tmp_path)
