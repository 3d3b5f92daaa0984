"""The smoke preset's numbers, as the behaviour-preservation check compares them.

``python tests/smoke_reference.py OUT.json`` runs the CONTA loop (round 0 = the baseline, round 1 =
CONTA) and the same loop with W-OoD fine-tuning on the smoke preset, seed 0, and writes every metric
except the ones that measure time or name the machine. ``tests/data/smoke_reference.json`` was made
this way before the package's layout changed; ``test_reference.py`` makes it again and compares.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from conta_kit import RunCfg, run_conta
from conta_kit.io import Run, to_jsonable

# The smoke preset and data layout as they were when the reference was made (the preset has grown since);
# name -> overrides of today's smoke preset that give exactly those runs.
THEN = {"layout": "uniform", "image_size": 64, "num_train": 96, "num_val": 48, "num_shifted": 48, "num_ood": 48,
        "cls_epochs": 3, "cls_lr": 0.1, "seg_epochs": 2, "seg_lr": 0.1, "cam_scales": (1.0, 0.5), "cls_batch_size": 16,
        "seg_batch_size": 16, "threshold_grid": (0.1, 0.2, 0.3), "rounds": 1, "ft_epochs": 1, "num_pool": 48, "k": 8,
        "oracle": False, "gt_arm": False, "fusion": "last", "fusion_init": "zero", "attn_init": "official",
        "m_scale": "paper", "object_texture": "plain", "object_scale": 1.0, "aug_shift": 0,
        "train_windows": "open"}
CASES = {"conta": THEN, "conta_wood": {**THEN, "finetune": "wood"}}
VOLATILE = {"timing", "seconds", "device", "time_s", "elapsed_s"}  # keys that measure time or name the machine


def strip(obj: Any) -> Any:
    """``obj`` without the volatile keys, at any depth."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def smoke_numbers(root: str | Path) -> dict[str, Any]:
    """{case: rounds' metrics} of every case, run into folders under ``root``."""
    torch.set_num_threads(2)
    out = {}
    for name, overrides in CASES.items():
        cfg = RunCfg.from_params(preset="smoke", device="cpu", **overrides)
        run = Run.create(name, root)
        out[name] = strip(json.loads(json.dumps(to_jsonable(run_conta(cfg, run, progress=False)))))
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        numbers = smoke_numbers(tmp)
    Path(sys.argv[1]).write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
