"""The CONTA loop: rounds 0..T (round 0 = the baseline), resumable; round 0 reusable across ablations.

    run folder/ (a seed folder: :class:`~conta_kit.io.RunLayout`)
      round_0/ checkpoints/{classifier,segmenter}/last.pt  artifacts/pseudo_masks.pt
               x_m.pt (split -> (N, H, W) uint8)  confounders.pt (C, P(c))  metrics.json (round done)
      round_1/ ... artifacts/attention.pt (alpha per training image)
      metrics.json ["conta"]["rounds"][t]

Several seeds (:func:`~conta_kit.pipeline.jobs.run_seeds`) get ``seed_<s>/`` each, a run folder as above.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..config import RunCfg, WOoDConfig, resolve_device, setting_differences, with_added_fields
from ..data.splits import load_splits, oracle_train
from ..io import RoundLayout, Run, RunLayout, atomic_torch_save, load_torch, read_json, to_jsonable, write_json
from ..methods.conta import ConfounderSet
from ..methods.conta.steps import build_next_round, build_round_classifier, feature_grid, ground_truth_ingredients
from ..models import build_segmenter, load_checkpoint
from .round import run_round

log = logging.getLogger(__name__)


def _round0_key(cfg: RunCfg) -> dict[str, Any]:
    d = cfg.to_dict()
    return {k: d[k] for k in ("seed", "data_source", "data_root", "data", "baseline", "wood")}


def _check_round0(cfg: RunCfg, src_round: Path, params: Path) -> None:
    """Raise unless ``src_round`` is a finished round 0 made with ``cfg``'s seed, data and baseline settings
    (as recorded in ``params``)."""
    if not RoundLayout(src_round).done:
        raise FileNotFoundError(f"{src_round} holds no finished round 0 (metrics.json missing)")
    theirs = read_json(params).get("resolved") if params.exists() else None
    if theirs is None:
        raise ValueError(f"{params} does not record the settings round 0 in {src_round} was made with")
    theirs = {**with_added_fields(theirs), "wood": {**WOoDConfig().__dict__, **theirs.get("wood", {})}}  # made
    # before W-OoD: off; made before the fields of ADDED_FIELDS: what the kit did then
    differ = [f"{path}: {t!r} there, {o!r} here"
              for path, t, o in setting_differences(json.loads(json.dumps(to_jsonable(_round0_key(cfg)))), theirs)]
    if differ:
        raise ValueError(f"round 0 in {src_round} was made with other settings than this run: {differ} "
                         f"(see {params})")


def check_round0_source(cfg: RunCfg, round0_from: str | Path, seeds: list[int]) -> None:
    """Raise (before anything is made) unless ``round0_from/seed_<s>/round_0`` is finished for every seed
    and was made with the same seed, data and baseline settings."""
    for s in seeds:
        src = RunLayout(round0_from).seed(s)
        _check_round0(replace(cfg, seed=s), src.round(0).path, src.params)


def reuse_round0(cfg: RunCfg, run: Run, source: str | Path, splits: dict[str, Any], progress: bool) -> None:
    """Copy a finished round 0 (the baseline does not depend on CONTA's options) from another seed folder
    and rebuild x_m and C from its segmenter with this run's options. Refuses a different seed/data/baseline.
    """
    source = Path(source)
    src_round = RunLayout(source).round(0).path if RunLayout(source).round(0).path.is_dir() else source
    params = RunLayout(source.parent if src_round == source else source).params
    _check_round0(cfg, src_round, params)
    dst = run.layout.round(0).path
    if dst.exists():
        raise ValueError(f"{dst} exists already; not overwriting it")
    tmp = run.path / ".round_0.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src_round, tmp, ignore=shutil.ignore_patterns("x_m.pt", "confounders.pt", "metrics.json"))
    b, device = cfg.baseline, torch.device(resolve_device(cfg.device))
    seg = build_segmenter(b.segmenter, splits["train"].num_classes)
    staged = RoundLayout(tmp)
    load_checkpoint(seg, staged.checkpoint("segmenter"))
    grid = feature_grid(build_round_classifier(cfg, splits["train"].num_classes, load_pretrained=False), cfg)
    build_next_round(cfg, seg.to(device), splits, staged, device, progress, grid=grid)
    shutil.copy2(RoundLayout(src_round).metrics, staged.metrics)
    tmp.rename(dst)
    log.info("round 0 reused from %s (x_m and C rebuilt with this run's options)", src_round)


def run_conta(cfg: RunCfg, run: Run, *, progress: bool = True,
              round0_from: str | Path | None = None) -> list[dict[str, Any]]:
    """Rounds 0..``cfg.conta.rounds`` into ``run``; a stopped run continues where it stopped.

    A round whose ``round_t/metrics.json`` exists is done and is read back; an unfinished round resumes
    its training from the last epoch checkpoint (the data order and initialisation are seeded, so the
    result is the same as an uninterrupted run). ``round0_from`` (a seed folder or its ``round_0``) reuses
    a finished baseline of the same seed and settings, e.g. for ablations of CONTA's options. On the benchmark
    the oracle and CONTA over true ingredients follow the rounds, or train beside them in a second process
    (:class:`ArmsJob`, ``cfg.conta.parallel_arms``) when this process has two or more threads.
    """
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg)
    if distributed.is_distributed():  # torchrun: every rank trains (DDP in fit), rank 0 alone writes
        if round0_from is not None:
            raise ValueError("round0_from is not supported with several processes; run it in one process")
        progress = progress and distributed.rank() == 0
    if round0_from is not None and not run.layout.round(0).done:
        reuse_round0(cfg, run, round0_from, splits, progress)
    arms_job = ArmsJob.start(cfg, run) if ArmsJob.wanted(cfg, run) else None
    try:
        rounds = _rounds(cfg, run, splits, progress, cfg.conta.rounds)
    except BaseException:
        if arms_job is not None:
            arms_job.stop()
        raise
    arms: dict[str, Any] = {}
    if arms_job is not None:
        arms_job.wait()  # the arms' metrics are in their folders now: read back below
    if cfg.conta.oracle and cfg.data_source == "scenes":
        arms["oracle"] = run_oracle(cfg, run, splits, progress)
        run.log_metrics("conta", {"rounds": rounds, **arms, "settings": cfg.to_dict()["conta"]})
        distributed.barrier()
    if cfg.conta.gt_arm and cfg.data_source == "scenes":  # needs no round: its C and x_m are the truth
        arms["conta_gt"] = run_conta_gt(cfg, run, splits, progress)
        run.log_metrics("conta", {"rounds": rounds, **arms, "settings": cfg.to_dict()["conta"]})
        distributed.barrier()
    return rounds


def _rounds(cfg: RunCfg, run: Run, splits: dict[str, Any], progress: bool, last: int) -> list[dict[str, Any]]:
    """Rounds 0..``last`` into ``run`` (each read back when done), the run's ``conta`` metrics kept current."""
    rounds: list[dict[str, Any]] = []
    conf, x_m = None, None
    for t in range(last + 1):
        rnd = run.layout.round(t)
        if rnd.done:
            m = read_json(rnd.metrics)
            log.info("round %d already done (%s)", t, rnd.metrics)
        else:
            rnd.path.mkdir(exist_ok=True)
            m = run_round(cfg, rnd, splits, progress=progress, resume=True, confounders=conf, x_m=x_m,
                          previous=run.layout.round(t - 1) if t else None, next_round=t < last, round_index=t)
            write_json(rnd.metrics, m)
        rounds.append(m)
        run.log_metrics("conta", {"rounds": rounds, "settings": cfg.to_dict()["conta"]})
        distributed.barrier()  # the other ranks read what rank 0 wrote (C, x_m) only after it is there
        if t < last:
            conf = ConfounderSet.load(rnd.confounders)
            x_m = load_torch(rnd.x_m, map_location="cpu")
    return rounds


def die_with_parent(parent: int, every_s: float = 1.0) -> None:
    """In a worker process: a daemon thread that ends the process as soon as ``parent`` is gone (a killed
    kernel or ``conta-kit`` must not leave orphaned workers training)."""
    import threading
    import time

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(every_s)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def _arms_worker(cfg: RunCfg, path: str, names: list[str], threads: int, parent: int) -> None:
    """In the arms' process: the oracle and/or CONTA over true ingredients into their folders of ``path``."""
    die_with_parent(parent)
    torch.set_num_threads(threads)
    # stdout: under papermill the kernel shows it as the notebook's own log, not as warnings
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s seed {cfg.seed} arms %(name)s: %(message)s")
    run, splits = Run(path), load_splits(cfg)
    for name in names:
        (run_oracle if name == "oracle" else run_conta_gt)(cfg, run, splits, False)


class ArmsJob:
    """The oracle and CONTA over true ingredients in a second process while the rounds train in this one, the
    CPU threads split between the two (``ContaCfg.parallel_arms``). The arms write only their own folders; this
    process reads their metrics back once the job has ended."""

    def __init__(self, process: mp.process.BaseProcess, threads_before: int) -> None:
        self.process, self.threads_before = process, threads_before

    @staticmethod
    def pending(cfg: RunCfg, run: Run) -> list[str]:
        if cfg.data_source != "scenes":
            return []
        on = (("oracle", cfg.conta.oracle), ("conta_gt", cfg.conta.gt_arm))
        return [name for name, wanted in on if wanted and not getattr(run.layout, name).done]

    @classmethod
    def wanted(cls, cfg: RunCfg, run: Run) -> bool:
        # this process's threads, not the machine's cores: a seed job of `--jobs 2` already has its one core
        return (cfg.conta.parallel_arms and torch.get_num_threads() >= 2 and not distributed.is_distributed()
                and torch.device(resolve_device(cfg.device)).type == "cpu" and bool(cls.pending(cfg, run)))

    @classmethod
    def start(cls, cfg: RunCfg, run: Run) -> ArmsJob:
        before = torch.get_num_threads()
        theirs = max(1, before // 2)
        names = cls.pending(cfg, run)
        for name in names:
            getattr(run.layout, name).path.mkdir(exist_ok=True)
        proc = mp.get_context("spawn").Process(target=_arms_worker, name="conta-kit-arms", daemon=True,
                                               args=(cfg, str(run.path), names, theirs, os.getpid()))
        proc.start()
        torch.set_num_threads(max(1, before - theirs))
        log.info("training %s in a second process (pid %d, %d thread(s)) beside the rounds (%d thread(s))",
                 " and ".join(names), proc.pid, theirs, torch.get_num_threads())
        return cls(proc, before)

    def wait(self) -> None:
        self.process.join()
        torch.set_num_threads(self.threads_before)
        if self.process.exitcode != 0:
            raise RuntimeError(f"the process training the oracle / true-ingredient arms ended with exit code "
                               f"{self.process.exitcode} (its log is above); run again with --resume to finish it")

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()
        torch.set_num_threads(self.threads_before)


def run_conta_gt(cfg: RunCfg, run: Run, splits: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """CONTA's ceiling into ``run/conta_gt/``: one adjusted round (round 1's recipe, same seed) whose C and x_m
    come from the ground-truth masks, scored on the same splits. Resumable; returns its metrics. Its C is saved
    as ``artifacts/confounders.pt`` and its x_m as ``artifacts/x_m.pt``."""
    rnd = run.layout.conta_gt
    if rnd.done:
        return read_json(rnd.metrics)
    rnd.path.mkdir(exist_ok=True)
    grid = feature_grid(build_round_classifier(cfg, splits["train"].num_classes, None, load_pretrained=False), cfg)
    conf, x_m = ground_truth_ingredients(cfg, splits, grid, progress)
    conf.save(rnd.artifact("confounders.pt"))
    atomic_torch_save(rnd.artifact("x_m.pt"), x_m)
    m = run_round(cfg, rnd, splits, progress=progress, resume=True, confounders=conf, x_m=x_m, round_index=1)
    m["ingredients"] = "ground_truth"
    write_json(rnd.metrics, m)
    return m


def run_oracle(cfg: RunCfg, run: Run, splits: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """The interventional oracle into ``run/oracle/``: round 0's recipe (same network, budget, seed and
    image layouts; W-OoD fine-tuning becomes its plain twin) with the classifier trained on images whose
    contexts are drawn at chance, scored on the same splits as every round. Resumable; returns its metrics."""
    rnd = run.layout.oracle
    if rnd.done:
        return read_json(rnd.metrics)
    rnd.path.mkdir(exist_ok=True)
    ocfg = replace(cfg, wood=replace(cfg.wood, finetune="plain")) if cfg.wood.finetune == "wood" else cfg
    train = oracle_train(cfg)
    m = run_round(ocfg, rnd, {k: v for k, v in splits.items() if k != "wood_pool"}, progress=progress,
                  resume=True, classifier_train=train, round_index=0)
    m["oracle"] = {"train_rho": train.rho}
    write_json(rnd.metrics, m)
    return m


def load_round_classifier(cfg: RunCfg, seed_dir: str | Path, round_index: int | str,
                          num_classes: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor] | None]:
    """The trained classifier of a round (a plain classifier for round 0 and for ``"oracle"``, else a
    ContaClassifier built with the previous round's C, or the ground-truth C for ``"conta_gt"``) and the x_m
    maps it takes (split -> (N, H, W) uint8; None for round 0 and the oracle)."""
    layout = RunLayout(seed_dir)
    conf, x_m = None, None
    if round_index == "oracle":
        model = build_round_classifier(cfg, num_classes, None, load_pretrained=False)
        load_checkpoint(model, layout.oracle.final_classifier)
        return model.eval(), None
    if round_index == "conta_gt":
        gt = layout.conta_gt
        conf = ConfounderSet.load(gt.artifact("confounders.pt"))
        model = build_round_classifier(cfg, num_classes, conf, load_pretrained=False)
        load_checkpoint(model, gt.final_classifier)
        return model.eval(), load_torch(gt.artifact("x_m.pt"), map_location="cpu")
    if round_index > 0:
        prev = layout.round(round_index - 1)
        conf = ConfounderSet.load(prev.confounders)
        x_m = load_torch(prev.x_m, map_location="cpu")
    model = build_round_classifier(cfg, num_classes, conf, load_pretrained=False)  # weights come from the checkpoint
    load_checkpoint(model, layout.round(round_index).final_classifier)
    return model.eval(), x_m


def seed_run(run: Run, cfg: RunCfg) -> Run:
    """``run/seed_<cfg.seed>/`` as a run folder (made on first use), where :func:`run_conta` writes."""
    p = run.layout.seed(cfg.seed)
    if not p.params.exists():
        p.figures.mkdir(parents=True, exist_ok=True)
        write_json(p.params, {"seed": cfg.seed, "resolved": cfg.to_dict()}, overwrite=True)
        write_json(p.metrics, {}, overwrite=True)
    distributed.barrier()
    return Run(p.path)
