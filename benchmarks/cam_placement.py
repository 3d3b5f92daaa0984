"""Where a CAM's cells are placed on the image, and what it does to the seeds: a finished run's round-0 and oracle
classifiers scored on **val** with each placement of :func:`~conta_kit.cam.compute_cams`; prints JSON.

    .venv/bin/python benchmarks/cam_placement.py runs/<stamp>_oracle_rho0.5 [--seeds 0 1 2] [--jobs 2]
        [--out results.json]
    .venv/bin/python benchmarks/cam_placement.py --markdown results.json [--update FILE --block NAME]

IRNet resizes each view's CAM with ``align_corners=False``, which puts cell i of a stride-s map at the centre
of its s x s block, s i + (s - 1) / 2; the stride-2 layers of the kit's backbones centre its receptive field on
pixel s i (``tests/test_cam.py`` checks both). Per (arm, seed) this script measures where the trained
classifier's cells actually look (the centroid of the input gradient's magnitude of a present class's CAM cell,
minus s i, over interior cells of 16 val images: learnt kernels need not be symmetric) and scores the CAMs with
three placements: ``irnet`` (the pipeline's), ``receptive_field`` (``cell_origin=0``) and ``measured``
(``cell_origin`` = that centroid's offset, the mean of its two axes). Per placement: seed mIoU at the best
threshold of the grid on val, the resolution ceiling's share, where the CAM peaks fall (per class too). The
CAM scales are the run's own unless ``--scales`` says otherwise. Nothing in the run folder is written; the
numbers are deterministic per machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

from _common import BASELINE_ARMS, arm_folder, best_on_val, emit, environment, finished_seeds, mean_std_cell

#: placement name -> how its cell_origin is found (None: IRNet's resize; "rf": 0; "measured": the centroid)
PLACEMENTS = ("irnet", "receptive_field", "measured")


def gradient_centre(model: Any, images: Any, labels: Any, stride: int) -> tuple[float, float]:
    """Mean (rows, columns) offset, in input pixels, of where interior cells of a present class's CAM look (the
    input gradient's |.| centroid) from ``stride * i``."""
    import torch

    x = images.clone().requires_grad_(True)
    cam = torch.einsum("bdhw,cd->bchw", model.features(x), model.head.weight.flatten(1))
    h, w = cam.shape[-2:]
    at_y = torch.arange(x.shape[-2], dtype=torch.float64)
    at_x = torch.arange(x.shape[-1], dtype=torch.float64)
    dy, dx = [], []
    for n in range(len(x)):
        k = int(labels[n].nonzero()[0])
        for i in range(2, h - 2, 2):
            for j in range(2, w - 2, 2):
                (g,) = torch.autograd.grad(cam[n, k, i, j], x, retain_graph=True)
                a = g[n].abs().sum(0).double()
                if float(a.sum()) == 0:
                    continue
                dy.append(float((a.sum(1) * at_y).sum() / a.sum()) - stride * i)
                dx.append(float((a.sum(0) * at_x).sum() / a.sum()) - stride * j)
    return sum(dy) / len(dy), sum(dx) / len(dx)


