"""Move a run's val scenes down and see where one class's CAM peaks go: with the object, or with the border.

    .venv/bin/python benchmarks/shift_probe.py runs/<stamp>_oracle_rho0.5 --class aeroplane [--shifts 0 12 24 36]
        [--seeds 0 1] [--threads 2] [--out x.json]     # negative shifts move the scene up (for the low classes)

The flyers' band of the benchmark is next to the top edge, and a CNN with zero padding knows how far a cell
is from it. If the aeroplane CAM peaks below the plane because of that edge, moving the whole scene down (the
top rows repeat the first row, the bottom rows fall off) should put more of its peaks on the plane; if the
peaks follow the plane, the cause is in the scene. For every seed folder and arm (``round_0``, ``oracle``)
that has a trained classifier: the val images holding the class, their CAMs computed as a round computes them
(the run's CAM scales and flips, fp32), and per shift the mean offset of the CAM peak below the object's mean
row (fraction of the image height) and the share of peaks on the object. Nothing in the run is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import BASELINE_ARMS, arm_folder, emit, environment, finished_seeds, setup

from conta_kit.cam import compute_cams
from conta_kit.data import collate
from conta_kit.data.splits import load_splits
from conta_kit.pipeline.rounds import load_round_classifier


def shifted(images: torch.Tensor, masks: torch.Tensor, dy: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The scenes moved down by ``dy`` pixels (up for a negative ``dy``): the edge row repeated where the scene
    leaves a gap, the rows that leave the image cut."""
    if dy == 0:
        return images, masks
    h = images.shape[-2]
    pad = (0, 0, dy, 0) if dy > 0 else (0, 0, 0, -dy)
    rows = slice(0, h) if dy > 0 else slice(-dy, h - dy)
    img = F.pad(images, pad, mode="replicate")[..., rows, :]
    mask = F.pad(masks[:, None].float(), pad, mode="replicate")[:, 0, rows].long()
    return img, mask


def peaks(cams: torch.Tensor, obj: torch.Tensor) -> dict[str, Any]:
    """Where the (N, H, W) maps peak against the (N, H, W) object masks (images without the object left out)."""
    keep = obj.flatten(1).any(1)
    n, h, w = cams.shape
    peak = cams.flatten(1).argmax(1)
    rows = torch.arange(h, dtype=torch.float32)[None, :, None]
    mean_row = (obj.float() * rows).sum((1, 2)) / obj.float().sum((1, 2)).clamp(min=1)
    offset = ((peak // w).float() - mean_row) / h
    on = obj.flatten(1)[torch.arange(n), peak]
    return {"images": int(keep.sum()), "peak_below_mean_row": float(offset[keep].mean()),
            "peak_on_object": float(on[keep].float().mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--class", dest="cls", default="aeroplane")
    p.add_argument("--shifts", type=int, nargs="+", default=[0, 12, 24, 36])
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    seeds = finished_seeds(a.run, a.seeds)
    if any(abs(dy) >= seeds[0][2].data.image_size for dy in a.shifts):
        raise SystemExit(f"--shifts: {a.shifts} must lie within the image height {seeds[0][2].data.image_size}")
    device = setup(a.threads, "cpu")
    rows = []
    for s, seed_dir, cfg in seeds:
        val = load_splits(cfg)["val"]
        if a.cls not in val.class_names:
            raise SystemExit(f"--class {a.cls!r}: the run's classes are {list(val.class_names)}")
        k = val.class_names.index(a.cls)
        items = [item for item in (val[i] for i in range(len(val))) if item["labels"][k] > 0]
        if not items:
            continue
        batch = collate(items)
        for arm, rnd in BASELINE_ARMS.items():
            if not arm_folder(seed_dir, arm).final_classifier.is_file():
                continue
            model, _ = load_round_classifier(cfg, seed_dir.path, rnd, val.num_classes)
            for dy in a.shifts:
                img, mask = shifted(batch["image"], batch["mask"], dy)
                cams = compute_cams(model, img, batch["labels"], scales=cfg.baseline.cam_scales,
                                    flip=cfg.baseline.cam_flip)[:, k]
                rows.append({"seed_folder": f"seed_{s}", "arm": arm, "shift": dy, **peaks(cams, mask == k + 1)})
    if not rows:
        raise SystemExit(f"{a.run}: no seed folder with a trained round-0 or oracle classifier and val images "
                         f"holding {a.cls!r}")
    emit({"benchmark": "shift_probe", "run": str(a.run), "class": a.cls, **environment(device), "rows": rows}, a.out)


if __name__ == "__main__":
    main()
