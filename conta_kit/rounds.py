"""The CONTA loop: rounds 0..T (round 0 = the baseline), resumable, and repeated over seeds.

    run folder/
      round_0/ checkpoints/{classifier,segmenter}/last.pt  artifacts/pseudo_masks.pt
               x_m.pt (split -> (N, H, W) uint8)  confounders.pt (C, P(c))  metrics.json (round done)
      round_1/ ... artifacts/attention.pt (alpha per training image)
      metrics.json ["conta"]["rounds"][t]

With several seeds each seed gets ``seed_<s>/`` (a run folder as above) and the parent's metrics.json
gets ``summary``: mean, std and values over seeds of the headline numbers for every round.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .config import RunCfg, WOoDConfig
from .conta import ConfounderSet
from .io import Run, read_json, to_jsonable, write_json
from .pipeline import load_splits, run_round

log = logging.getLogger(__name__)

# name in the summary -> path in a round's metrics
HEADLINE = {
    "seed_miou_fixed": ("seed", "miou_fixed"), "seed_miou_best": ("seed", "miou_best"),
    "seed_bf_fixed": ("seed", "bf_fixed"), "cam_leakage": ("seed", "cam_leakage"),
    "seed_miou_fixed_without_m": ("seed", "without_m", "miou_fixed"),
    "seed_miou_best_without_m": ("seed", "without_m", "miou_at_best_threshold"),
    "cam_leakage_without_m": ("seed", "without_m", "cam_leakage"),
    "pseudo_miou": ("pseudo", "miou"), "pseudo_mask_leakage": ("pseudo", "mask_leakage"),
    "seg_miou": ("segmentation", "miou"), "seg_bf": ("segmentation", "bf"),
    "seg_mask_leakage": ("segmentation", "mask_leakage"),
    "val_map": ("classifier", "val_map"), "shifted_map": ("classifier", "shifted_map"),
    "context_reliance": ("classifier", "context_reliance"),
    "logit_share_from_m": ("m", "logit_share_from_m"), "attention_entropy": ("m", "attention", "entropy"),
    "seed_precision_fixed": ("seed", "mean_precision_fixed"), "seed_recall_fixed": ("seed", "mean_recall_fixed"),
    "ood_fp_rate": ("ood", "hard", "fp_rate"), "ood_fp_rate_random": ("ood", "random", "fp_rate"),
    "ood_mean_max_prob": ("ood", "hard", "mean_max_prob"),
    "total_s": ("timing", "total_s"),
}


def _get(d: dict[str, Any], path: tuple[str, ...]) -> float | None:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, int | float) else None


def _round0_key(cfg: RunCfg) -> dict[str, Any]:
    d = cfg.to_dict()
    return {k: d[k] for k in ("seed", "data_source", "data_root", "data", "baseline", "wood")}


def _differences(ours: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """Paths where two settings dicts differ; a field ``theirs`` lacks (added to the kit since) is skipped."""
    out = []
    for k, v in ours.items():
        if k not in theirs:
            continue
        if isinstance(v, dict) and isinstance(theirs[k], dict):
            out += _differences(v, theirs[k], f"{prefix}{k}.")
        elif v != theirs[k]:
            out.append(f"{prefix}{k}: {theirs[k]!r} there, {v!r} here")
    return out


def _check_round0(cfg: RunCfg, src_round: Path, params: Path) -> None:
    """Raise unless ``src_round`` is a finished round 0 made with ``cfg``'s seed, data and baseline settings
    (as recorded in ``params``)."""
    if not (src_round / "metrics.json").exists():
        raise FileNotFoundError(f"{src_round} holds no finished round 0 (metrics.json missing)")
    theirs = read_json(params).get("resolved") if params.exists() else None
    if theirs is None:
        raise ValueError(f"{params} does not record the settings round 0 in {src_round} was made with")
    theirs = {**theirs, "wood": {**WOoDConfig().__dict__, **theirs.get("wood", {})}}  # made before W-OoD: off
    differ = _differences(json.loads(json.dumps(to_jsonable(_round0_key(cfg)))), theirs)
    if differ:
        raise ValueError(f"round 0 in {src_round} was made with other settings than this run: {differ} "
                         f"(see {params})")


def check_round0_source(cfg: RunCfg, round0_from: str | Path, seeds: list[int]) -> None:
    """Raise (before anything is made) unless ``round0_from/seed_<s>/round_0`` is finished for every seed
    and was made with the same seed, data and baseline settings."""
    for s in seeds:
        src = Path(round0_from) / f"seed_{s}"
        _check_round0(replace(cfg, seed=s), src / "round_0", src / "params.json")


def reuse_round0(cfg: RunCfg, run: Run, source: str | Path, splits: dict[str, Any], progress: bool) -> None:
    """Copy a finished round 0 (the baseline does not depend on CONTA's options) from another seed folder
    and rebuild x_m and C from its segmenter with this run's options. Refuses a different seed/data/baseline.
    """
    source = Path(source)
    src_round = source / "round_0" if (source / "round_0").is_dir() else source
    _check_round0(cfg, src_round, source.parent / "params.json" if src_round == source else source / "params.json")
    dst = run.path / "round_0"
    if dst.exists():
        raise ValueError(f"{dst} exists already; not overwriting it")
    tmp = run.path / ".round_0.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src_round, tmp, ignore=shutil.ignore_patterns("x_m.pt", "confounders.pt", "metrics.json"))
    from .config import resolve_device
    from .models import build_classifier, build_segmenter, load_checkpoint
    from .pipeline import build_next_round, feature_grid

    b, device = cfg.baseline, torch.device(resolve_device(cfg.device))
    seg = build_segmenter(b.segmenter, splits["train"].num_classes)
    load_checkpoint(seg, tmp / "checkpoints" / "segmenter" / "last.pt")
    grid = feature_grid(build_classifier(b.backbone, splits["train"].num_classes), cfg)
    build_next_round(cfg, seg.to(device), splits, tmp, device, progress, grid=grid)
    shutil.copy2(src_round / "metrics.json", tmp / "metrics.json")
    tmp.rename(dst)
    log.info("round 0 reused from %s (x_m and C rebuilt with this run's options)", src_round)


def run_conta(cfg: RunCfg, run: Run, *, progress: bool = True,
              round0_from: str | Path | None = None) -> list[dict[str, Any]]:
    """Rounds 0..``cfg.conta.rounds`` into ``run``; a stopped run continues where it stopped.

    A round whose ``round_t/metrics.json`` exists is done and is read back; an unfinished round resumes
    its training from the last epoch checkpoint (the data order and initialisation are seeded, so the
    result is the same as an uninterrupted run). ``round0_from`` (a seed folder or its ``round_0``) reuses
    a finished baseline of the same seed and settings, e.g. for ablations of CONTA's options.
    """
    from . import distributed

    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg)
    if distributed.is_distributed():  # torchrun: every rank trains (DDP in fit), rank 0 alone writes
        if round0_from is not None:
            raise ValueError("round0_from is not supported with several processes; run it in one process")
        progress = progress and distributed.rank() == 0
    if round0_from is not None and not (run.path / "round_0" / "metrics.json").exists():
        reuse_round0(cfg, run, round0_from, splits, progress)
    rounds: list[dict[str, Any]] = []
    conf, x_m = None, None
    last = cfg.conta.rounds
    for t in range(last + 1):
        root = run.path / f"round_{t}"
        done = root / "metrics.json"
        if done.exists():
            m = read_json(done)
            log.info("round %d already done (%s)", t, done)
        else:
            root.mkdir(exist_ok=True)
            m = run_round(cfg, root, splits, progress=progress, resume=True, confounders=conf, x_m=x_m,
                          next_round=t < last, round_index=t)
            write_json(done, m)
        rounds.append(m)
        run.log_metrics("conta", {"rounds": rounds, "settings": cfg.to_dict()["conta"]})
        distributed.barrier()  # the other ranks read what rank 0 wrote (C, x_m) only after it is there
        if t < last:
            conf = ConfounderSet.load(root / "confounders.pt")
            x_m = torch.load(root / "x_m.pt", map_location="cpu", weights_only=True)
    return rounds


def mean_std(vals: list[float]) -> dict[str, Any]:
    """``{"mean", "std" (sample, ddof 1; NaN for one value), "values"}`` of a non-empty list."""
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
    return {"mean": mean, "std": std, "values": vals}


def summarize(per_seed: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Mean, std (sample, ddof 1) and values over seeds for every headline number of every round."""
    n_rounds = min(len(r) for r in per_seed.values())
    out = []
    for t in range(n_rounds):
        row: dict[str, Any] = {"round": t}
        for name, path in HEADLINE.items():
            vals = [_get(per_seed[s][t], path) for s in sorted(per_seed)]
            vals = [v for v in vals if v is not None and not math.isnan(v)]
            if vals:
                row[name] = mean_std(vals)
        out.append(row)
    return {"seeds": sorted(per_seed), "rounds": out}


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
    progress bars there). ``on_done`` is called after each task, in task order.
    """
    out: list[list[dict[str, Any]]] = []
    if jobs <= 1:
        for c, path, r0 in tasks:
            out.append(run_conta(c, Run(path), progress=progress, round0_from=r0))
            if on_done is not None:
                on_done()
        return out
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
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
    src = {s: str(Path(round0_from) / f"seed_{s}") for s in seeds} if round0_from is not None else {}
    results = run_jobs([(replace(cfg, seed=s), paths[s], src.get(s)) for s in seeds], jobs, progress=progress)
    summary = summarize(dict(zip(seeds, results)))
    run.log_metrics("summary", summary)
    return summary


def _fmt(mean: float, std: float) -> str:
    if mean != 0 and abs(mean) < 0.01:  # small diagnostics (the logit share of M) keep their digits
        return f"{mean:.1e} ± {std:.1e}"
    return f"{mean:.3f} ± {std:.3f}"


def summary_table(summary: dict[str, Any], names: tuple[str, ...] = ("seed_miou_fixed", "seed_miou_best",
                  "pseudo_miou", "seg_miou", "seed_bf_fixed", "cam_leakage", "context_reliance")) -> str:
    """A markdown table (rounds x metrics, mean ± std) of :func:`summarize`'s output."""
    head = "| round | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    rows = []
    for r in summary["rounds"]:
        cells = [_fmt(r[n]["mean"], r[n]["std"]) if n in r else "—" for n in names]
        rows.append(f"| {r['round']} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def load_summary(run_dir: str | Path, partial: bool = False) -> dict[str, Any]:
    """``summary`` from a run folder's metrics.json (written by :func:`run_seeds` when every seed is done).

    ``partial=True`` summarises a run still in progress from its seed folders, over the rounds that every
    seed has finished (marked ``"partial": True``)."""
    run = Run(run_dir)
    m = run.metrics
    if "summary" in m:
        return m["summary"]
    if partial:
        per_seed = {}
        for d in sorted(run.path.glob("seed_*")):
            rounds = Run(d).metrics.get("conta", {}).get("rounds", [])
            if rounds:
                per_seed[int(d.name.split("_")[1])] = rounds
        if per_seed:
            return {**summarize(per_seed), "partial": True}
    raise ValueError(f"{run_dir}/metrics.json has no 'summary' (run `conta-kit conta --seeds ...` first)")


def load_round_classifier(cfg: RunCfg, seed_dir: str | Path, round_index: int,
                          num_classes: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor] | None]:
    """The trained classifier of a round (a plain classifier for round 0, else a ContaClassifier built with
    the previous round's C) and the x_m maps it takes (split -> (N, H, W) uint8; None for round 0)."""
    from .models import load_checkpoint
    from .pipeline import build_round_classifier, classifier_checkpoint

    seed_dir = Path(seed_dir)
    conf, x_m = None, None
    if round_index > 0:
        prev = seed_dir / f"round_{round_index - 1}"
        conf = ConfounderSet.load(prev / "confounders.pt")
        x_m = torch.load(prev / "x_m.pt", map_location="cpu", weights_only=True)
    model = build_round_classifier(cfg, num_classes, conf, load_pretrained=False)  # weights come from the checkpoint
    load_checkpoint(model, classifier_checkpoint(seed_dir / f"round_{round_index}"))
    return model.eval(), x_m


