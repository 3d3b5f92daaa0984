"""The CONTA loop: rounds, artifacts, resume, seeds summary, CLI, and the joint augmentation."""

import math

import pytest
import torch

from conta_kit.cli import main
from conta_kit.config import RunCfg
from conta_kit.data.transforms import joint_augment
from conta_kit.io import Run, read_json
from conta_kit.methods.conta import ConfounderSet
from conta_kit.methods.conta.diagnostics import diagnose_prototypes
from conta_kit.pipeline import run_conta, run_seeds
from conta_kit.summary import summarize, summary_table


def test_joint_augment_moves_x_m_with_the_image_and_pads_masks():
    img = torch.rand(4, 3, 10, 12)
    batch = {"image": img, "x_m": img[:, 0].clone(), "mask": torch.randint(0, 3, (4, 10, 12)),
             "context_mask": torch.randint(0, 5, (4, 10, 12)), "labels": torch.ones(4, 2)}
    batch["mask_copy"] = batch["mask"].clone()
    out = joint_augment(batch, scale=(1.3, 1.6), crop=20)
    assert out["image"].shape == (4, 3, 20, 20) and out["x_m"].shape == (4, 20, 20)
    assert torch.equal(out["x_m"], out["image"][:, 0])  # same geometry; x_m is 0 where the image is padded
    padded = out["mask"] == 255
    assert torch.equal(out["mask"][~padded], out["mask_copy"][~padded])  # every map gets the same geometry
    assert padded.any() and bool((out["context_mask"][padded] == -1).all())
    assert bool((out["image"].sum(1)[padded] == 0).all())
    assert torch.equal(out["labels"], batch["labels"])
    same = joint_augment(batch, flip=False)
    assert torch.equal(same["image"], img)
    with pytest.raises(ValueError, match="scale"):
        joint_augment(batch, scale=(0.0, 1.0))


def test_summarize_mean_and_sample_std():
    per_seed = {s: [{"seed": {"miou_fixed": v}, "pseudo": {"miou": None}}] for s, v in zip((0, 1, 2), (0.1, 0.2, 0.6))}
    row = summarize(per_seed)["rounds"][0]
    assert row["seed_miou_fixed"]["mean"] == pytest.approx(0.3)
    assert row["seed_miou_fixed"]["std"] == pytest.approx(math.sqrt(((0.2) ** 2 + 0.1**2 + 0.3**2) / 2))
    assert "pseudo_miou" not in row  # missing values are left out, never invented
    assert "0.300 ± 0.265" in summary_table(summarize(per_seed))


