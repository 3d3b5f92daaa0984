"""Several runs of the CONTA loop at once: seeds (or sweep cells) in parallel processes, and the summary over
seeds."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..config import RunCfg
from ..io import Run, RunLayout
from ..summary import summarize
from .rounds import die_with_parent, run_conta, seed_run


def _seed_job(cfg: RunCfg, path: str, progress: bool, threads: int | None,
              round0_from: str | None) -> list[dict[str, Any]]:
    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s seed {cfg.seed} %(name)s: %(message)s")
    return run_conta(cfg, Run(path), progress=progress, round0_from=round0_from)


def run_jobs(tasks: list[tuple[RunCfg, str, str | None]], jobs: int = 1, *, progress: bool = True,
             on_done: Callable[[], None] | None = None) -> list[list[dict[str, Any]]]:
    """:func:`run_conta` for every ``(cfg, seed folder, round0_from)``; the rounds of each, in order.

    ``jobs`` > 1 runs that many at once in spawned processes, the CPU threads split between them (no
    progress bars there); the workers end when this process dies. ``on_done`` is called after each task, in
    task order.
    """
    out: list[list[dict[str, Any]]] = []
    if jobs <= 1:
        for c, path, r0 in tasks:
            out.append(run_conta(c, Run(path), progress=progress, round0_from=r0))
            if on_done is not None:
                on_done()
        return out
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as ex:
        for f in [ex.submit(_seed_job, c, path, False, threads, r0) for c, path, r0 in tasks]:
            out.append(f.result())
            if on_done is not None:
                on_done()
    return out


def run_seeds(cfg: RunCfg, run: Run, seeds: list[int], *, jobs: int = 1, progress: bool = True,
              round0_from: str | Path | None = None) -> dict[str, Any]:
    """:func:`run_conta` for every seed into ``run/seed_<s>/`` and the summary into ``run``'s metrics.json.

    ``jobs`` > 1 runs seeds in parallel processes, the CPU threads split between them. Re-running on the
    same ``run`` resumes every seed. ``round0_from``: a run folder of :func:`run_seeds` whose
    ``seed_<s>/round_0`` is reused (same seed, data and baseline settings).
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    paths = {s: str(seed_run(run, replace(cfg, seed=s)).path) for s in seeds}
    src = {s: str(RunLayout(round0_from).seed(s).path) for s in seeds} if round0_from is not None else {}
    results = run_jobs([(replace(cfg, seed=s), paths[s], src.get(s)) for s in seeds], jobs, progress=progress)
    summary = summarize(dict(zip(seeds, results)), seed_oracles(run), seed_arms(run))
    run.log_metrics("summary", summary)
    return summary


def seed_oracles(run: Run) -> dict[int, dict[str, Any]]:
    """The oracle metrics of every seed folder of ``run`` that has them."""
    return seed_arms(run, ("oracle",)).get("oracle", {})


def seed_arms(run: Run, arms: tuple[str, ...] = ("conta_gt",)) -> dict[str, dict[int, dict[str, Any]]]:
    """Arm -> seed -> metrics of the arms beside the rounds (default ``conta_gt``: CONTA with ground-truth
    ingredients) in every seed folder that has them."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for s in run.layout.seeds():
        conta = Run(run.layout.seed(s).path).metrics.get("conta", {})
        for arm in arms:
            if conta.get(arm):
                out.setdefault(arm, {})[s] = conta[arm]
    return out


def _seed_rounds(run: Run) -> dict[int, list[dict[str, Any]]]:
    """Seed -> the finished rounds' metrics, for every seed folder of ``run`` that has finished one."""
    out = {}
    for s in run.layout.seeds():
        if rounds := Run(run.layout.seed(s).path).metrics.get("conta", {}).get("rounds", []):
            out[s] = rounds
    return out


def load_summary(run_dir: str | Path, partial: bool = False, fresh: bool = False) -> dict[str, Any]:
    """``summary`` from a run folder's metrics.json (written by :func:`run_seeds` when every seed is done).

    ``partial=True`` summarises a run still in progress from its seed folders, over the rounds that every
    seed has finished (marked ``"partial": True``). ``fresh=True`` summarises a finished run again from its seed
    folders with today's code (measures added since the run ended appear; the numbers it had are the same),
    where every seed folder holds the rounds the stored summary has; else the stored one."""
    run = Run(run_dir)
    stored = run.metrics.get("summary")
    if stored is not None and not fresh:
        return stored
    per_seed = _seed_rounds(run) if fresh or partial else {}
    if stored is not None:  # fresh: again only where every seed of the run has the stored summary's rounds
        seeds = run.params.get("seeds") or run.layout.seeds()
        n = len(stored.get("rounds", []))
        if n and all(len(per_seed.get(s, [])) == n for s in seeds):
            return summarize({s: per_seed[s] for s in seeds}, seed_oracles(run), seed_arms(run))
        return stored
    if partial and per_seed:
        return {**summarize(per_seed, seed_oracles(run), seed_arms(run)), "partial": True}
    raise ValueError(f"{run_dir}/metrics.json has no 'summary' (run `conta-kit conta --seeds ...` first)")
