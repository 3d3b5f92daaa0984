"""CPU bf16 judged on what users see: round 0 trained and evaluated in fp32 and in bf16, seed by seed; prints JSON.

    .venv/bin/python benchmarks/bench_amp.py [--preset bench] [--seeds 0 1 2] [--threads 2] [--out results.json]

For every seed, round 0 of the pipeline (classifier -> CAMs -> pseudo-masks -> segmenter, the kit's own
``run_round``) runs twice from the same seeded start, once with ``amp="off"`` (fp32) and once with
``amp="bf16"`` (bf16 autocast for training and CAM inference), in this process, one after the other. Reported:

* ``agreement``: share of train pixels on which the two runs' seeds (CAM labels at the fixed threshold) and
  pseudo-masks are equal, per seed; ``inference_only``: the fp32-trained classifier's seeds with its CAMs
  computed in bf16 against fp32 (the part of the disagreement that inference alone causes);
* ``scores``: seed mIoU (fixed and val-chosen threshold), pseudo-mask and segmentation mIoU of each, and the
  bf16 - fp32 difference per seed, mean ± std;
* ``loss``: the largest per-epoch |bf16 - fp32| classifier loss difference against the fp32 loss's spread
  over seeds at the same epoch (noise);
* ``speed``: each stage's seconds and the fp32 / bf16 time ratio of the round and of the classifier;
* ``fp32_rerun`` (with ``--rerun-threads N``): the fp32 round once more on N threads, whose only difference is
  float rounding (the order of sums); its agreement with the first fp32 run is the noise floor that any
  change of rounding meets in SGD training, the yardstick for the bf16 agreement.

The CPU's bf16 units (AMX, AVX512-BF16) are recorded: without them bf16 is emulated and slower than fp32,
and ``amp="auto"`` does not pick it (:mod:`conta_kit.precision`). The judgement the issue asks for:
``agreement >= 0.995`` and every mIoU difference within 0.005 over the seeds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import emit, environment, overrides_from, setup

from conta_kit.cam import compute_cams
from conta_kit.cam.pseudo import foreground_argmax
from conta_kit.config import RunCfg
from conta_kit.data.splits import load_splits
from conta_kit.infer import batches
from conta_kit.io import load_torch
from conta_kit.layout import RoundLayout
from conta_kit.methods.conta.steps import build_round_classifier
from conta_kit.models import fold_batchnorm
from conta_kit.models.inference import load_checkpoint
from conta_kit.pipeline.round import run_round
from conta_kit.precision import cpu_bf16_fast, cpu_bf16_units

PRECISIONS = {"fp32": "off", "bf16": "bf16"}


def _seeds(cfg: RunCfg, model: torch.nn.Module, dataset, amp: str) -> torch.Tensor:
    """CAM labels (N, H, W) uint8 at the fixed threshold, as the pipeline computes its seeds."""
    b, fast, out = cfg.baseline, fold_batchnorm(model), []
    for batch in batches(dataset, b.eval_batch_size, torch.device("cpu")):
        cams = compute_cams(fast, batch["image"], batch["labels"], scales=b.cam_scales, flip=b.cam_flip,
                            channels_last=True, amp=amp)
        score, ids = foreground_argmax(cams, batch["labels"])
        out.append(torch.where(score > b.bg_threshold, ids, torch.zeros_like(ids)).to(torch.uint8))
    return torch.cat(out)


def _classifier(cfg: RunCfg, rnd: RoundLayout, num_classes: int) -> torch.nn.Module:
    model = build_round_classifier(cfg, num_classes)
    load_checkpoint(model, rnd.checkpoint_dir("classifier") / "last.pt")
    return model.eval()


def _ms(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="bench")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="overrides as for conta-kit (ints, floats, true/false/none parsed)")
    p.add_argument("--rerun-threads", type=int, default=None,
                   help="also rerun fp32 on this many threads: the rounding noise floor")
    p.add_argument("--out")
    a = p.parse_args()
    setup(a.threads, "cpu")
    overrides = overrides_from(a.p)
    per_seed, keys = [], ("miou_fixed", "miou_best", "pseudo_miou", "seg_miou")
    with tempfile.TemporaryDirectory() as tmp:
        for s in a.seeds:
            runs, row = {}, {"seed": s}
            arms = dict(PRECISIONS) | ({"fp32_rerun": "off"} if a.rerun_threads else {})
            for name, amp in arms.items():
                torch.set_num_threads(a.rerun_threads if name == "fp32_rerun" else a.threads)
                cfg = RunCfg.from_params(a.preset, seed=s, amp=amp, device="cpu", oracle=False, gt_arm=False,
                                         **overrides)
                splits = load_splits(cfg)
                rnd = RoundLayout(Path(tmp) / f"seed{s}_{name}")
                torch.manual_seed(s)
                t0 = time.perf_counter()
                m = run_round(cfg, rnd, splits, progress=False)
                wall = time.perf_counter() - t0
                runs[name] = (cfg, rnd, splits)
                row[name] = {"miou_fixed": m["seed"]["miou_fixed"], "miou_best": m["seed"]["miou_best"],
                             "pseudo_miou": m["pseudo"]["miou"], "seg_miou": m["segmentation"]["miou"],
                             "loss": [h["loss"] for h in m["classifier"]["history"]],
                             "seconds": {**{k: round(v, 2) for k, v in m["timing"].items()
                                            if isinstance(v, float)}, "wall_s": round(wall, 2)}}
                print(f"seed {s} {name}: seed mIoU {m['seed']['miou_best']:.3f}, {wall:.0f} s", flush=True)
            (cfg32, rnd32, splits), (cfg16, rnd16, _) = runs["fp32"], runs["bf16"]
            train, c = splits["train"], splits["train"].num_classes
            p32, p16 = load_torch(rnd32.artifact("pseudo_masks.pt")), load_torch(rnd16.artifact("pseudo_masks.pt"))
            m32, m16 = _classifier(cfg32, rnd32, c), _classifier(cfg16, rnd16, c)
            s32, s16 = _seeds(cfg32, m32, train, "off"), _seeds(cfg16, m16, train, "bf16")
            s32_in16 = _seeds(cfg32, m32, train, "bf16")
            row["agreement"] = {"seeds": float((s32 == s16).float().mean()),
                                "pseudo_masks": float((p32 == p16).float().mean())}
            if "fp32_rerun" in runs:
                cfg_r, rnd_r, _ = runs["fp32_rerun"]
                s_r = _seeds(cfg_r, _classifier(cfg_r, rnd_r, c), train, "off")
                p_r = load_torch(rnd_r.artifact("pseudo_masks.pt"))
                row["fp32_rerun_agreement"] = {"seeds": float((s32 == s_r).float().mean()),
                                               "pseudo_masks": float((p32 == p_r).float().mean())}
                row["fp32_rerun_diff"] = {k: row["fp32_rerun"][k] - row["fp32"][k] for k in keys}
            row["inference_only"] = {"seeds": float((s32 == s32_in16).float().mean())}
            row["diff"] = {k: row["bf16"][k] - row["fp32"][k] for k in keys}
            row["speedup_fp32_over_bf16"] = {
                "round": row["fp32"]["seconds"]["total_s"] / row["bf16"]["seconds"]["total_s"],
                "classifier": row["fp32"]["seconds"]["classifier_s"] / row["bf16"]["seconds"]["classifier_s"],
                "cams": row["fp32"]["seconds"]["cams_s"] / row["bf16"]["seconds"]["cams_s"],
                "segmenter": row["fp32"]["seconds"]["segmenter_s"] / row["bf16"]["seconds"]["segmenter_s"]}
            per_seed.append(row)
    epochs = len(per_seed[0]["fp32"]["loss"])
    loss_gap = [max(abs(r["bf16"]["loss"][e] - r["fp32"]["loss"][e]) for r in per_seed) for e in range(epochs)]
    loss_noise = [statistics.stdev([r["fp32"]["loss"][e] for r in per_seed]) if len(per_seed) > 1 else 0.0
                  for e in range(epochs)]
    agree = {k: _ms([r["agreement"][k] for r in per_seed]) for k in ("seeds", "pseudo_masks")}
    diffs = {k: _ms([r["diff"][k] for r in per_seed]) for k in keys}
    result = {
        "benchmark": "cpu_bf16_round0", **environment(torch.device("cpu")), "preset": a.preset,
        "overrides": overrides, "seeds": a.seeds, "cpu_bf16_units": cpu_bf16_units(),
        "auto_uses_bf16": cpu_bf16_fast(), "per_seed": per_seed,
        "agreement": agree, "inference_only": _ms([r["inference_only"]["seeds"] for r in per_seed]),
        "diff_bf16_minus_fp32": diffs,
        "loss": {"max_abs_diff_per_epoch": loss_gap, "fp32_std_over_seeds_per_epoch": loss_noise,
                 "within_noise": all(g <= 2 * n for g, n in zip(loss_gap, loss_noise)) if len(per_seed) > 1
                 else None},
        "speedup_fp32_over_bf16": {k: _ms([r["speedup_fp32_over_bf16"][k] for r in per_seed])
                                   for k in ("round", "classifier", "cams", "segmenter")},
        **({"fp32_rerun": {"threads": a.rerun_threads,
                           "agreement": {k: _ms([r["fp32_rerun_agreement"][k] for r in per_seed])
                                         for k in ("seeds", "pseudo_masks")},
                           "diff_minus_fp32": {k: _ms([r["fp32_rerun_diff"][k] for r in per_seed]) for k in keys}}}
           if a.rerun_threads else {}),
        "judgement": {"agreement_ge_0.995": all(v["mean"] >= 0.995 for v in agree.values()),
                      "miou_within_0.005": all(abs(v["mean"]) <= 0.005 for v in diffs.values())},
    }
    emit(result, a.out)


if __name__ == "__main__":
    main()
