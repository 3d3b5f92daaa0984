import pytest

from conta_kit.config import DataCfg, RunCfg, resolve_device


def test_presets_and_overrides():
    smoke = RunCfg.from_params(preset="smoke")
    assert smoke.smoke and smoke.data.num_train < DataCfg().num_train
    cfg = RunCfg.from_params(preset="default", seed=4, cooccurrence=0.75, num_train=None)
    assert cfg.seed == 4 and cfg.data.cooccurrence == 0.75 and cfg.data.num_train == DataCfg().num_train
    assert cfg.to_dict()["data"]["cooccurrence"] == 0.75


def test_unknown_names_and_bad_values():
    with pytest.raises(ValueError, match="unknown parameter 'coocurrence'"):
        RunCfg.from_params(coocurrence=0.5)
    with pytest.raises(ValueError, match="preset"):
        RunCfg.from_params(preset="huge")
    with pytest.raises(ValueError, match="cooccurrence"):
        RunCfg.from_params(cooccurrence=1.2)
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    assert resolve_device("cpu") == "cpu"


def test_cli_values_are_python_literals_and_lowercase_booleans():
    from conta_kit.cli import _literal

    assert [_literal(v) for v in ("0.75", "3", "True", "false", "true", "None", "none", "(1.0, 0.5)", "last")] == \
        [0.75, 3, True, False, True, None, None, (1.0, 0.5), "last"]
    assert RunCfg.from_params("smoke", oracle=_literal("false"), gt_arm=_literal("False")).conta.oracle is False


