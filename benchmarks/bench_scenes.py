"""Throughput of the confounded-scenes generator on one CPU core; prints JSON.

    .venv/bin/python benchmarks/bench_scenes.py [--images 4000] [--size 96] [--out results.json]

Measures, in one process pinned to one thread, full dataset items (``ds[i]``: render + tensors + labels)
and bare rendering (``ds.render(i)``), each over fresh indices, best of three repeats, for the default
recipe's generator (``DataCfg()``: strip layout, patterned objects) and, side by side, the
earlier one (layout "prior", plain objects). Target from the foundation issue: >= 2,000 96x96 images/s.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _common import emit, environment

from conta_kit.config import DataCfg
from conta_kit.data import ConfoundedScenes
from conta_kit.data.splits import scene_kwargs


def _rate(fn, n: int, offset: int) -> float:
    t0 = time.perf_counter()
    for i in range(offset, offset + n):
        fn(i)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    default = {k: v for k, v in scene_kwargs(DataCfg()).items() if k not in ("image_size", "cooccurrence")}
    recipes = {"default": default, "earlier": {**default, "layout": "prior", "object_texture": "plain",
                                               "object_scale": 1.0}}
    out = {}
    for name, kw in recipes.items():
        ds = ConfoundedScenes("train", num_images=a.images * (2 * a.repeats + 1), image_size=a.size, **kw)
        ds[0]  # build the texture cache outside the timing
        items = max(_rate(ds.__getitem__, a.images, a.images * (2 * r + 1)) for r in range(a.repeats))
        render = max(_rate(ds.render, a.images, a.images * (2 * r + 2)) for r in range(a.repeats))
        out[name] = {"options": kw, "items_per_s": round(items, 1), "render_per_s": round(render, 1),
                     "items_vs_target": round(items / 2000, 2)}
    emit({"benchmark": "confounded_scenes_generation", "environment": environment(torch.device("cpu")),
          "image_size": a.size, "images_per_repeat": a.images, "repeats": a.repeats, "threads": 1,
          **out, "target_items_per_s": 2000}, a.out)


if __name__ == "__main__":
    main()
