"""Confounder-set building and segmentation metrics over many masks: time and peak memory; prints JSON.

    .venv/bin/python benchmarks/bench_masks.py [--masks 10000] [--size 96] [--classes 20] [--chunk 250]
        [--threads 1] [--out results.json]

Synthetic, seeded masks (one to three rectangles of random classes on background, an ignore border; the
predictions are the targets with each rectangle moved by up to 4 pixels and one in five relabelled) are
generated and streamed in chunks of ``--chunk``. Cases, each in a fresh process so its peak resident
memory is its own (``ru_maxrss`` at the end minus at the start, after imports):

* ``generate``: the chunk generator alone (the floor under the other two);
* ``confounder_set``: :func:`conta_kit.methods.conta.build_confounder_set` on (prediction, labels) chunks, grid
  ``--grid``;
* ``metrics``: ``ConfusionMatrix`` + ``BoundaryFScore`` (tolerance 2) + ``ContextLeakage.update_masks``.

Every case runs over ``--masks`` and over a tenth of them: the same peak for both shows memory stays flat.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from collections.abc import Iterator

import torch
from _common import emit, environment, setup

from conta_kit.methods.conta import build_confounder_set
from conta_kit.metrics import BoundaryFScore, ConfusionMatrix, ContextLeakage


def _boxes(g: torch.Generator, n: int, size: int, classes: int, jitter: int = 0,
           base: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, ...]:
    """(y0, x0, y1, x1, class, used) per image and box, three boxes per image; ``base`` moved by ``jitter``."""
    if base is None:
        y0, x0 = torch.randint(0, size // 2, (2, n, 3), generator=g)
        h, w = torch.randint(size // 8, size // 2, (2, n, 3), generator=g)
        cls = torch.randint(1, classes + 1, (n, 3), generator=g)
        used = torch.arange(3)[None] < torch.randint(1, 4, (n, 1), generator=g)
        return y0, x0, y0 + h, x0 + w, cls, used
    y0, x0, y1, x1, cls, used = base
    dy, dx = torch.randint(-jitter, jitter + 1, (2, n, 3), generator=g)
    relabel = torch.rand(n, 3, generator=g) < 0.2
    cls = torch.where(relabel, torch.randint(1, classes + 1, (n, 3), generator=g), cls)
    return y0 + dy, x0 + dx, y1 + dy, x1 + dx, cls, used


def _paint(boxes: tuple[torch.Tensor, ...], size: int) -> torch.Tensor:
    y0, x0, y1, x1, cls, used = boxes
    yy = torch.arange(size)[None, :, None]
    xx = torch.arange(size)[None, None, :]
    mask = torch.zeros(len(cls), size, size, dtype=torch.int64)
    for k in range(3):
        inside = ((yy >= y0[:, k, None, None]) & (yy < y1[:, k, None, None]) & (xx >= x0[:, k, None, None])
                  & (xx < x1[:, k, None, None]) & used[:, k, None, None])
        mask = torch.where(inside, cls[:, k, None, None], mask)
    return mask


def chunks(total: int, chunk: int, size: int, classes: int) -> Iterator[dict[str, torch.Tensor]]:
    """Seeded chunks: ``target`` and ``pred`` (B, S, S) int64 label ids, ``labels`` (B, C) the classes in
    ``target``, ``context`` (B, S, S) vertical stripes of context ids, -1 on objects."""
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        g = torch.Generator().manual_seed(start)
        true = _boxes(g, n, size, classes)
        target = _paint(true, size)
        pred = _paint(_boxes(g, n, size, classes, jitter=4, base=true), size)
        labels = torch.stack([(target == k).flatten(1).any(1) for k in range(1, classes + 1)], 1).float()
        target[:, 0, :] = 255  # an ignore border row
        stripes = torch.randint(0, classes, (n, 1, 1), generator=g) + torch.arange(size) // max(1, size // 4)
        context = torch.where(target > 0, -1, stripes % classes)  # context ids off the objects, -1 on them
        yield {"target": target, "pred": pred, "labels": labels, "context": context}


def _run(case: str, total: int, a: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(a.threads)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stream = chunks(total, a.chunk, a.size, a.classes)
    t0 = time.perf_counter()
    if case == "generate":
        for _ in stream:
            pass
    elif case == "confounder_set":
        build_confounder_set(((c["pred"], c["labels"]) for c in stream), a.classes, (a.grid, a.grid))
    else:
        cm, bf = ConfusionMatrix(a.classes + 1), BoundaryFScore(a.classes + 1, tolerance=2)
        leak = ContextLeakage(range(a.classes))
        for c in stream:
            cm.update(c["pred"], c["target"])
            bf.update(c["pred"], c["target"])
            leak.update_masks(c["pred"], c["labels"], c["context"])
        cm.compute(), bf.compute(), leak.compute()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": round(seconds, 3), "peak_rss_increase_mib": round((peak - before) / 1024, 1)}


def _child(case: str, total: int, a: argparse.Namespace, queue: mp.Queue) -> None:
    queue.put(_run(case, total, a))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--masks", type=int, default=10_000)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--chunk", type=int, default=250)
    p.add_argument("--grid", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    if a.masks < 10 or a.chunk < 1 or a.size < 16 or a.classes < 1:
        raise SystemExit("--masks >= 10, --chunk >= 1, --size >= 16 and --classes >= 1 please")
    device = setup(a.threads, "cpu")
    ctx = mp.get_context("spawn")
    result = {"benchmark": "masks_confounders_metrics", **environment(device), "masks": a.masks,
              "mask_size": a.size, "classes": a.classes, "chunk": a.chunk, "grid": [a.grid, a.grid]}
    for case in ("generate", "confounder_set", "metrics"):
        entry = {}
        for total in (a.masks // 10, a.masks):
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(case, total, a, queue))
            proc.start()
            entry[str(total)] = queue.get(timeout=3600)
            proc.join()
        full = entry[str(a.masks)]
        entry["masks_per_s"] = round(a.masks / full["seconds"], 1)
        result[case] = entry
    for case in ("confounder_set", "metrics"):
        result[case]["seconds_without_generation"] = round(
            result[case][str(a.masks)]["seconds"] - result["generate"][str(a.masks)]["seconds"], 3)
    emit(result, a.out)


if __name__ == "__main__":
    main()
