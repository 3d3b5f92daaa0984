"""The confounding sweep: method bookkeeping, the summary over seeds, tables, and notebook 07 end to end."""

import json
import math

import nbformat
import pytest

from conta_kit.cli import NOTEBOOKS, SWEEP_NOTEBOOK, main, notebook_paths
from conta_kit.config import RunCfg
from conta_kit.io import to_jsonable, write_json
from conta_kit.pipeline.sweep import arm_cfg, summarize_sweep, sweep_tables
from conta_kit.summary import sweep_methods


def test_methods_map_to_arm_and_round():
    m = sweep_methods(2)
    assert m == {"baseline": ("plain", 0), "oracle": ("plain", "oracle"), "CONTA r1": ("plain", 1),
                 "CONTA r2": ("plain", 2), "CONTA (true C, x_m)": ("plain", "conta_gt"), "W-OoD": ("wood", 0),
                 "CONTA + W-OoD r1": ("wood", 1), "CONTA + W-OoD r2": ("wood", 2)}
    cfg = arm_cfg(RunCfg.from_params("smoke"), 0.75, "wood")
    assert cfg.data.cooccurrence == 0.75 and cfg.wood.finetune == "wood"
    assert not cfg.conta.oracle and not cfg.conta.gt_arm  # one of each per cell
    plain = arm_cfg(RunCfg.from_params("smoke"), 0.75, "plain")
    assert plain.conta.oracle and plain.conta.gt_arm
    with pytest.raises(ValueError, match="arm"):
        arm_cfg(cfg, 0.5, "both")


def _round(seed_miou, fp, precision):
    return {"seed": {"miou_fixed": seed_miou, "per_class_precision_fixed": precision},
            "ood": {"hard": {"fp_rate": fp}}, "timing": {"total_s": 10.0}}


def test_summary_means_over_seeds_and_tables(tmp_path):
    vals = {("plain", 0): [0.2, 0.4], ("plain", 1): [0.3, 0.3], ("wood", 0): [0.5, 0.7], ("wood", 1): [0.6, 0.6]}
    for rho in (0.5, 0.9):
        for (arm, t), v in vals.items():
            for s, x in enumerate(v):
                write_json(tmp_path / f"rho_{rho:g}" / arm / f"seed_{s}" / f"round_{t}" / "metrics.json",
                           _round(x + rho, 1.0 - x, [math.nan, x, 2 * x]))
    (tmp_path / "rho_0.9" / "wood" / "seed_1" / "round_1" / "metrics.json").unlink()  # a seed still running
    for s, x in enumerate((0.2, 0.4)):  # the oracle of rho 0.5, in the plain arm: 0.4 above the baseline
        write_json(tmp_path / "rho_0.5" / "plain" / f"seed_{s}" / "oracle" / "metrics.json",
                   _round(x + 0.5 + 0.4, 0.0, [math.nan, x, x]))
    summary = summarize_sweep(tmp_path)
    assert summary["rhos"] == [0.5, 0.9] and summary["rounds"] == 1
    assert summary["compute_s"] == pytest.approx(10.0 * 17)
    oracle = summary["methods"]["oracle"]
    assert set(oracle) == {"0.5"} and oracle["0.5"]["seed_miou_fixed"]["mean"] == pytest.approx(1.2)
    # W-OoD is 0.3 above each seed's baseline: (0.3) / (0.4) of the gap to the oracle, on every seed
    assert summary["methods"]["W-OoD"]["0.5"]["gap_seed_miou_fixed"]["values"] == pytest.approx([0.75, 0.75])
    assert "gap_seed_miou_fixed" not in summary["methods"]["W-OoD"]["0.9"]  # no oracle at rho 0.9
    base = summary["methods"]["baseline"]["0.5"]
    assert base["seed_miou_fixed"]["mean"] == pytest.approx(0.8)
    assert base["seed_miou_fixed"]["std"] == pytest.approx(math.sqrt(0.02))
    assert base["ood_fp_rate"]["values"] == pytest.approx([0.8, 0.6])
    assert base["per_class_precision"][1:] == pytest.approx([0.3, 0.6]) and math.isnan(base["per_class_precision"][0])
    partial = summary["methods"]["CONTA + W-OoD r1"]["0.9"]
    assert partial["num_seeds"] == 1 and math.isnan(partial["seed_miou_fixed"]["std"])
    text = sweep_tables(summary)
    assert sweep_tables(json.loads(json.dumps(to_jsonable(summary)))) == text  # as read back from metrics.json
    assert "| W-OoD | 1.100 ± 0.141 | 1.500 ± 0.141 |" in text
    assert "| CONTA + W-OoD r1 | 1.100 ± 0.000 | 1.500 |" in text
    assert "All metrics at rho 0.9" in text
    with pytest.raises(FileNotFoundError, match="no sweep"):
        summarize_sweep(tmp_path / "rho_0.5")


