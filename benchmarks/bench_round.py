"""One round 0 of a preset end to end, timed by stage; prints JSON (``gpu.sh`` runs it with the ``gpu`` preset).

    .venv/bin/python benchmarks/bench_round.py [--preset gpu] [--device cuda] [--amp auto] [--seed 0]
        [-p KEY VALUE ...] [--out results.json]

The kit's ``run_round`` (classifier -> CAMs and threshold sweep -> pseudo-masks -> segmenter -> its val score)
in a temporary folder, as ``conta-kit baseline`` runs it. Reported: the device and the precision ``amp``
resolved to, each stage's seconds (``metrics.json[timing]``), images per second of classifier training,
and the round's scores (seed mIoU at the fixed and the val-chosen threshold, pseudo-mask and segmentation
mIoU), so a fast round is also seen to be a sound one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import emit, environment, overrides_from, setup

from conta_kit.config import RunCfg
from conta_kit.data.splits import load_splits
from conta_kit.layout import RoundLayout
from conta_kit.pipeline.round import run_round
from conta_kit.precision import resolve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="gpu")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    p.add_argument("--out")
    a = p.parse_args()
    device = setup(a.threads, a.device)
    overrides = overrides_from(a.p)
    cfg = RunCfg.from_params(a.preset, seed=a.seed, device=str(device), amp=a.amp, **overrides)
    splits = load_splits(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(a.seed)
        t0 = time.perf_counter()
        m = run_round(cfg, RoundLayout(Path(tmp) / "round_0"), splits, progress=False)
        wall = time.perf_counter() - t0
    b = cfg.baseline
    cls_images = len(splits.get("classifier_train", splits["train"])) * b.cls_epochs
    result = {"benchmark": "round0", **environment(device), "preset": a.preset, "overrides": overrides,
              "amp": a.amp, "precision": resolve(device, a.amp), "seed": a.seed,
              "backbone": b.backbone, "segmenter": b.segmenter, "image_size": cfg.data.image_size,
              "num_train": len(splits["train"]), "cls_epochs": b.cls_epochs, "seg_epochs": b.seg_epochs,
              "wall_s": round(wall, 2), "timing_s": {k: round(v, 2) for k, v in m["timing"].items()
                                                       if isinstance(v, float)},
              "classifier_images_per_s": round(cls_images / m["timing"]["classifier_s"], 1),
              "scores": {"seed_miou_fixed": m["seed"]["miou_fixed"], "seed_miou_best": m["seed"]["miou_best"],
                         "pseudo_miou": m["pseudo"]["miou"], "seg_miou": m["segmentation"]["miou"]}}
    emit(result, a.out)


if __name__ == "__main__":
    main()
