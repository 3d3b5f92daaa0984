"""The speed scripts run, write the JSON their tables are made from, and the tables read it (no timing is
asserted: speed is measured by the scripts, on the machine, side by side)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SMALL = ["-p", "num_train", "24", "-p", "num_val", "16", "-p", "num_shifted", "8", "-p", "num_ood", "8"]


def _script(name: str, *args: str, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / name), *args, "--out", str(out)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Small runs of the CPU benchmarks, written where run_all.py reads them."""
    d = tmp_path_factory.mktemp("results")
    _script("bench_cam.py", "--images", "24", "--size", "32", "--batch", "8", "--scales", "1.0", "0.5",
            "--repeats", "1", "--classes", "4", out=d / "cpu_cam.json")
    _script("bench_amp.py", "--preset", "smoke", "--seeds", "0", "1", "--threads", "1", "--rerun-threads", "2", *SMALL,
            out=d / "cpu_amp.json")
    _script("bench_round.py", "--preset", "smoke", "--device", "cpu", *SMALL, out=d / "cpu_round0.json")
    _script("bench_threads.py", "--preset", "smoke", "--seeds", "0", "1", *SMALL, out=d / "cpu_threads.json")
    return d


def test_cam_benchmark_measures_the_share_of_the_matmul_rate(results):
    d = json.loads((results / "cpu_cam.json").read_text())
    assert d["flops_per_image"] > 0 and d["matmul_peak_gflop_per_s"]["fp32"] > 0
    for case in ("kit", "kit_fast", "kit_cpu_bf16"):
        e = d[case]
        rate = e["images_per_s"] * d["flops_per_image"] / 1e9
        assert e["gflop_per_s"] == pytest.approx(rate, rel=0.02)
        assert 0 < e["share_of_matmul_peak"]
    assert d["kit"]["fp32_within_1e-4"] and d["kit_fast"]["fp32_within_1e-4"]
    assert d["share_case"] == "kit_fast" and d["target_share"] == 0.75
    # one share per round against the matmul rate of that round; "met" needs the best-of share and every round
    rounds, per = d["kit_fast"]["share_per_round"], d["matmul_gflop_per_s_per_round"]["fp32"]
    assert len(rounds) == len(per) == d["repeats"] == len(d["kit_fast"]["times_s"])
    for t, r, share in zip(d["kit_fast"]["times_s"], per, rounds):
        assert share == pytest.approx(d["images"] / t * d["flops_per_image"] / (r * 1e9), rel=0.02, abs=2e-3)
    assert d["share_rounds_min"] == min(rounds) and d["share_rounds_max"] == max(rounds)
    assert d["meets_share_target"] == (d["share"] >= 0.75 and min(rounds) >= 0.75)
    # the CPU's bf16 path against the bf16 matmul rate, the same rule (judged only where bf16 units exist)
    bs, bf = d["bf16_share"], d["kit_cpu_bf16"]["share_per_round"]
    assert bs["rounds_min"] == min(bf) and bs["met"] == (bs["share"] >= 0.75 and min(bf) >= 0.75)
    assert any("convolution" in r["op"] for r in d["profile_kit_cpu_bf16"])
    ops = [r["op"] for r in d["profile_kit_fast"]]
    assert any("convolution" in op for op in ops) and sum(r["share"] for r in d["profile_kit_fast"]) <= 1.0


def test_bf16_benchmark_compares_the_same_round_in_both_precisions(results):
    d = json.loads((results / "cpu_amp.json").read_text())
    assert [r["seed"] for r in d["per_seed"]] == [0, 1] and set(d["cpu_bf16_units"]) == {"amx", "avx512_bf16"}
    for r in d["per_seed"]:
        assert 0.5 < r["agreement"]["seeds"] <= 1 and 0.5 < r["agreement"]["pseudo_masks"] <= 1
        assert 0.9 < r["inference_only"]["seeds"] <= 1
        assert r["diff"]["miou_best"] == pytest.approx(r["bf16"]["miou_best"] - r["fp32"]["miou_best"])
        assert r["bf16"]["loss"] != r["fp32"]["loss"]  # the bf16 run did train in bf16
    assert set(d["judgement"]) == {"agreement_ge_0.995", "miou_within_0.005"}
    floor = d["fp32_rerun"]
    assert floor["threads"] == 2 and 0.5 < floor["agreement"]["seeds"]["mean"] <= 1


