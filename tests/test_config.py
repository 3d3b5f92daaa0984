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
