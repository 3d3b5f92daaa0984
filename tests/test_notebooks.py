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
    for name in ("preset", "seed", "run_dir"):
        assert f"{name} =" in params[0].source


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
    figures = {p.name for p in (run.path / "figures").glob("*.png")}
    assert {"01_cooccurrence.png", "01_dial.png", "01_samples_train.png", "01_samples_ood.png"} <= figures
    index = json.loads((run.path / "index.json").read_text())
    assert [i["status"] for i in index["notebooks"]] == ["ok"] * len(NOTEBOOKS)
    assert (run.path / "index.html").read_text().count("<img") == len(figures)
    assert json.loads((run.path / "params.json").read_text())["preset"] == "smoke"


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
