"""Rescore a finished run's round-0 and oracle classifiers with today's CAM code; prints JSON.

    .venv/bin/python benchmarks/rescore.py runs/<stamp>_oracle_rho0.5 [--seeds 0 1] [--threads 2] [--out x.json]

A change to the CAM path that is meant to change only float rounding (an order of sums, a cast moved) still
moves a few seeds across their threshold. This script measures by how much, on the classifiers a published
table was made from: for every seed folder and arm (``round_0``, ``oracle``) it loads the trained classifier,
scores its CAMs on val (the threshold) and train exactly as the pipeline's round does
(:func:`conta_kit.pipeline.round.score_seeds`, with the run's recorded config), and reports the stored and the
new seed mIoU, resolution ceiling, CAM peaks on the object, and the share of train pixels on which the new
pseudo-masks equal the stored ones. Nothing in the run folder is written.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _common import BASELINE_ARMS, arm_folder, emit, environment, finished_seeds, setup

from conta_kit.config import RunCfg
from conta_kit.data.scenes import ConfoundedScenes
from conta_kit.data.splits import load_splits
from conta_kit.io import load_torch, read_json
from conta_kit.layout import RunLayout
from conta_kit.pipeline.round import score_seeds
from conta_kit.pipeline.rounds import load_round_classifier


def rescore_arm(cfg: RunCfg, seed_dir: RunLayout, arm: str, splits: dict, device: torch.device
                ) -> dict[str, Any] | None:
    """Stored against new scores of one arm (None where it has no classifier, metrics or pseudo-masks)."""
    rnd = arm_folder(seed_dir, arm)
    stored_pm = rnd.artifact("pseudo_masks.pt")
    if not (rnd.final_classifier.is_file() and stored_pm.is_file() and rnd.metrics.is_file()):
        return None
    train = splits["train"]
    model, _ = load_round_classifier(cfg, seed_dir.path, BASELINE_ARMS[arm], train.num_classes)
    paired = tuple(train.paired_context) if isinstance(train, ConfoundedScenes) else None
    t0 = time.perf_counter()
    seed, evaluation = score_seeds(cfg, model.to(device), splits, device, adjusted=False, paired=paired,
                                   progress=False)
    old = read_json(rnd.metrics)["seed"]
    new_pm, old_pm = evaluation["pseudo"], load_torch(stored_pm)
    if tuple(old_pm.shape) != tuple(new_pm.shape):
        raise SystemExit(f"{stored_pm}: shape {tuple(old_pm.shape)}, the rescored masks {tuple(new_pm.shape)}")

    def pick(s: dict[str, Any]) -> dict[str, float]:
        return {"miou_best": s["miou_best"], "threshold": s["best_threshold_on_val"],
                "ceiling": s["ceiling"]["miou_best"], "peak_on_object": s["localisation"]["cam_peak_on_object"]}

    return {"stored": pick(old), "new": pick(seed), "seconds": round(time.perf_counter() - t0, 1),
            "pseudo_mask_agreement": float((new_pm == old_pm.to(new_pm.dtype)).double().mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    seeds = finished_seeds(a.run, a.seeds)
    device = setup(a.threads, "cpu")
    rows: dict[str, dict[str, Any]] = {}
    for s, seed_dir, cfg in seeds:
        splits = load_splits(cfg)
        for arm in BASELINE_ARMS:
            if (row := rescore_arm(cfg, seed_dir, arm, splits, device)) is not None:
                rows[f"seed_{s}/{arm}"] = row
    if not rows:
        raise SystemExit(f"{a.run}: no arm with a classifier checkpoint and stored pseudo-masks")
    diffs = [r["new"]["miou_best"] - r["stored"]["miou_best"] for r in rows.values()]
    agree = [r["pseudo_mask_agreement"] for r in rows.values()]
    result = {"benchmark": "rescore", "run": str(a.run), **environment(device), "arms": rows,
              "miou_best_new_minus_stored": {"mean": statistics.fmean(diffs), "max_abs": max(map(abs, diffs))},
              "pseudo_mask_agreement": {"mean": statistics.fmean(agree), "min": min(agree)}}
    emit(result, a.out)


if __name__ == "__main__":
    main()