@pytest.mark.slow
def test_conta_rounds_artifacts_and_resume(tmp_path, caplog):
    # the arms in the same process: with them in a second one, whether they still run when a round trains decides
    # that round's thread count (and so its float rounding), which a rerun need not repeat
    cfg = RunCfg.from_params(preset="smoke", rounds=1, parallel_arms=False)
    run = Run.create("conta", tmp_path)
    with caplog.at_level("INFO", logger="conta_kit.pipeline.round"):
        rounds = run_conta(cfg, run, progress=False)
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["adjusted"] and not rounds[0]["adjusted"]
    said = [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().endswith(" s")]
    assert said == ["round 0", "round 1", "oracle", "conta_gt"]  # each arm's summary line names it
    r0, r1 = run.path / "round_0", run.path / "round_1"
    cs = ConfounderSet.load(r0 / "confounders.pt", num_prototypes=8)
    x_m = torch.load(r0 / "x_m.pt", weights_only=True)
    assert x_m["train"].shape == (cfg.data.num_train, 64, 64) and x_m["train"].dtype == torch.uint8
    assert {"train", "val", "shifted", "ood"} <= set(x_m) and cs.grid == (8, 8)  # tiny backbone: 64 / 8
    assert (r1 / "artifacts" / "attention.pt").exists() and "without_m" in rounds[1]["seed"]
    assert "logit_share_from_m" in rounds[1]["m"]
    assert run.metrics["conta"]["rounds"][1]["seed"]["miou_fixed"] == rounds[1]["seed"]["miou_fixed"]
    # the interventional oracle: round 0's recipe, its classifier trained on the same layouts at rho = chance
    oracle = run.metrics["conta"]["oracle"]
    assert run.layout.oracle.done and oracle["oracle"]["train_rho"] == pytest.approx(0.1) and not oracle["adjusted"]
    w0 = torch.load(run.layout.round(0).checkpoint("classifier"), weights_only=True)["model"]
    wo = torch.load(run.layout.oracle.checkpoint("classifier"), weights_only=True)["model"]
    assert w0.keys() == wo.keys() and any(not torch.equal(w0[k], wo[k]) for k in w0)
    assert oracle["num_train"] == rounds[0]["num_train"]  # scored on the same images as every round
    summary = summarize({0: rounds}, {0: oracle})
    assert summary["oracle"]["seed_miou_best"]["values"] == [oracle["seed"]["miou_best"]]
    gap0 = summary["rounds"][0].get("gap_seed_miou_best")
    assert gap0 is None or gap0["mean"] == 0.0  # round 0 is the baseline: no gap closed (None: oracle == baseline)
    assert "| oracle |" in summary_table(summary)
    for key in ("ceiling", "localisation", "surround", "best_at_grid_edge", "share_of_ceiling"):
        assert key in rounds[0]["seed"], key
    assert 0 < rounds[0]["seed"]["ceiling"]["miou_best"] <= 1 and rounds[0]["seed"]["ceiling"]["grid"] == [8, 8]
    (diag,) = diagnose_prototypes(run.path, cfg)  # round 0's C against C from the ground-truth masks
    assert diag["round"] == 0 and len(diag["cosine"]) == 8 and 0 <= diag["within_cosine_reference"] <= 1
    assert 0 <= diag["x_m_mean_train"] <= 1 and 0 < diag["object_pixel_share_train"] < 1
    # stop inside round 1 (its segmenter lost): a rerun keeps round 0 and finishes round 1 the same way
    (r1 / "metrics.json").unlink()
    (r1 / "checkpoints" / "segmenter" / "last.pt").unlink()
    before = (r0 / "metrics.json").stat().st_mtime_ns
    again = run_conta(cfg, run, progress=False)
    assert (r0 / "metrics.json").stat().st_mtime_ns == before
    for key in ("seed", "pseudo"):
        assert again[1][key]["miou"] == rounds[1][key]["miou"] if key == "pseudo" else \
            again[1][key]["miou_fixed"] == rounds[1][key]["miou_fixed"]
    assert again[1]["segmentation"]["miou"] == pytest.approx(rounds[1]["segmentation"]["miou"], abs=1e-9)


