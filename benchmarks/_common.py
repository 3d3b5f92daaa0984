"""Shared bits of the benchmark scripts: argument defaults, the environment block, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from conta_kit.config import RunCfg
from conta_kit.io import read_json, to_jsonable, write_json
from conta_kit.layout import RoundLayout, RunLayout
from conta_kit.precision import cpu_bf16_units

SKIPPED_NO_CUDA = "skipped: no CUDA device"


def setup(threads: int, device: str) -> torch.device:
    """Pin torch to ``threads`` CPU threads and resolve ``device`` ("auto": CUDA when there is one)."""
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device here")
    return torch.device(device)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Where a benchmark ran: device, its name, the CPU model and its bf16 units, threads, torch version;
    results from different machines are told apart by these (the tables print them)."""
    return {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(), "cpu_model": cpu_model(),
            "cpu_bf16_units": cpu_bf16_units(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            # other work on the machine when the benchmark started (1-minute load average; ratios carry over
            # under load better than times do)
            "load_average_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall time of ``fn()`` (CUDA work included) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def emit(result: dict[str, Any], out: str | None) -> None:
    """Print ``result`` as JSON and, with ``out``, write it there atomically."""
    print(json.dumps(to_jsonable(result), indent=2))
    if out:
        write_json(Path(out), result, overwrite=True)


#: the arms of a seed folder whose classifier is a plain one: folder name -> load_round_classifier's round
BASELINE_ARMS: dict[str, int | str] = {"round_0": 0, "oracle": "oracle"}


def arm_folder(seed_dir: RunLayout, arm: str) -> RoundLayout:
    """The round folder of one of :data:`BASELINE_ARMS` in a seed folder."""
    rnd = BASELINE_ARMS[arm]
    return seed_dir.oracle if rnd == "oracle" else seed_dir.round(rnd)


def finished_seeds(run: Path, seeds: list[int] | None = None) -> list[tuple[int, RunLayout, RunCfg]]:
    """(seed, its folder, the config it recorded) for every seed folder of the run folder ``run`` (only
    ``seeds`` when given); SystemExit naming the folder when it is not a run folder or has no such seed."""
    layout = RunLayout(run)
    if not layout.params.is_file():
        raise SystemExit(f"{run}: not a run folder (no params.json)")
    out = [(s, layout.seed(s), RunCfg.from_dict(read_json(layout.seed(s).params)["resolved"]))
           for s in layout.seeds() if layout.seed(s).params.is_file() and (seeds is None or s in seeds)]
    if not out:
        raise SystemExit(f"{run}: no seed folder{' for --seeds ' + str(seeds) if seeds else ''}")
    return out


def overrides_from(pairs: list[list[str]]) -> dict[str, Any]:
    """``-p KEY VALUE`` pairs as typed overrides: ints, floats, true/false/none, else the string; a value with
    commas is a tuple of such values (``cam_scales=1.0,0.5,1.5,2.0``)."""
    def typed(v: str) -> Any:
        if "," in v:
            return tuple(typed(x) for x in v.split(",") if x)
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                continue
        return {"true": True, "false": False, "none": None}.get(v.lower(), v)

    return {k: typed(v) for k, v in pairs}


def mean_std_cell(values: list[float | None]) -> str:
    """A table cell: the mean (± std over seeds when there are several) of the values that exist (a class absent
    from val has no peak share), "—" when none does."""
    from conta_kit.summary import mean_std

    values = [v for v in values if v is not None]
    if not values:
        return "—"
    st = mean_std(values)
    return f"{st['mean']:.3f}" if len(values) == 1 else f"{st['mean']:.3f} ± {st['std']:.3f}"


def best_on_val(evaluation: dict[str, Any], thresholds: tuple[float, ...]) -> tuple[float, float, float]:
    """(threshold, seed mIoU, resolution ceiling) of an ``evaluate_cams`` result on val: the threshold of the grid
    with the best seed mIoU, and the ceiling's best over the same grid."""
    sweep = {t: evaluation["by_threshold"][str(t)]["miou"] for t in thresholds}
    best = max(sweep, key=sweep.get)
    return best, sweep[best], max(evaluation["ceiling_cms"][t].compute()["miou"] for t in thresholds)
