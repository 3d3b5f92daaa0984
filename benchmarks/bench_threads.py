"""Both cores: intra-op threads against parallel jobs, measured on the kit's own commands; prints JSON.

    .venv/bin/python benchmarks/bench_threads.py [--preset bench] [--seeds 0 1] [--out results.json]

The workload is what the sweep and a multi-seed CONTA run do: round 0 of ``len(seeds)`` seeds
(``conta-kit conta --preset P --seeds ... -p rounds 0 -p oracle False -p gt_arm False``), into a temporary
runs root, run three ways one after the other:

* ``intra_op``: ``--jobs 1``, the seeds one after the other, each with every core as intra-op threads (what
  ``conta-kit conta`` and the main job do by default);
* ``parallel_jobs``: ``--jobs <cores>``, the seeds in parallel processes with one thread each (the sweep's default);
* ``one_thread``: ``--jobs 1`` with ``OMP_NUM_THREADS=1``, for the intra-op scaling of one job.

Reported: wall seconds of each, ``jobs_over_threads`` (``intra_op`` wall over ``parallel_jobs`` wall; > 1:
parallel jobs finish sooner), the intra-op
speed-up from one thread to all cores, and every seed's seed mIoU in each way (the way of running must not
change a result beyond float rounding: one single-threaded job per core must equal the one-thread way exactly;
the intra-op way may differ in the last digits, since the number of threads can change the order of sums).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import emit, environment

HERE = Path(__file__).resolve().parent


def _run(preset: str, seeds: list[int], jobs: int, root: Path, env: dict[str, str],
         params: list[list[str]]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "conta_kit.cli", "conta", "--preset", preset, "--seeds", *map(str, seeds),
           "--jobs", str(jobs), "-p", "rounds", "0", "-p", "oracle", "False", "-p", "gt_arm", "False",
           *[x for kv in params for x in ("-p", *kv)], "--runs-root", str(root), "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=HERE.parent)
    wall = time.perf_counter() - t0
    (run,) = [p for p in root.iterdir() if p.is_dir()]  # the one run folder this command made
    seeds_miou = {}
    for s in seeds:
        m = json.loads((run / f"seed_{s}" / "round_0" / "metrics.json").read_text())
        seeds_miou[s] = m["seed"]["miou_best"]
    return wall, seeds_miou


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="bench")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="more overrides for every way, as for conta-kit")
    p.add_argument("--out")
    a = p.parse_args()
    cores = os.cpu_count() or 1
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    ways = {"intra_op": (1, base), "parallel_jobs": (min(cores, len(a.seeds)), base),
            "one_thread": (1, {**base, "OMP_NUM_THREADS": "1"})}
    result: dict = {"benchmark": "threads_vs_jobs", **environment(torch.device("cpu")), "preset": a.preset,
                    "seeds": a.seeds, "overrides": dict(map(tuple, a.p))}
    for name, (jobs, env) in ways.items():
        with tempfile.TemporaryDirectory() as tmp:
            wall, miou = _run(a.preset, a.seeds, jobs, Path(tmp), env, a.p)
        result[name] = {"jobs": jobs, "wall_s": round(wall, 1), "seed_miou_best": miou}
        print(f"{name}: {wall:.0f} s", file=sys.stderr, flush=True)
    result["jobs_over_threads"] = round(result["intra_op"]["wall_s"] / result["parallel_jobs"]["wall_s"], 3)
    result["intra_op_speedup"] = round(result["one_thread"]["wall_s"] / result["intra_op"]["wall_s"], 3)
    result["results_equal"] = (result["intra_op"]["seed_miou_best"] == result["parallel_jobs"]["seed_miou_best"]
                               == result["one_thread"]["seed_miou_best"])
    result["jobs_equal_one_thread"] = (result["parallel_jobs"]["seed_miou_best"]
                                       == result["one_thread"]["seed_miou_best"])
    result["better"] = "parallel_jobs" if result["jobs_over_threads"] > 1 else "intra_op"
    emit(result, a.out)


if __name__ == "__main__":
    main()