def test_round_and_threads_benchmarks_run_the_kits_own_commands(results):
    r = json.loads((results / "cpu_round0.json").read_text())
    assert r["precision"] == "fp32" and r["device"] == "cpu"  # the suite pins amp='auto' to fp32
    assert set(r["timing_s"]) >= {"classifier_s", "cams_s", "segmenter_s", "total_s"}
    assert 0 <= r["scores"]["seed_miou_best"] <= 1
    t = json.loads((results / "cpu_threads.json").read_text())
    assert t["parallel_jobs"]["jobs"] == 2 and t["intra_op"]["jobs"] == 1
    assert t["better"] in ("intra_op", "parallel_jobs")
    # one thread per process gives what one process on one thread gives (the number of intra-op threads may
    # change float rounding, so the intra-op way is reported, not required, to be equal)
    assert t["parallel_jobs"]["seed_miou_best"] == t["one_thread"]["seed_miou_best"]


def test_run_all_tables_are_made_from_the_json(results):
    def run_all(*args: str) -> str:
        proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--prefix", "cpu", "--results",
                               str(results), *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    summary, tables = run_all("--summary"), run_all("--markdown")
    cam = json.loads((results / "cpu_cam.json").read_text())
    assert f"{cam['kit_fast']['share_of_matmul_peak']:.0%} of the fp32 matmul rate" in summary
    amp = json.loads((results / "cpu_amp.json").read_text())
    assert f"{amp['agreement']['seeds']['mean']:.4f}" in summary
    assert "the noise floor: fp32 rerun on 2 thread(s)" in summary and "Noise floor: fp32 rerun" in tables
    thr = json.loads((results / "cpu_threads.json").read_text())
    assert f"{thr['jobs_over_threads']}x" in summary
    assert "Where kit_fast's time goes" in tables and "| seed | agreement seeds" in tables
    assert "Where kit_cpu_bf16's time goes" in tables
    assert "| way | jobs | wall s |" in tables and "| stage | seconds |" in tables
    # every row names the machine its file was measured on, and the legend names that machine's CPU
    rows = [r for r in summary.splitlines() if r.startswith("| ") and not r.startswith("| what")]
    assert rows and all(r.endswith(" A |") for r in rows)  # these files come from this machine, one run
    assert f"A: {os.cpu_count()}-core " in summary and cam["cpu_model"] in summary


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine gpu.sh runs the real benchmarks")
def test_gpu_script_refuses_to_run_without_cuda(tmp_path):
    before = sorted(p.name for p in (BENCH / "results").iterdir())
    readme = (ROOT / "README.md").read_bytes()
    proc = subprocess.run(["bash", str(BENCH / "gpu.sh")], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 2
    assert "no CUDA device here" in proc.stderr and "nothing was run" in proc.stderr
    assert sorted(p.name for p in (BENCH / "results").iterdir()) == before
    assert (ROOT / "README.md").read_bytes() == readme


def test_recipe_ladder_starts_from_the_earlier_recipe_and_ends_at_the_preset():
    sys.path.insert(0, str(BENCH))
    try:
        from recipe_health import recipes
    finally:
        sys.path.remove(str(BENCH))
    from conta_kit.config import RunCfg

    for preset in ("default", "smoke"):
        steps = recipes(preset)
        assert [n for n, _ in steps] == ["prior", "+strip", "+pattern", "+shift", "+glass", "+scales", "+scale"]
        cfgs = [RunCfg.from_params(preset, **params).to_dict() for _, params in steps]
        assert all(a != b for a, b in zip(cfgs, cfgs[1:]))  # every step changes the recipe
        assert cfgs[5] == RunCfg.preset_cfg(preset).to_dict()  # the ladder ends at the preset itself
        assert cfgs[6]["data"]["object_scale"] == 1.4 and steps[6][1] == {**steps[5][1], "object_scale": 1.4}
        assert cfgs[0]["data"]["layout"] == "prior" and cfgs[0]["baseline"]["aug_shift"] == 0
        assert cfgs[0]["data"]["train_windows"] == "open"
        assert tuple(cfgs[0]["baseline"]["cam_scales"]) == (1.0, 0.5, 1.5)


def test_recipe_ladder_refuses_a_bad_extra_step_before_any_work(tmp_path):
    for also, said in ((["aug_shift"], "KEY=VALUE"), (["no_such=1"], "unknown parameter 'no_such'"),
                       (["aug_shift=64"], "aug_shift (64) must be smaller than image_size (64)")):
        cmd = [sys.executable, str(BENCH / "recipe_health.py"), "--preset", "smoke", "--also", *also,
               "--out", str(tmp_path / "r.json")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode != 0 and said in proc.stderr, proc.stderr[-1000:]
        assert not (tmp_path / "r.json").exists()


def test_recipe_ladder_scores_baseline_and_oracle_on_val_and_tabulates(tmp_path):
    out = tmp_path / "recipe.json"
    res = _script("recipe_health.py", "--preset", "smoke", "--only", "prior", "+strip", "+aug_shift=5",
                  "+classifier_images=120,cam_scales=1.0,0.5", "--jobs", "1", "--also", "aug_shift=5",
                  "--also", "classifier_images=120", "cam_scales=1.0,0.5", out=out)
    rows = res["rows"]
    assert [(r["recipe"], r["arm"]) for r in rows] == [("prior", "baseline"), ("prior", "oracle"),
                                                     ("+strip", "baseline"), ("+strip", "oracle"),
                                                     ("+aug_shift=5", "baseline"), ("+aug_shift=5", "oracle"),
                                                     ("+classifier_images=120,cam_scales=1.0,0.5", "baseline"),
                                                     ("+classifier_images=120,cam_scales=1.0,0.5", "oracle")]
    preset = res["ladder"][5]["params"]  # the ladder's last step: the preset itself
    assert rows[4]["params"] == {**preset, "aug_shift": 5}
    # both arms train on the images the pipeline's round 0 would: 120 streamed where asked, the 96 of train else
    assert [r["classifier_images"] for r in rows] == [96] * 6 + [120] * 2
    assert rows[0]["params"] == {"layout": "prior", "object_texture": "plain", "object_scale": 1.0, "aug_shift": 0,
                                 "train_windows": "open", "cam_scales": [1.0, 0.5, 1.5]}
    assert rows[2]["params"] == {**rows[0]["params"], "layout": "prior_strip"}
    assert rows[1]["train_rho"] == pytest.approx(0.1)
    for r in rows:
        assert 0 <= r["val_seed_miou"] <= r["val_ceiling_miou"] <= 1
        assert r["share_of_ceiling"] == pytest.approx(r["val_seed_miou"] / r["val_ceiling_miou"])
        # a smoke-sized oracle (96 images at rho 0.1, three epochs) can put no CAM mass anywhere on val: its
        # localisation is then undefined (NaN, None in JSON), never out of range
        for k in ("cam_peak_on_object", "cam_peak_in_box", "cam_mass_in_object"):
            assert (r["arm"] == "oracle" and r[k] is None) or 0 <= r[k] <= 1, (r["recipe"], r["arm"], k, r[k])
        assert r["cam_peak_in_box"] is None or r["cam_peak_in_box"] >= r["cam_peak_on_object"]  # on it: in its box
        assert 0 <= r["cam_empty_share"] <= 1 and (r["cam_empty_share"] == 1) == (r["cam_peak_on_object"] is None)
    doc = tmp_path / "doc.md"
    doc.write_text("x\n<!-- results:recipe-health -->\nold\n<!-- /results:recipe-health -->\ny\n")
    proc = subprocess.run([sys.executable, str(BENCH / "recipe_health.py"), "--markdown", str(out), "--update",
                           str(doc)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = doc.read_text()
    assert "old" not in text and f"{rows[2]['val_seed_miou']:.3f}" in text and "oracle (rho 0.1)" in text
    # several files merge (a step in two files must have scored the same) into another named block
    doc.write_text("<!-- results:budget -->\nold\n<!-- /results:budget -->\n")
    other = json.loads(out.read_text())
    other["rows"] = other["rows"][4:]
    (tmp_path / "other.json").write_text(json.dumps(other))
    proc = subprocess.run([sys.executable, str(BENCH / "recipe_health.py"), "--markdown", str(out),
                           str(tmp_path / "other.json"), "--update", str(doc), "--block", "budget", "--no-geometry"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = doc.read_text()
    assert "paired by seed" in text and "context's geometry" not in text
    # two arms in each of the four tables (scores; peaks on the object, in its box, below it), once though in two
    # files, and in the table of what the other peaks lie on one row per arm and place
    from conta_kit.cam.diagnostics import PEAK_PLACES

    assert text.count("| +aug_shift=5 |") == 8 + 1 + 2 * (len(PEAK_PLACES) - 1)
    # the oracle minus the baseline, paired by seed (one seed here: no spread)
    gap = rows[5]["val_seed_miou"] - rows[4]["val_seed_miou"]
    assert f"| +aug_shift=5 | 1 | {gap:.3f} | {int(gap > 0)} of 1 |" in text
    assert "in the object's box (the pointing game" in text and "| +aug_shift=5 | rho 0.5 | paired context |" in text
    # the paired differences against a step named with --reference (default: the last ladder step scored)
    assert "minus +strip's" in text
    diff = rows[4]["val_seed_miou"] - rows[0]["val_seed_miou"]  # +aug_shift=5 minus prior, baseline, seed 0
    for ref, said in ((["prior"], f"{diff:.3f}"), (["prior", "+nothing"], "--reference: no rows of '+nothing'"),
                      (["+nothing"], "--reference: no rows of '+nothing'")):
        proc = subprocess.run([sys.executable, str(BENCH / "recipe_health.py"), "--markdown", str(out), "--reference",
                               *ref], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert said in (proc.stdout if ref == ["prior"] else proc.stderr), (proc.stdout + proc.stderr)[-2000:]
        assert (proc.returncode == 0) == (ref == ["prior"])
    # several reference names: per arm and seed the first that has a row (+strip's rows win over prior's)
    proc = subprocess.run([sys.executable, str(BENCH / "recipe_health.py"), "--markdown", str(out), "--reference",
                           "+strip", "prior"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "minus +strip / prior's" in proc.stdout
    assert f"{rows[4]['val_seed_miou'] - rows[2]['val_seed_miou']:.3f}" in proc.stdout
    other["rows"][0]["val_seed_miou"] += 0.1
    (tmp_path / "other.json").write_text(json.dumps(other))
    proc = subprocess.run([sys.executable, str(BENCH / "recipe_health.py"), "--markdown", str(out),
                           str(tmp_path / "other.json")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "in two files" in proc.stderr


def test_benchmark_overrides_are_typed_and_commas_make_tuples():
    sys.path.insert(0, str(BENCH))
    try:
        from _common import overrides_from
    finally:
        sys.path.remove(str(BENCH))
    got = overrides_from([["cam_scales", "1.0,0.5,2"], ["aug_shift", "30"], ["cam_flip", "false"],
                          ["layout", "uniform"], ["pretrained", "none"]])
    assert got == {"cam_scales": (1.0, 0.5, 2), "aug_shift": 30, "cam_flip": False, "layout": "uniform",
                   "pretrained": None}
    from conta_kit.config import RunCfg

    assert RunCfg.from_params("smoke", **got).baseline.cam_scales == (1.0, 0.5, 2.0)


def test_shift_probe_measures_where_a_peak_falls_by_hand():
    sys.path.insert(0, str(BENCH))
    from shift_probe import peaks, shifted

    obj = torch.zeros(2, 32, 32, dtype=torch.bool)
    obj[:, 10:20, 4:12] = True  # mean row 14.5
    cams = torch.zeros(2, 32, 32)
    cams[0, 25, 6] = 1.0  # below the object
    cams[1, 12, 8] = 1.0  # on it
    got = peaks(cams, obj)
    assert got["images"] == 2 and got["peak_on_object"] == 0.5
    assert abs(got["peak_below_mean_row"] - ((25 - 14.5) + (12 - 14.5)) / 2 / 32) < 1e-6
    img, mask = shifted(torch.rand(1, 3, 32, 32), obj[:1].long(), 5)
    assert img.shape == (1, 3, 32, 32) and int(mask[0, 15:25, 4:12].min()) == 1 and int(mask[0, 10:15].sum()) == 0
    img, up = shifted(img, mask, -5)  # and back up: the object where it was, the cut rows repeated at the bottom
    assert torch.equal(up, obj[:1].long()) and torch.equal(img[0, :, 27:], img[0, :, 26:27].expand(-1, 5, -1))


def test_rescore_reproduces_a_run_with_the_code_that_made_it(tmp_path):
    from conta_kit.cli import main

    assert main(["conta", "--preset", "smoke", "--seeds", "0", "-p", "rounds", "0", "--runs-root", str(tmp_path),
                 "--no-progress", *SMALL]) == 0
    run = next(tmp_path.iterdir())
    res = _script("rescore.py", str(run), "--threads", "1", out=tmp_path / "rescore.json")
    assert sorted(res["arms"]) == ["seed_0/oracle", "seed_0/round_0"]
    for arm in res["arms"].values():  # the same code, the same classifier: the same seeds, bit for bit
        assert arm["new"] == arm["stored"] and arm["pseudo_mask_agreement"] == 1.0
    assert res["miou_best_new_minus_stored"]["max_abs"] == 0.0
    probe = _script("shift_probe.py", str(run), "--class", "person", "--shifts", "0", "8", "--threads", "1",
                    out=tmp_path / "shift.json")
    assert [(r["arm"], r["shift"]) for r in probe["rows"]] == [("round_0", 0), ("round_0", 8), ("oracle", 0),
                                                              ("oracle", 8)]
    assert all(r["images"] > 0 and 0.0 <= r["peak_on_object"] <= 1.0 for r in probe["rows"])
    placed = _script("cam_placement.py", str(run), "--jobs", "1", out=tmp_path / "placement.json")
    rows = {(r["arm"], r["placement"]): r for r in placed["rows"]}
    assert sorted(rows) == sorted((a, p) for a in ("round_0", "oracle") for p in ("irnet", "receptive_field",
                                                                                  "measured"))
    for arm in ("round_0", "oracle"):
        irnet, rf, measured = (rows[arm, p] for p in ("irnet", "receptive_field", "measured"))
        assert irnet["cell_origin"] is None and rf["cell_origin"] == 0.0 and irnet["stride"] == 8
        assert measured["cell_origin"] == pytest.approx(sum(irnet["gradient_centre"]) / 2)
        assert all(abs(v) < 8 for v in irnet["gradient_centre"])  # within a cell of stride x i
        assert all(0 <= r["val_seed_miou"] <= 1 for r in (irnet, rf, measured))
        # the placement reaches the CAMs: half a cell apart, the peaks or the seeds differ
        assert (irnet["cam_peak_offset_y_per_class"], irnet["val_seed_miou"]) != (
            rf["cam_peak_offset_y_per_class"], rf["val_seed_miou"])
    proc = subprocess.run([sys.executable, str(BENCH / "cam_placement.py"), "--markdown",
                           str(tmp_path / "placement.json")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "| round_0 | receptive_field | 0.000 |" in proc.stdout, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, str(BENCH / "rescore.py"), str(tmp_path / "nope")], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "not a run folder" in proc.stderr
