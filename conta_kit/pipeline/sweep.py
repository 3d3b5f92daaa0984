"""The confounding-strength benchmark: methods x cooccurrence rho x seeds on one pipeline.

Two arms per (rho, seed), each a resumable CONTA run (:func:`~conta_kit.pipeline.rounds.run_conta`):

* ``plain``: every round's classifier gets ``ft_epochs`` extra epochs of the classification loss alone;
  round 0 is the **baseline**, rounds 1..T are **CONTA r1..rT**; beside them the **oracle** (trained at rho =
  chance) and **CONTA (true C, x_m)** (one adjusted round over ground-truth ingredients, the method's ceiling);
* ``wood``: the same extra epochs with W-OoD's terms; round 0 is **W-OoD**, rounds 1..T are
  **CONTA + W-OoD r1..rT**.

So every method has the same backbone, epochs, segmenter and evaluation, and the thresholds are chosen on
``val`` (never on the scored split); checkpoints are the last epoch's (no selection at all).

    sweep folder/
      rho_0.9/plain/seed_0/round_t/...   rho_0.9/wood/seed_0/...
      metrics.json ["sweep"]: methods -> rho -> metric -> {mean, std, values}
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..cam import compute_cams
from ..config import DataCfg, RunCfg
from ..data import collate
from ..data.splits import load_splits
from ..io import Run, RunLayout, read_json
from ..progress import tqdm
from ..summary import (
    GAP_METRICS,
    finite,
    fmt,
    fmt_ci,
    gap_closed,
    markdown_table,
    mean_std,
    metric_value,
    nanmean,
    sweep_methods,
)
from .jobs import run_jobs
from .rounds import load_round_classifier, seed_run

log = logging.getLogger(__name__)

ARMS = ("plain", "wood")
#: what the sweep reports per method and rho (names of :data:`~conta_kit.summary.METRICS`)
SWEEP_METRICS = ("seed_miou_fixed", "seed_miou_best", "pseudo_miou", "seg_miou", "cam_leakage", "seed_bf_fixed",
                 "seed_precision_fixed", "seed_recall_fixed", "context_reliance", "ood_fp_rate", "ood_fp_rate_random",
                 "ceiling_miou_best", "seed_share_of_ceiling", "cam_mass_in_object", "object_pixel_share",
                 "cam_peak_on_object", "cam_peak_in_box", "confounding_leakage")
PER_CLASS = {"precision": ("seed", "per_class_precision_fixed"), "recall": ("seed", "per_class_recall_fixed")}


def arm_cfg(cfg: RunCfg, rho: float, arm: str) -> RunCfg:
    """``cfg`` at cooccurrence ``rho`` with the arm's fine-tuning stage (the oracle runs in the plain arm)."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    return replace(cfg, data=replace(cfg.data, cooccurrence=float(rho)), wood=replace(cfg.wood, finetune=arm),
                   conta=replace(cfg.conta, oracle=cfg.conta.oracle and arm == "plain",  # one oracle per cell
                                 gt_arm=cfg.conta.gt_arm and arm == "plain"))  # and one CONTA on true C, x_m


def _arm_run(root: Path, rho: float, arm: str) -> Run:
    p = RunLayout(root).sweep_arm(rho, arm).path
    p.mkdir(parents=True, exist_ok=True)
    return Run(p)


def check_sweep_args(rhos: list[float], seeds: list[int], jobs: int) -> None:
    """Raise ValueError for rhos outside [0, 1] or repeated, no or repeated seeds, or jobs < 1."""
    if not rhos or len(set(rhos)) != len(rhos) or any(not 0.0 <= r <= 1.0 for r in rhos):
        raise ValueError(f"rhos must be distinct values in [0, 1], got {rhos}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")