def test_the_benchmark_notebook_is_committed_clean_and_kept_out_of_the_main_sequence():
    path = NOTEBOOKS / SWEEP_NOTEBOOK
    assert path not in notebook_paths()
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    (params,) = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    for name in ("preset", "smoke", "rhos", "seeds", "rounds", "jobs", "run_dir", "overrides"):
        assert f"{name} =" in params.source


_SMALL = ["-p", "num_train", "48", "-p", "num_val", "24", "-p", "num_shifted", "24", "-p", "num_ood", "24",
          "-p", "num_pool", "24", "-p", "rounds", "1"]


@pytest.mark.slow
def test_sweep_cli_runs_notebook_08_and_resumes(tmp_path, capsys):
    assert main(["sweep", "--preset", "smoke", "--rhos", "0.5", "0.99", "--seeds", "0", "--jobs", "1",
                 "--runs-root", str(tmp_path), "--no-progress", *_SMALL]) == 0
    (run,) = tmp_path.iterdir()
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["sweep"]["methods"]) == {"baseline", "oracle", "CONTA r1", "CONTA (true C, x_m)", "W-OoD",
                                          "CONTA + W-OoD r1"}
    for arm in ("oracle", "conta_gt"):  # one oracle and one CONTA over true C, x_m per cell
        assert (run / "rho_0.5" / "plain" / "seed_0" / arm / "metrics.json").exists()
        assert not (run / "rho_0.5" / "wood" / "seed_0" / arm).exists()
    assert set(m["sweep"]["methods"]["W-OoD"]) == {"0.5", "0.99"}
    for arm, mode in (("plain", "plain"), ("wood", "wood")):
        r0 = json.loads((run / "rho_0.99" / arm / "seed_0" / "round_0" / "metrics.json").read_text())
        assert r0["finetune"]["mode"] == mode
        params = json.loads((run / "rho_0.99" / arm / "seed_0" / "params.json").read_text())
        assert params["resolved"]["data"]["cooccurrence"] == 0.99
    figures = {p.name for p in (run / "figures").glob("*.png")}
    assert {"08_sweep_headline.png", "08_sweep_per_class.png", "08_sweep_reliance_ood.png",
            "08_sweep_ood_cams.png"} <= figures
    assert (run / "sweep_tables.md").read_text().startswith("**Seed (CAM) mIoU")
    assert "share of the baseline-oracle gap" in m["conclusions"]["08_bench_confounding"]
    assert "| W-OoD |" in capsys.readouterr().out
    done = run / "rho_0.5" / "wood" / "seed_0" / "round_1" / "metrics.json"
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(["sweep", "--resume", str(run), "--no-progress"]) == 0  # finished: no file changes
    assert "nothing to resume" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == stamps
    index = json.loads((run / "index.json").read_text())
    index["notebooks"][0]["status"] = "failed"  # as if the notebook had been stopped after the last cell trained
    (run / "index.json").write_text(json.dumps(index))
    assert main(["sweep", "--resume", str(run), "--no-progress"]) == 0  # nothing left to train
    assert done.stat().st_mtime_ns == stamps[done]
    assert len(json.loads((run / "metrics.json").read_text())["sweep_wall_s"]) == 2
    assert main(["sweep", "--resume", str(tmp_path / "nope")]) == 2
    bad = tmp_path / "bad"
    for args in (["--rhos", "1.5"], ["--seeds", "0", "0"], ["--jobs", "0"]):
        assert main(["sweep", "--preset", "smoke", "--runs-root", str(bad), *args]) == 2
    assert not bad.exists()  # refused before any run folder was made