@pytest.mark.parametrize("key,value,message", [
    ("rounds", "abc", "rounds must be an integer, got 'abc'"),
    ("cls_epochs", 2.5, "cls_epochs must be an integer, got 2.5"),
    ("cls_lr", float("nan"), "cls_lr must be a finite number"),
    ("cls_lr", "fast", "cls_lr must be a finite number"),
    ("oracle", "yes", "oracle must be True or False"),
    ("cam_scales", "abc", "cam_scales must be a tuple of one or more numbers"),
    ("aug_scale", (1.0,), "aug_scale must be a tuple of 2 numbers"),
    ("cam_scales", (1.0, -0.5), "cam_scales must be one or more values > 0"),
    ("cls_batch_size", 0, "cls_batch_size must be >= 1"),
    ("seg_lr", -1.0, "seg_lr must be > 0"),
    ("threshold_grid", (0.5, 1.5), "threshold_grid must be one or more values in"),
    ("layout", 3, "layout must be a string"),
])
def test_every_option_is_checked_against_its_type_and_range(key, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunCfg.from_params("smoke", **{key: value})


def test_types_convert_where_lossless():
    cfg = RunCfg.from_params("smoke", cls_lr=1, cam_scales=[1, 0.5], grid=None, temperature=2)
    assert cfg.baseline.cls_lr == 1.0 and isinstance(cfg.baseline.cls_lr, float)
    assert cfg.baseline.cam_scales == (1.0, 0.5) and cfg.conta.temperature == 2.0


def test_cli_refuses_bad_values_before_making_a_folder_and_resume_keeps_the_runs_settings(tmp_path, capsys):
    from conta_kit.cli import main

    root = tmp_path / "runs"
    for argv in (["conta", "-p", "rounds", "abc"], ["baseline", "-p", "cls_epochs", "three"],
                 ["conta", "-p", "image_size", "0"], ["baseline", "-p", "device", "tpu"],
                 ["conta", "-p", "backbone", "vgg99"], ["baseline", "-p", "segmenter", "unet9"],
                 ["run", "-p", "cls_lr", "nan"], ["baseline", "--resume", str(tmp_path)]):
        assert main([*argv, "--runs-root", str(root), "--no-progress"]) == 2, argv
        assert "conta-kit: error:" in capsys.readouterr().err
        assert not root.exists() or not any(root.iterdir()), argv
    run = root / "x_baseline"
    run.mkdir(parents=True)
    (run / "params.json").write_text('{"preset": "smoke", "overrides": {"num_train": 8}, "resolved": {}}')
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(["baseline", "--resume", str(run), "--preset", "default", "--no-progress"]) == 2
    assert "was made with preset 'smoke'" in capsys.readouterr().err
    assert main(["baseline", "--resume", str(run), "-p", "num_train", "16", "--no-progress"]) == 2
    (run / "metrics.json").write_text('{"baseline": {"done": true}}')
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(["baseline", "--resume", str(run), "--no-progress"]) == 0  # finished: nothing changes
    assert "nothing to resume" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_a_run_made_when_prior_meant_the_class_shaped_patch_is_not_resumed(tmp_path, capsys):
    import json

    from conta_kit import cli
    from conta_kit.data.scenes import SCENES_VERSION

    run = tmp_path / "20260101-000000_conta"
    run.mkdir()
    params = {"command": "conta", "preset": "smoke", "overrides": {}, "seeds": [0],
              "resolved": {"data_source": "scenes", "data": {"layout": "prior"}}}
    (run / "params.json").write_text(json.dumps(params))
    (run / "env.json").write_text(json.dumps({"git_commit": "old"}))
    before = sorted(p.name for p in run.iterdir())
    assert cli.main(["conta", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "prior_class_surround" in err and "would mix two benchmarks" in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing was written
    (run / "env.json").write_text(json.dumps({"scenes_version": SCENES_VERSION}))
    cli._check_scenes_version(run, params)  # a run of today's benchmark passes this check
    params["resolved"]["data"]["layout"] = "uniform"
    (run / "env.json").write_text(json.dumps({}))
    cli._check_scenes_version(run, params)  # the uniform layout never changed


def test_a_run_made_with_an_earlier_default_recipe_is_not_resumed_and_old_configs_read_back_as_made(tmp_path, capsys):
    import json

    from conta_kit import cli
    from conta_kit.config import RunCfg

    made_then = RunCfg.from_params("smoke").to_dict()  # as a run recorded it before the recipe's fields existed
    for section, name in (("data", "object_texture"), ("data", "object_scale"), ("baseline", "aug_shift"),
                          ("data", "train_windows")):
        del made_then[section][name]
    made_then["data"]["layout"] = "prior"
    back = RunCfg.from_dict(made_then)  # read back as it was made, not with today's defaults
    assert (back.data.object_texture, back.data.object_scale, back.baseline.aug_shift) == ("plain", 1.0, 0)
    assert back.data.train_windows == "open" and RunCfg().data.train_windows == "glass"
    run = tmp_path / "20260101-000000_conta"
    run.mkdir()
    params = {"command": "conta", "preset": "smoke", "overrides": {}, "seeds": [0], "resolved": made_then}
    (run / "params.json").write_text(json.dumps(params))
    from conta_kit.data.scenes import SCENES_VERSION

    (run / "env.json").write_text(json.dumps({"scenes_version": SCENES_VERSION}))
    before = sorted(p.name for p in run.iterdir())
    assert cli.main(["conta", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "would mix two recipes" in err and "-p object_texture plain" in err and "-p aug_shift 0" in err
    assert "-p train_windows open" in err
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_shift_as_large_as_the_image_is_refused():
    with pytest.raises(ValueError, match=r"aug_shift \(64\) must be smaller than image_size \(64\)"):
        RunCfg.from_params("smoke", aug_shift=64)
    assert RunCfg.from_params("smoke", aug_shift=63).baseline.aug_shift == 63


def test_setting_differences_names_nested_paths_and_skips_fields_the_record_lacks():
    from conta_kit.config import setting_differences

    today = RunCfg.from_params("smoke").to_dict()
    recorded = RunCfg.from_params("smoke", layout="prior", cls_epochs=5).to_dict()
    del recorded["baseline"]["aug_shift"]  # recorded before the field existed: not a difference
    assert setting_differences(today, recorded) == [("data.layout", "prior", "prior_strip"),
                                                    ("baseline.cls_epochs", 5, 3)]
    assert setting_differences(today, today) == []