def run_sweep(cfg: RunCfg, run: Run, rhos: list[float], seeds: list[int], *, jobs: int = 1,
              progress: bool = True) -> dict[str, Any]:
    """Every (rho, arm, seed) into ``run`` (finished rounds are kept: re-running resumes), then the summary
    into ``run``'s metrics.json ``["sweep"]``. ``jobs`` > 1 runs that many (rho, arm, seed) jobs in
    parallel processes, the CPU threads split between them."""
    check_sweep_args(rhos, seeds, jobs)
    tasks = []
    for rho in rhos:
        for arm in ARMS:
            sub = _arm_run(run.path, rho, arm)
            for s in seeds:
                c = replace(arm_cfg(cfg, rho, arm), seed=s)
                tasks.append((c, str(seed_run(sub, c).path), None))
    bar = tqdm(total=len(tasks), desc="sweep (rho, arm, seed)", disable=not progress)
    run_jobs(tasks, jobs, progress=False, on_done=bar.update)
    bar.close()
    summary = summarize_sweep(run.path)
    run.log_metrics("sweep", summary)
    return summary


def summarize_sweep(root: str | Path) -> dict[str, Any]:
    """Read every finished round under ``root`` and return methods -> rho -> metric -> mean/std/values over
    the seeds that finished it, plus per-class precision/recall (mean over seeds) and the wall time."""
    root = Path(root)
    layout = RunLayout(root)
    rhos = layout.rhos()
    if not rhos:
        raise FileNotFoundError(f"{root} holds no sweep (no rho_* folders)")
    rounds = max((int(p.name.split("_")[1]) for p in root.glob("rho_*/*/seed_*/round_*")
                  if (p / "metrics.json").exists()), default=0)
    table: dict[str, dict[str, Any]] = {}
    seconds = 0.0

    def finished(rho: float, arm: str, t: int | str) -> dict[int, dict[str, Any]]:
        cell_layout = layout.sweep_arm(rho, arm)
        out = {}
        for s in cell_layout.seeds():
            seed = cell_layout.seed(s)
            rnd = seed.oracle if t == "oracle" else seed.conta_gt if t == "conta_gt" else seed.round(t)
            if rnd.done:
                out[s] = read_json(rnd.metrics)
        return out

    for name, (arm, t) in sweep_methods(rounds).items():
        for rho in rhos:
            by_seed = finished(rho, arm, t)
            per_seed = list(by_seed.values())
            if not per_seed:
                continue
            cell: dict[str, Any] = {"num_seeds": len(per_seed)}
            base, oracle = finished(rho, "plain", 0), finished(rho, "plain", "oracle")
            for metric in GAP_METRICS:  # per seed, against that seed's baseline and oracle
                vals = finite(gap_closed(metric_value(m, metric), metric_value(base[s], metric),
                                         metric_value(oracle[s], metric))
                              for s, m in by_seed.items() if s in base and s in oracle)
                if vals:
                    cell[f"gap_{metric}"] = mean_std(vals)
            for metric in SWEEP_METRICS:
                vals = finite(metric_value(m, metric) for m in per_seed)
                if vals:
                    cell[metric] = mean_std(vals)
            for key, path in PER_CLASS.items():
                lists = [m[path[0]][path[1]] for m in per_seed if path[1] in m.get(path[0], {})]
                if lists:
                    cell[f"per_class_{key}"] = [nanmean([row[i] for row in lists]) for i in range(len(lists[0]))]
            table.setdefault(name, {})[f"{rho:g}"] = cell
    for pattern in ("rho_*/*/seed_*/round_*/metrics.json", "rho_*/*/seed_*/oracle/metrics.json",
                    "rho_*/*/seed_*/conta_gt/metrics.json"):
        for f in root.glob(pattern):
            seconds += read_json(f).get("timing", {}).get("total_s", 0.0)
    return {"rhos": rhos, "rounds": rounds, "methods": table, "compute_s": seconds}