def score(job: tuple[str, int, str, tuple[float, ...] | None]) -> list[dict[str, Any]]:
    """Every placement of one (run, seed, arm) on one thread."""
    import torch

    from conta_kit.data import collate
    from conta_kit.data.splits import load_splits
    from conta_kit.methods.conta.steps import feature_grid
    from conta_kit.pipeline.evaluate import evaluate_cams
    from conta_kit.pipeline.rounds import load_round_classifier

    run, seed, arm, scales = job
    torch.set_num_threads(1)
    (_, seed_dir, cfg), = finished_seeds(Path(run), [seed])
    if scales:
        cfg = dataclasses.replace(cfg, baseline=dataclasses.replace(cfg.baseline, cam_scales=tuple(scales)))
    val = load_splits(cfg)["val"]
    model = load_round_classifier(cfg, seed_dir.path, BASELINE_ARMS[arm], val.num_classes)[0].eval()
    grid = feature_grid(model, cfg)
    stride = cfg.data.image_size // grid[0]
    batch = collate([val[i] for i in range(16)])
    centre = gradient_centre(model, batch["image"], batch["labels"], stride)
    rows = []
    for placement in PLACEMENTS:
        origin = {"irnet": None, "receptive_field": 0.0, "measured": sum(centre) / 2}[placement]
        t0 = time.perf_counter()
        g = cfg.baseline.threshold_grid
        out = evaluate_cams(model, val, cfg, g, torch.device("cpu"), None, False, grid=grid, cell_origin=origin)
        best, seed_miou, ceiling = best_on_val(out, g)
        loc = out["localisation"]
        rows.append({"arm": arm, "seed": seed, "placement": placement, "cell_origin": origin, "stride": stride,
                     "gradient_centre": list(centre), "cam_scales": list(cfg.baseline.cam_scales),
                     "val_seed_miou": seed_miou, "best_threshold": best, "share_of_ceiling": seed_miou / ceiling,
                     **{k: loc[k] for k in ("cam_peak_on_object", "cam_peak_in_box", "cam_mass_in_object",
                                            "cam_peak_on_object_per_class", "cam_peak_offset_y_per_class")},
                     "classes": list(val.class_names), "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def table(result: dict[str, Any]) -> str:
    """Per arm and placement: mean ± std over seeds, the paired difference from IRNet's placement, then the
    share of CAM peaks on the object per class."""
    from conta_kit.summary import markdown_table

    rows, peaks = [], []
    irnet = {(r["arm"], r["seed"]): r["val_seed_miou"] for r in result["rows"] if r["placement"] == "irnet"}
    classes = result["rows"][0]["classes"]
    for arm in BASELINE_ARMS:
        for placement in PLACEMENTS:
            got = [r for r in result["rows"] if r["arm"] == arm and r["placement"] == placement]
            if not got:
                continue
            origin = "—" if placement == "irnet" else mean_std_cell([r["cell_origin"] for r in got])
            diff = "—" if placement == "irnet" else mean_std_cell(
                [r["val_seed_miou"] - irnet[arm, r["seed"]] for r in got])
            rows.append([arm, placement, origin, str(len(got)), *(mean_std_cell([r[k] for r in got]) for k in (
                "val_seed_miou", "share_of_ceiling", "cam_peak_on_object", "cam_peak_in_box")), diff])
            peaks.append([arm, placement, *(mean_std_cell([r["cam_peak_on_object_per_class"][k] for r in got])
                                            for k in range(len(classes)))])
    centres = [r["gradient_centre"] for r in result["rows"] if r["placement"] == "irnet"]
    stride = result["rows"][0]["stride"]
    return (markdown_table(["arm", "placement", "cell 0 at (px)", "seeds", "val seed mIoU", "share of ceiling",
                            "CAM peak on object", "CAM peak in object's box", "val seed mIoU minus irnet's, paired"],
                           rows)
            + "\nShare of CAM peaks on the object, per class:\n\n"
            + markdown_table(["arm", "placement", *classes], peaks)
            + f"\nStride {stride}: IRNet's placement puts cell 0 at {(stride - 1) / 2:g} px. Where the trained cells "
              f"look (input-gradient centroid minus stride x i, rows / columns, mean over arms and seeds): "
              f"{sum(c[0] for c in centres) / len(centres):+.2f} / {sum(c[1] for c in centres) / len(centres):+.2f}"
              f" px. CAM scales {result['rows'][0]['cam_scales']}; {result['wall_s']:.0f} s in all on "
              f"{result['environment']['cpu_model']}.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="a finished run folder with round_0 (and oracle) classifiers")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--scales", type=float, nargs="+", default=None, help="CAM scales (default: the run's)")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time, one thread each (default 2)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--markdown", default=None, metavar="JSON", help="print the tables of a result file instead")
    ap.add_argument("--update", default=None, help="with --markdown: rewrite this file's --block")
    ap.add_argument("--block", default="cam-placement", help="with --update: the block's name")
    args = ap.parse_args()
    if args.markdown:
        from conta_kit.report.markdown import update_block

        if not Path(args.markdown).is_file():
            raise SystemExit(f"--markdown: {args.markdown} not found")
        text = table(json.loads(Path(args.markdown).read_text()))
        if args.update:
            update_block(args.update, args.block, text)
        print(text)
        return
    if args.run is None:
        raise SystemExit("give a run folder (or --markdown RESULT.json)")
    if args.update:
        raise SystemExit("--update needs --markdown RESULT.json")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    if args.scales and any(not s > 0 for s in args.scales):
        raise SystemExit(f"--scales must be positive, got {args.scales}")
    seeds = finished_seeds(Path(args.run), args.seeds)
    jobs = [(args.run, s, arm, args.scales) for s, seed_dir, _ in seeds for arm in BASELINE_ARMS
            if arm_folder(seed_dir, arm).final_classifier.is_file()]
    if not jobs:
        raise SystemExit(f"{args.run}: no trained round-0 or oracle classifier")
    import torch

    env = environment(torch.device("cpu"))
    t0 = time.perf_counter()
    rows = []
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for part in pool.imap(score, jobs):
            rows += part
            for r in part:
                print(json.dumps({k: r[k] for k in ("arm", "seed", "placement", "cell_origin", "val_seed_miou",
                                                    "cam_peak_on_object")}), flush=True)
    emit({"benchmark": "cam_placement", "environment": env, "run": str(args.run), "rows": rows,
          "wall_s": round(time.perf_counter() - t0, 1)}, args.out)


if __name__ == "__main__":
    main()