def seed_run(run: Run, cfg: RunCfg) -> Run:
    """``run/seed_<cfg.seed>/`` as a run folder (made on first use), where :func:`run_conta` writes."""
    p = run.path / f"seed_{cfg.seed}"
    if not (p / "params.json").exists():
        (p / "figures").mkdir(parents=True, exist_ok=True)
        write_json(p / "params.json", {"seed": cfg.seed, "resolved": cfg.to_dict()}, overwrite=True)
        write_json(p / "metrics.json", {}, overwrite=True)
    from . import distributed

    distributed.barrier()
    return Run(p)


def diagnose_prototypes(seed_dir: str | Path, cfg: RunCfg | None = None) -> list[dict[str, Any]]:
    """For every round's confounder set in a seed folder: its quality against the prototypes built the same
    way from the ground-truth training masks (:func:`~conta_kit.conta.prototype_quality`), and how much
    the prototypes differ from each other."""
    from .conta import build_confounder_set, prototype_quality
    from .data import collate

    seed_dir = Path(seed_dir)
    paths = sorted(seed_dir.glob("round_*/confounders.pt"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not paths:
        return []
    cfg = cfg or RunCfg.from_dict(read_json(seed_dir / "params.json")["resolved"])
    train = load_splits(cfg)["train"]
    out = []
    ref_by_grid: dict[tuple[int, int], ConfounderSet] = {}
    pixels = [0, 0]  # object pixels, all pixels of train: counted during the first pass

    def masks() -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for i in range(0, len(train), 256):
            b = collate([train[j] for j in range(i, min(i + 256, len(train)))])
            if not ref_by_grid:
                pixels[0] += int(((b["mask"] > 0) & (b["mask"] != 255)).sum())
                pixels[1] += b["mask"].numel()
            yield b["mask"], b["labels"] if cfg.conta.present == "label" else None

    for path in paths:
        conf = ConfounderSet.load(path)
        if conf.grid not in ref_by_grid:
            ref_by_grid[conf.grid] = build_confounder_set(masks(), train.num_classes, conf.grid,
                                                          prior=cfg.conta.prior, include_bg=cfg.conta.include_bg)
        object_share = pixels[0] / max(pixels[1], 1)
        row = {"round": int(path.parent.name.split("_")[1]), **prototype_quality(conf, ref_by_grid[conf.grid])}
        xm_path = path.parent / "x_m.pt"
        if xm_path.exists():  # how much of the image the segmenter calls foreground, against the truth
            row["x_m_mean_train"] = float(torch.load(xm_path, weights_only=True)["train"].float().mean() / 255)
            row["object_pixel_share_train"] = object_share
        out.append(row)
    return out