def _ordered(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(method, cells) in the order of :func:`methods` (JSON may have sorted the keys)."""
    return [(m, summary["methods"][m]) for m in sweep_methods(summary["rounds"]) if m in summary["methods"]]


def sweep_tables(summary: dict[str, Any], detail_rho: float | None = None) -> str:
    """Markdown: seed mIoU, pseudo-mask mIoU and CAM leakage as methods x rho tables (mean ± std over
    seeds), then every metric at ``detail_rho`` (default: the rho closest to the benchmark's 0.9)."""
    rhos = [f"{r:g}" for r in summary["rhos"]]
    out = []
    for metric, title in (("seed_miou_fixed", "Seed (CAM) mIoU on train, fixed threshold"),
                          ("seed_miou_best", "Seed mIoU, threshold chosen on val"),
                          ("pseudo_miou", "Pseudo-mask mIoU on train"),
                          ("cam_leakage", "CAM leakage onto the paired context (lower is better)"),
                          ("confounding_leakage", "Confounding leakage: CAM mass on the own surround when it is "
                           "the paired context minus when unpaired (lower is better)"),
                          ("gap_seed_miou_best", "Share of the baseline-to-oracle gap closed, seed mIoU at the "
                           "val threshold (0 = baseline, 1 = oracle; mean ± std [95 % interval] over seeds)"),
                          ("ceiling_miou_best", "Resolution ceiling: ground truth pooled to the feature grid, "
                           "scored like the seeds")):
        cell = fmt_ci if metric.startswith("gap_") else fmt  # the gap with its 95 % interval over seeds
        rows = ([name, *(cell((cells.get(r) or {}).get(metric)) for r in rhos)] for name, cells in _ordered(summary))
        out.append(f"**{title}**\n\n" + markdown_table(["method", *(f"rho {r}" for r in rhos)], rows))
    if detail_rho is None:
        detail_rho = default_detail_rho(summary)
    r = f"{detail_rho:g}"
    names = ("seg_miou", "seed_bf_fixed", "seed_precision_fixed", "seed_recall_fixed", "context_reliance",
             "ood_fp_rate", "ood_fp_rate_random", "cam_peak_on_object", "cam_mass_in_object", "object_pixel_share",
             "gap_pseudo_miou", "gap_context_reliance")
    out.append(f"**All metrics at rho {r}** (precision/recall: mean over classes of the seed masks at the fixed "
               "threshold; context reliance: mAP on val minus mAP on shifted; OoD FP: share of held-out "
               "background-only images with a class probability > 0.5)\n\n"
               + markdown_table(["method", *names], ([name, *(fmt((cells.get(r) or {}).get(n)) for n in names)]
                                                      for name, cells in _ordered(summary))))
    return "\n".join(out)


def default_detail_rho(summary: dict[str, Any]) -> float:
    """The rho shown in detail: the one closest to the benchmark's default cooccurrence (0.9)."""
    return min(summary["rhos"], key=lambda r: (abs(r - DataCfg().cooccurrence), -r))


def load_sweep(root: str | Path) -> dict[str, Any]:
    """The sweep summary of a finished sweep folder, or a partial one read from its rounds."""
    m = Run(root).metrics
    return m["sweep"] if "sweep" in m else {**summarize_sweep(root), "partial": True}


def ood_cams(root: str | Path, rho: float, seed: int = 0, n: int = 6, split: str = "ood") -> dict[str, Any]:
    """What the baseline and the W-OoD classifier (round 0 of each arm) see on held-out background-only
    images: per arm the top class, its probability, and its CAM scaled by that probability (a normalised
    CAM alone would look equally hot for a confident and a faint false positive)."""
    out: dict[str, Any] = {}
    for arm, name in (("plain", "baseline"), ("wood", "W-OoD")):
        seed_dir = RunLayout(root).sweep_arm(rho, arm).seed(seed)
        if not seed_dir.round(0).done:
            raise FileNotFoundError(f"{seed_dir.round(0).path} is not finished")
        cfg = RunCfg.from_dict(read_json(seed_dir.params)["resolved"])
        ds = load_splits(cfg)[split]
        batch = collate([ds[i] for i in range(min(n, len(ds)))])
        model, _ = load_round_classifier(cfg, seed_dir.path, 0, ds.num_classes)
        with torch.no_grad():
            probs = torch.sigmoid(model(batch["image"]).float())
        p, top = probs.max(1)
        labels = torch.nn.functional.one_hot(top, ds.num_classes).float()
        cams = compute_cams(model, batch["image"], labels, scales=cfg.baseline.cam_scales, flip=cfg.baseline.cam_flip)
        out["images"], out["class_names"] = batch["image"], ds.class_names
        out[name] = {"cam": cams[torch.arange(len(top)), top] * p[:, None, None], "prob": p, "top": top}
    return out
