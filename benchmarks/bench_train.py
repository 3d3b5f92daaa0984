"""Training throughput through fit(): fp32 against channels-last and AMP, and the data pipeline; prints JSON.

    .venv/bin/python benchmarks/bench_train.py [--classifier tiny] [--segmenter tiny] [--images 256]
        [--size 96] [--batch 32] [--threads 1] [--device auto] [--compile] [--out results.json]

For the classifier (multi-label loss) and the segmenter (cross-entropy on masks), one epoch of
:func:`conta_kit.train.fit` over images rendered beforehand (so only training is timed), from the same
initial weights, best of ``--repeats`` rounds that run the cases in turn:

* ``fp32``: ``amp="off"``; ``channels_last``: plus NHWC memory format;
* ``amp_channels_last`` (CUDA only): bf16 autocast and NHWC; ``compile`` (with ``--compile``): fp32 and
  ``torch.compile``, its compilation in a warm-up epoch that is not timed.

Images/s and, on CUDA, peak allocated memory (``torch.cuda.max_memory_allocated``). The data pipeline:
the confounded-scenes generator's items/s in this process (what one DataLoader worker delivers), against
the fastest training case's images/s: ``generator_vs_train`` > 1 means one worker keeps up, otherwise about
``workers_needed`` workers do; and one epoch of ``fit`` reading the generator directly (``num_workers=0``).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import replace

import torch
from _common import SKIPPED_NO_CUDA, emit, environment, setup, timed
from torch.utils.data import Dataset

from conta_kit.data import ConfoundedScenes, collate
from conta_kit.models import build_classifier, build_segmenter
from conta_kit.train import TrainCfg, fit, multilabel_loss, segmentation_loss


class Cached(Dataset):
    """Rendered items held in memory: training is timed without the generator."""

    def __init__(self, ds: Dataset) -> None:
        self.items = [{k: ds[i][k] for k in ("image", "labels", "mask")} for i in range(len(ds))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def _epoch(model: torch.nn.Module, data: Dataset, loss, cfg: TrainCfg, device: torch.device) -> tuple[float, float]:
    """Seconds for one epoch of fit on ``model``, and the peak CUDA memory in MiB (NaN on a CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t, _ = timed(lambda: fit(model, data, loss, cfg, device=device, collate_fn=collate, progress=False), device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else math.nan
    return t, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classifier", default="tiny")
    p.add_argument("--segmenter", default="tiny")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="add a torch.compile case (slow to compile on a CPU)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    if a.images < a.batch or a.batch < 1 or a.repeats < 1:
        raise SystemExit("--batch and --repeats must be >= 1 and --images >= --batch")
    device = setup(a.threads, a.device)
    scenes = ConfoundedScenes("train", num_images=a.images, image_size=a.size)
    data = Cached(scenes)
    warm = torch.utils.data.Subset(data, range(a.batch * 2))
    torch.manual_seed(0)
    models = {"classifier": (build_classifier(a.classifier, scenes.num_classes), multilabel_loss),
              "segmenter": (build_segmenter(a.segmenter, scenes.num_classes), segmentation_loss)}
    base = TrainCfg(epochs=1, batch_size=a.batch, lr=0.01, amp="off")
    cases = {"fp32": base, "channels_last": replace(base, channels_last=True)}
    if device.type == "cuda":
        cases["amp_channels_last"] = replace(base, channels_last=True, amp="bf16")
    if a.compile:
        cases["compile"] = replace(base, compile=True)
    result = {"benchmark": "training_throughput", **environment(device), "images": a.images, "image_size": a.size,
              "batch": a.batch, "repeats": a.repeats}
    best_rate = {}
    for name, (model, loss) in models.items():
        nets = {case: copy.deepcopy(model) for case in cases}  # same initial weights; each case trains its own
        for case, cfg in cases.items():  # warm-up, not timed: kernels, allocator, compilation
            fit(nets[case], warm, loss, cfg, device=device, collate_fn=collate, progress=False)
        times = {case: [] for case in cases}
        peaks = {case: math.nan for case in cases}
        for _ in range(a.repeats):
            for case, cfg in cases.items():
                t, peaks[case] = _epoch(nets[case], data, loss, cfg, device)
                times[case].append(round(t, 4))
        entry = {"model": a.classifier if name == "classifier" else a.segmenter}
        for case in cases:
            rate = a.images / min(times[case])
            entry[case] = {"images_per_s": round(rate, 2), "times_s": times[case],
                           "peak_memory_mib": None if math.isnan(peaks[case]) else round(peaks[case], 1)}
        for case in cases:
            if case != "fp32":
                entry[case]["speedup_vs_fp32"] = round(entry[case]["images_per_s"] / entry["fp32"]["images_per_s"], 3)
        if device.type != "cuda":
            entry["amp_channels_last"] = {"skipped": SKIPPED_NO_CUDA}
        if not a.compile:
            entry["compile"] = {"skipped": "not requested (--compile)"}
        best_rate[name] = max(entry[case]["images_per_s"] for case in cases)
        result[name] = entry
    gen = ConfoundedScenes("train", num_images=a.images * 2, image_size=a.size)
    gen[0]  # texture cache outside the timing
    t0 = time.perf_counter()
    for i in range(a.images, 2 * a.images):  # fresh indices
        gen[i]
    gen_rate = a.images / (time.perf_counter() - t0)
    t, _ = _epoch(copy.deepcopy(models["classifier"][0]), scenes, multilabel_loss, base, device)
    result["data_pipeline"] = {
        "generator_items_per_s": round(gen_rate, 1),
        **{f"{name}_best_train_images_per_s": rate for name, rate in best_rate.items()},
        **{f"generator_vs_{name}_train": round(gen_rate / rate, 3) for name, rate in best_rate.items()},
        "workers_needed": max(1, math.ceil(max(best_rate.values()) / gen_rate)),
        "classifier_fp32_fit_on_generator_images_per_s": round(a.images / t, 2),
        "classifier_fp32_fit_on_cached_images_per_s": result["classifier"]["fp32"]["images_per_s"],
    }
    emit(result, a.out)


if __name__ == "__main__":
    main()