@pytest.mark.slow
def test_cli_conta_two_seeds_summary(tmp_path, capsys):
    rc = main(["conta", "--preset", "smoke", "--seeds", "0", "1", "-p", "rounds", "1", "--runs-root",
               str(tmp_path), "--no-progress"])
    assert rc == 0
    run_dir = next(tmp_path.iterdir())
    summary = read_json(run_dir / "metrics.json")["summary"]
    assert summary["seeds"] == [0, 1] and len(summary["rounds"]) == 2
    assert len(summary["rounds"][1]["seg_miou"]["values"]) == 2
    assert "| round |" in capsys.readouterr().out
    assert main(["conta", "--preset", "smoke", "-p", "fusion", "block9", "--runs-root", str(tmp_path)]) == 2
    assert "fusion" in capsys.readouterr().err
    assert main(["conta", "--resume", str(run_dir), "--no-progress"]) == 0  # everything done: read back
    # an ablation reuses round 0 of the same seed and rebuilds C with its own options
    abl = tmp_path / "abl"
    assert main(["conta", "--preset", "smoke", "--seeds", "1", "-p", "rounds", "1", "-p", "include_bg", "True",
                 "-p", "init", "previous", "--round0-from", str(run_dir), "--runs-root", str(abl),
                 "--no-progress"]) == 0
    seed_dir = next(abl.iterdir()) / "seed_1"
    r0 = read_json(seed_dir / "round_0" / "metrics.json")
    assert r0 == read_json(run_dir / "seed_1" / "round_0" / "metrics.json")
    assert len(ConfounderSet.load(seed_dir / "round_0" / "confounders.pt")) == 9  # 8 classes + background
    r1 = read_json(seed_dir / "round_1" / "metrics.json")  # init=previous: round 1 starts from round 0's weights
    assert r1["classifier"]["history"][0]["loss"] < r0["classifier"]["history"][0]["loss"]
    assert main(["conta", "--preset", "smoke", "--seeds", "1", "-p", "cooccurrence", "0.5", "--round0-from",
                 str(run_dir), "--runs-root", str(abl), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "cooccurrence: 0.9 there, 0.5 here" in err
    assert len(list(abl.iterdir())) == 1  # the refused run made no folder


def test_run_seeds_rejects_duplicate_seeds(tmp_path):
    with pytest.raises(ValueError, match="distinct"):
        run_seeds(RunCfg.from_params(preset="smoke"), Run.create("x", tmp_path), [0, 0])


def test_report_writes_the_marked_block(tmp_path):
    from conta_kit.io import write_json
    from conta_kit.report.markdown import conta_markdown, update_block

    run = Run.create("conta", tmp_path, params={"preset": "default", "overrides": {}, "seeds": [0, 1]})
    rounds = {s: [{"round": 0, "seed": {"miou_fixed": 0.2 + s / 10}, "timing": {"total_s": 60.0}, "device": "cpu"}]
              for s in (0, 1)}
    for s, r in rounds.items():
        (run.path / f"seed_{s}").mkdir()
        write_json(run.path / f"seed_{s}" / "metrics.json", {"conta": {"rounds": r}})
    run.log_metrics("summary", summarize(rounds))
    text = conta_markdown(run.path)
    assert "0.250 ± 0.071" in text and "seeds [0, 1]" in text and "2 min of wall time" in text
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:conta -->\nold\n<!-- /results:conta -->\nend\n")
    update_block(readme, "conta", text)
    body = readme.read_text()
    assert "\nold\n" not in body and "0.250 ± 0.071" in body and body.startswith("intro") and body.endswith("end\n")
    with pytest.raises(ValueError, match="no block"):
        update_block(readme, "wood", text)


def test_ablation_table_names_rows_by_overrides(tmp_path):
    from conta_kit.io import write_json
    from conta_kit.report.markdown import ablation_markdown

    dirs = []
    for over, v in (({"rounds": 1}, 0.3), ({"rounds": 1, "m_scale": "convex"}, 0.4)):
        run = Run.create("abl", tmp_path, params={"preset": "default", "overrides": over, "seeds": [0]})
        run.log_metrics("summary", summarize({0: [{"seed": {"miou_fixed": 0.25}},
                                                  {"seed": {"miou_fixed": v}, "m": {"logit_share_from_m": 0.01}}]}))
        dirs.append(run.path)
    text = ablation_markdown(dirs)
    assert "| baseline (round 0) | 0 | [0] | 0.250 |" in text
    assert "| paper defaults | 1 | [0] | 0.300 |" in text and "| m_scale=convex | 1 | [0] | 0.400 |" in text
    assert " 0.010 |" in text  # one value: the mean alone, by the one formatting rule (summary.fmt)
    with pytest.raises(ValueError, match="no finished round"):
        ablation_markdown(dirs, seed=0)  # these folders have summaries but no seed_0/
    for d, v in zip(dirs, (0.3, 0.4)):
        (d / "seed_0").mkdir()
        write_json(d / "seed_0" / "metrics.json", {"conta": {"rounds": [{"seed": {"miou_fixed": 0.25}},
                                                                         {"seed": {"miou_fixed": v}}]}})
    assert "| m_scale=convex | 1 | [0] | 0.400 |" in ablation_markdown(dirs, seed=0)


def test_oracle_gap_table_reads_each_seeds_baseline_oracle_and_ceiling(tmp_path):
    from conta_kit.io import write_json
    from conta_kit.report.oracle_gap import oracle_gap_markdown

    def rnd(seed_best, ceiling):
        return {"seed": {"miou_best": seed_best, "ceiling": {"miou_best": ceiling}}, "pseudo": {"miou": seed_best}}

    run = Run.create("gap", tmp_path, params={"resolved": {"data": {"cooccurrence": 0.9}}, "seeds": [0, 1]})
    for s, (b, o) in enumerate(((0.2, 0.4), (0.3, 0.5))):
        conta = {"rounds": [rnd(b, 0.6)], "oracle": rnd(o, 0.6)}
        write_json(run.path / f"seed_{s}" / "metrics.json", {"conta": conta})
    text = oracle_gap_markdown([run.path])
    # per seed: oracle - baseline = 0.2; ceiling - oracle = 0.2 and 0.1; the oracle closes 0.5 and 2/3 of the way
    # (the difference carries the 95 % interval of its mean: zero width when both seeds differ by the same)
    assert ("| 0.9 | 2 | 0.250 ± 0.071 | 0.450 ± 0.071 | 0.600 ± 0.000 | 0.200 ± 0.000 [+0.200, +0.200] | "
            "0.150 ± 0.071 | 0.583 ± 0.118 |") in text
    assert "| 0.9 | pseudo_miou | 0.250 ± 0.071 | 0.450 ± 0.071 | 0.200 ± 0.000 [+0.200, +0.200] |" in text
    # the written reading: a difference whose interval excludes zero is "beyond the seed spread"
    assert "- rho 0.9: the oracle differs from the baseline beyond the seed spread in seed_miou_best +0.200" in text
    assert "which closes 0.583 ± 0.118 of the baseline's distance to it." in text
    # what amp "auto" became, read from env.json: fp32 under the suite (CONTA_KIT_CPU_BF16=0), bf16 on a CPU
    # with bf16 units, and not guessed where env.json predates the record
    assert f"`{run.path.name}` (fp32)" in text
    write_json(run.layout.env, {"device": "cpu", "cpu_bf16": {"auto_uses_bf16": True}}, overwrite=True)
    assert f"`{run.path.name}` (bf16)" in oracle_gap_markdown([run.path])
    write_json(run.layout.env, {"device": "cpu"}, overwrite=True)
    assert f"`{run.path.name}` (unrecorded)" in oracle_gap_markdown([run.path])
    no_oracle = {"conta": {"rounds": [rnd(0.3, 0.6)]}}
    write_json(run.path / "seed_1" / "metrics.json", no_oracle, overwrite=True)
    one_seed = oracle_gap_markdown([run.path])
    assert "| 0.9 | 1 |" in one_seed and "What these numbers show" not in one_seed  # no spread, no verdict


def test_oracle_gap_tabulates_each_class_peaks_on_and_in_the_box_where_the_runs_have_them(tmp_path):
    from conta_kit.io import write_json
    from conta_kit.report.oracle_gap import oracle_gap_markdown, peaks_by_class

    nan = float("nan")

    def rnd(on, box):
        loc = {"cam_peak_on_object_per_class": on, **({"cam_peak_in_box_per_class": box} if box else {})}
        return {"seed": {"miou_best": 0.3, "ceiling": {"miou_best": 0.6}, "localisation": loc}}

    run = Run.create("gap", tmp_path, params={"resolved": {"data": {"cooccurrence": 0.5}}, "seeds": [0, 1]})
    for s, on in enumerate(([0.2, 0.8, nan], [0.4, 0.6, nan])):
        write_json(run.path / f"seed_{s}" / "metrics.json", {"conta": {
            "rounds": [rnd(on, [0.5, 0.9, nan])], "oracle": rnd([0.5, 0.5, nan], [0.7, 0.5, nan])}})
    text = oracle_gap_markdown([run.path])
    table = text[text.index("| rho | classifier | seeds |"):text.index("\nRun folders")]
    assert "| rho | classifier | seeds | aeroplane | bird | boat |" in table
    assert "| 0.5 | baseline | 2 | 0.30 / 0.50 | 0.70 / 0.90 | — |" in table  # a class absent everywhere: a dash
    assert "| 0.5 | oracle | 2 | 0.50 / 0.70 | 0.50 / 0.50 | — |" in table
    assert table.strip() == peaks_by_class([(0.5, [(read_json(run.path / f"seed_{s}" / "metrics.json")["conta"][
        "rounds"][0], read_json(run.path / f"seed_{s}" / "metrics.json")["conta"]["oracle"]) for s in (0, 1)])]).strip()
    for s in (0, 1):  # runs made before the peak in the box: no table
        write_json(run.path / f"seed_{s}" / "metrics.json", {"conta": {"rounds": [rnd([0.2, 0.8, nan], None)],
                                                                     "oracle": rnd([0.5, 0.5, nan], None)}},
                   overwrite=True)
    assert "Where the CAM peaks land" not in oracle_gap_markdown([run.path])


def test_controls_table_compares_the_true_ingredient_arm_with_each_seeds_baseline(tmp_path):
    from conta_kit.io import write_json
    from conta_kit.report.markdown import controls_markdown

    def rnd(v):
        return {"seed": {"miou_best": v}}

    dirs = []
    for over, gains in (({"rounds": 3}, (0.1, 0.2, 0.3)), ({"rounds": 0, "layout": "uniform"}, (0.0, 0.0, 0.0))):
        run = Run.create("ctl", tmp_path, params={"overrides": over, "resolved": {"data": {"cooccurrence": 0.9}}})
        for s, g in enumerate(gains):
            conta = {"rounds": [rnd(0.3)], "conta_gt": rnd(0.3 + g), **({"oracle": rnd(0.5)} if s < 2 else {})}
            write_json(run.path / f"seed_{s}" / "metrics.json", {"conta": conta})
        dirs.append(run.path)
    text = controls_markdown(dirs)
    # gains 0.1, 0.2, 0.3: mean 0.2, std 0.1, 95 % half-width 4.303 * 0.1 / sqrt(3) = 0.248; the oracle is
    # missing for seed 2, so its column is the two seeds that have it
    assert ("| default (rho 0.9) | 3 | seed_miou_best | 0.300 ± 0.000 | 0.500 ± 0.100 | 0.500 ± 0.000 (2 seeds) | "
            "0.200 ± 0.100 [-0.048, +0.448] |") in text
    assert ("| layout=uniform | 3 | seed_miou_best | 0.300 ± 0.000 | 0.300 ± 0.000 | 0.500 ± 0.000 (2 seeds) | "
            "0.000 ± 0.000 [+0.000, +0.000] |") in text
    write_json(dirs[1] / "seed_0" / "metrics.json", {"conta": {"rounds": [rnd(0.3)]}}, overwrite=True)
    (dirs[1] / "seed_1" / "metrics.json").unlink()
    (dirs[1] / "seed_2" / "metrics.json").unlink()
    with pytest.raises(ValueError, match="conta_gt"):
        controls_markdown(dirs)


def _strip_timing(m):
    if isinstance(m, dict):
        return {k: _strip_timing(v) for k, v in m.items() if k not in ("timing", "seconds")}
    if isinstance(m, list):
        return [_strip_timing(v) for v in m]
    return m


def test_arms_in_a_second_process_give_the_same_results(tmp_path, monkeypatch):
    from conta_kit.pipeline import rounds as rounds_mod

    small = dict(rounds=1, num_train=24, num_val=16, num_shifted=8, num_ood=8)
    results = {}
    real_start = rounds_mod.ArmsJob.start.__func__
    for parallel in (False, True):
        started: list = []
        monkeypatch.setattr(rounds_mod.ArmsJob, "start", classmethod(
            lambda cls, c, r, started=started: started.append(real_start(cls, c, r)) or started[-1]))
        cfg = RunCfg.from_params(preset="smoke", parallel_arms=parallel, **small)
        run = Run.create(f"arms{int(parallel)}", tmp_path)
        # two threads split into one per process, against everything in one process on one thread: the same
        # arithmetic (the number of intra-op threads itself may change float rounding)
        threads = 2 if parallel else 1
        torch.set_num_threads(threads)
        run_conta(cfg, run, progress=False)
        assert len(started) == int(parallel)  # the second process was used only when asked for
        assert torch.get_num_threads() == threads  # the threads lent to the rounds are given back
        results[parallel] = _strip_timing(run.metrics["conta"])
        assert results[parallel].pop("settings")["parallel_arms"] is parallel
    torch.set_num_threads(2)
    assert set(results[True]) >= {"oracle", "conta_gt", "rounds"}
    assert results[True] == results[False]


def test_a_failing_round_stops_the_arms_process(tmp_path, monkeypatch):
    from conta_kit.pipeline import rounds as rounds_mod

    torch.set_num_threads(2)
    jobs = []
    real_start = rounds_mod.ArmsJob.start.__func__
    monkeypatch.setattr(rounds_mod.ArmsJob, "start",
                        classmethod(lambda cls, c, r: jobs.append(real_start(cls, c, r)) or jobs[-1]))

    def boom(*a, **k):
        raise RuntimeError("round failed")

    monkeypatch.setattr(rounds_mod, "_rounds", boom)
    cfg = RunCfg.from_params(preset="smoke", rounds=1, num_train=24, num_val=16, num_shifted=8, num_ood=8)
    with pytest.raises(RuntimeError, match="round failed"):
        run_conta(cfg, Run.create("fail", tmp_path), progress=False)
    (job,) = jobs
    assert not job.process.is_alive() and job.process.exitcode != 0
    assert torch.get_num_threads() == 2


def test_a_finished_runs_summary_is_made_again_from_its_seeds_for_the_report(tmp_path):
    from conta_kit.io import write_json
    from conta_kit.pipeline.jobs import load_summary
    from conta_kit.summary import summarize

    run = Run.create("conta", tmp_path, params={"preset": "default", "overrides": {}, "seeds": [0, 1]})
    old = {0: [{"seed": {"miou_best": 0.3}}], 1: [{"seed": {"miou_best": 0.5}}]}
    run.log_metrics("summary", summarize(old))  # what the run stored when it ended
    for s, v in ((0, 0.3), (1, 0.5)):  # its seeds, with a measure the summary code of then did not read
        write_json(run.path / f"seed_{s}" / "metrics.json", {"conta": {"rounds": [
            {"seed": {"miou_best": v, "localisation": {"cam_peak_in_box": v + 0.2}}}]}})
    stored, fresh = load_summary(run.path), load_summary(run.path, fresh=True)
    assert stored["rounds"][0].get("cam_peak_in_box") is None
    assert fresh["rounds"][0]["cam_peak_in_box"]["mean"] == pytest.approx(0.6)
    assert fresh["rounds"][0]["seed_miou_best"] == stored["rounds"][0]["seed_miou_best"]  # the same numbers
    import shutil

    shutil.rmtree(run.path / "seed_1")  # a seed folder missing: the stored summary
    assert load_summary(run.path, fresh=True) == stored
