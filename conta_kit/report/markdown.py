"""Render results from run folders as markdown, and write them into a marked block of a file (the README).

    python -m conta_kit.report RUN_DIR [--update README.md] [--block conta]
    python -m conta_kit.report --ablations RUN_DIR ... [--round 1] [--seed 0] [--update README.md --block ablations]
    python -m conta_kit.report --oracle-gap RUN_RHO_0.5 RUN_RHO_0.9 ... --update README.md --block oracle-gap
    python -m conta_kit.report --controls RUN CONTROL_RUN ... --update README.md --block conta-controls
    python -m conta_kit.report --sweep SWEEP_DIR --update README.md --block sweep   # figures -> docs/figures/
    python -m conta_kit.report --sweep SWEEP_DIR SWEEP_DIR ... --update README.md --block wood-ablations

The block between ``<!-- results:<block> -->`` and ``<!-- /results:<block> -->`` is replaced with the table
made from RUN_DIR's metrics.json, so every number in the README comes from a run folder.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from PIL import Image

from ..io import Run, atomic_write_bytes, atomic_write_text, read_json
from ..methods.conta.diagnostics import diagnose_prototypes
from ..pipeline.jobs import load_summary
from ..pipeline.sweep import default_detail_rho, load_sweep, sweep_tables
from ..summary import (
    GAP_METRICS,
    fmt,
    markdown_table,
    mean_std,
    metric_value,
    summarize,
    summary_table,
)
from .oracle_gap import difference as _difference
from .oracle_gap import training_precision

TABLE_METRICS = ("seed_miou_fixed", "seed_miou_best", "pseudo_miou", "seg_miou", "seed_bf_fixed", "seg_bf",
                 "cam_leakage", "pseudo_mask_leakage", "context_reliance")
HEALTH = ("ceiling_miou_best", "seed_share_of_ceiling", "cam_mass_in_object", "object_pixel_share",
          "cam_peak_on_object", "cam_peak_in_box", "surround_leakage_paired", "surround_leakage_unpaired",
          "confounding_leakage")
GAPS = tuple(f"gap_{m}" for m in GAP_METRICS)
DIAGNOSTICS = ("seed_miou_fixed_without_m", "cam_leakage_without_m", "logit_share_from_m", "attention_entropy",
               "attention_top_present", "nwgm_gap")


def _provenance(run: Run) -> str:
    params = run.params
    env = read_json(run.layout.env) if run.layout.env.exists() else {}
    seeds = params.get("seeds", [params.get("resolved", {}).get("seed")])
    over = params.get("overrides") or {}
    total, devices = 0.0, set()
    for s in seeds:
        m = Run(run.layout.seed(s).path).metrics if run.layout.seed(s).path.exists() else {}
        for r in m.get("conta", {}).get("rounds", []):
            total += r.get("timing", {}).get("total_s", 0.0)
            devices.add(r.get("device"))
    where = env.get("gpu") or f"{', '.join(sorted(d for d in devices if d))} ({env.get('platform')})"
    return (f"Run folder `{run.path.name}`: preset `{params.get('preset')}`"
            + (f", overrides `{over}`" if over else "") + f", seeds {seeds}, commit `{env.get('git_commit')}`, "
            f"device {where}, training and CAMs in {training_precision(run)}; rounds took {total / 60:.0f} min "
            "of wall time summed over seeds (seeds may run in parallel).")


def prototype_markdown(run_dir: str | Path) -> str:
    """Per round: the confounder set built after it against the one built from ground-truth masks
    (cosine similarity) and how alike its prototypes are (mean pairwise cosine), mean ± std over seeds."""
    run = Run(run_dir)
    per_round: dict[int, dict[str, list[float]]] = {}
    for s in run.layout.seeds():
        for row in diagnose_prototypes(run.layout.seed(s).path):
            d = per_round.setdefault(row["round"], {})
            for k in ("mean_cosine", "within_cosine", "within_cosine_reference", "mean_abs_diff", "x_m_mean_train",
                      "object_pixel_share_train"):
                if k in row:
                    d.setdefault(k, []).append(row[k])
    if not per_round:
        return "(no confounder set in this run)\n"
    header = ["C built after round", "cosine to C from ground truth", "mean abs. difference",
              "pairwise cosine within C", "same, C from ground truth", "x_m mean (train)",
              "object pixel share (train)"]
    keys = ("mean_cosine", "mean_abs_diff", "within_cosine", "within_cosine_reference", "x_m_mean_train",
            "object_pixel_share_train")
    return markdown_table(header, ([str(t), *(fmt(mean_std(d[k]) if k in d else None) for k in keys)]
                                   for t, d in sorted(per_round.items())))


def conta_markdown(run_dir: str | Path, prototypes: bool = True) -> str:
    """Table of rounds x headline metrics (mean ± std over seeds) plus the M and prototype diagnostics, with
    provenance."""
    run = Run(run_dir)
    summary = load_summary(run_dir, partial=True, fresh=True)
    note = " **Partial: the run was still going; rounds every seed had finished.**" if summary.get("partial") else ""
    text = (_provenance(run) + note + "\n\n" + summary_table(summary, TABLE_METRICS)
            + "\nWhat the seeds can reach and where the CAMs fall (resolution ceiling: ground truth pooled to the "
            "feature grid, scored like the seeds; CAM peak on object / in box: share of CAM peaks on the object's "
            "pixels / in its tight box; confounding leakage: CAM mass on the own surround when it is the "
            "paired context minus when unpaired):\n\n" + summary_table(summary, HEALTH))
    if summary.get("oracle"):
        text += ("\nShare of the baseline-to-oracle gap closed, per seed then mean ± std and the 95 % interval of the "
                 "mean (0 = baseline, 1 = oracle; unstable where the oracle does not differ from the baseline):\n\n"
                 + summary_table({"rounds": summary["rounds"], "arms": summary.get("arms", [])}, GAPS, intervals=True))
    text += "\nDiagnostics of the adjusted classifier (rounds >= 1):\n\n" + summary_table(summary, DIAGNOSTICS)
    chance = _top_present_chance(run)
    if chance is not None:
        text += (f"\nChance level of `attention_top_present` (classes per training image / number of classes, on "
                 f"the run's train split, seed {run.params['resolved'].get('seed', 0)}): {chance:.3f}.\n")
    if prototypes:
        text += "\nPrototype quality:\n\n" + prototype_markdown(run_dir)
    return text


def _top_present_chance(run: Run) -> float | None:
    """Mean number of classes per training image over the number of classes: how often a prototype picked at
    random is one of the image's classes (the embedded benchmark's train split, rebuilt from the run's
    settings; None elsewhere)."""
    from ..config import RunCfg
    from ..data.splits import scene_splits

    resolved = run.params.get("resolved")
    if not resolved or resolved.get("data_source", "scenes") != "scenes":
        return None
    cfg = RunCfg.from_dict(resolved)
    train = scene_splits(cfg.data, seed=cfg.seed, splits=("train",))["train"]
    per_image = [float(train[i]["labels"].sum()) for i in range(len(train))]
    return sum(per_image) / len(per_image) / train.num_classes


ABLATION_METRICS = ("seed_miou_fixed", "seed_miou_best", "pseudo_miou", "seg_miou", "cam_leakage",
                    "logit_share_from_m", "attention_entropy")


def ablation_markdown(run_dirs: list[str | Path], round_index: int = 1, seed: int | None = None) -> str:
    """One row per run folder (its ``-p`` overrides name it) at ``round_index``, plus the round-0 baseline
    of the first; mean ± std when a run has several seeds; ``seed`` restricts every run to that seed."""
    rows = []

    def cells(r: dict[str, Any]) -> list[str]:
        return [fmt(r.get(n)) for n in ABLATION_METRICS]

    for i, d in enumerate(run_dirs):
        run = Run(d)
        if seed is not None:
            sd = run.layout.seed(seed).path
            rounds = Run(sd).metrics.get("conta", {}).get("rounds", []) if sd.is_dir() else []
            if not rounds:
                raise ValueError(f"{sd} has no finished round")
            summary = summarize({seed: rounds})
        else:
            summary = load_summary(d, partial=True)
        over = run.params.get("overrides") or {}
        name = ", ".join(f"{k}={v}" for k, v in over.items() if k != "rounds") or "paper defaults"
        by_round = {r["round"]: r for r in summary["rounds"]}
        if i == 0 and 0 in by_round:
            rows.append(["baseline (round 0)", "0", str(summary["seeds"]), *cells(by_round[0])])
        if round_index in by_round:
            rows.append([name, str(round_index), str(summary["seeds"]), *cells(by_round[round_index])])
    folders = ", ".join(f"`{Path(d).name}`" for d in run_dirs)
    return markdown_table(["variant", "round", "seeds", *ABLATION_METRICS], rows) + f"\nRun folders: {folders}\n"


def sweep_markdown(run_dir: str | Path, figure_dir: str | Path | None = None) -> str:
    """The README block of a confounding sweep: provenance and wall time, the headline and per-class figures
    notebook 08 drew (copied into ``figure_dir`` where they exist), and the tables, made here from the
    sweep's own rounds (:func:`~conta_kit.pipeline.sweep.sweep_tables`)."""
    run = Run(run_dir)
    summary = load_sweep(run.path)
    params, env = run.params, read_json(run.layout.env) if run.layout.env.exists() else {}
    over = {**params, **params.get("overrides", {})}  # `conta-kit sweep` puts rhos/seeds/jobs in overrides
    walls = run.metrics.get("sweep_wall_s", [])
    seeds = sorted({c["num_seeds"] for cells in summary["methods"].values() for c in cells.values()})
    lines = [f"Run folder `{run.path.name}`: preset `{params.get('preset')}`, rho {over.get('rhos')}, seeds "
             f"{over.get('seeds')} ({'/'.join(map(str, seeds))} finished per cell), rounds 0-{summary['rounds']}, "
             f"commit `{env.get('git_commit')}`, device {env.get('gpu') or 'cpu'} ({env.get('platform')}, "
             f"{over.get('jobs', 1)} parallel jobs). Wall time {sum(walls) / 60:.1f} min"
             + (f" over {len(walls)} starts" if len(walls) > 1 else "")
             + f"; {summary['compute_s'] / 60:.1f} min of round time summed over all jobs."
             + (" **Partial: some cells are still running.**" if summary.get("partial") else ""), ""]
    if figure_dir is not None:
        figure_dir = Path(figure_dir)
        figure_dir.mkdir(parents=True, exist_ok=True)
        for kind in ("sweep_headline", "sweep_per_class", "sweep_ood_cams"):
            found = sorted(run.figures.glob(f"[0-9][0-9]_{kind}.png"))  # 08_, or 07_ in older sweeps
            if found:
                lines += [copy_figure(found[-1], figure_dir), ""]
    return "\n".join(lines) + "\n" + sweep_tables(summary)


def sweep_ablation_markdown(run_dirs: list[str | Path], rho: float | None = None) -> str:
    """One row per sweep folder (e.g. ``-p pool hard|random|mined``): W-OoD against its run's baseline at
    ``rho`` (default: the rho closest to 0.9), mean ± std over seeds, labelled by the folder's overrides."""
    names = ("seed_miou_fixed", "seed_miou_best", "pseudo_miou", "cam_leakage", "context_reliance", "ood_fp_rate",
             "ood_fp_rate_random")
    rows = []
    for d in run_dirs:
        run = Run(d)
        summary = load_sweep(run.path)
        r = f"{rho if rho is not None else default_detail_rho(summary):g}"
        over = {k: v for k, v in run.params.get("overrides", {}).items() if k not in ("rhos", "seeds", "jobs")}
        label = ", ".join(f"{k}={v}" for k, v in over.items()) or "defaults"
        for method in ("baseline", "W-OoD"):
            cell = summary["methods"].get(method, {}).get(r)
            rows.append([label, method, *(fmt((cell or {}).get(n)) for n in names)])
    return (markdown_table(["variant", "method", *names], rows) + f"\nrho {r}; run folders: "
            + ", ".join(f"`{Path(d).name}`" for d in run_dirs) + "\n")


CONTROL_METRICS = ("seed_miou_best", "pseudo_miou", "seg_miou", "context_reliance", "confounding_leakage",
                   "attention_top_present", "logit_share_from_m")


def controls_markdown(run_dirs: list[str | Path]) -> str:
    """CONTA over ground-truth C and x_m (the ``conta_gt`` arm) against round 0 of the same seeds, one block of
    rows per run folder (its ``-p`` overrides name it: the default, the negative controls), with the oracle
    where the run has it; the difference per seed with its 95 % interval."""
    rows = []
    for d in run_dirs:
        run = Run(d)
        over = {k: v for k, v in (run.params.get("overrides") or {}).items() if k not in ("rounds", "oracle")}
        rho = run.params.get("resolved", {}).get("data", {}).get("cooccurrence")
        name = ", ".join(f"{k}={v}" for k, v in over.items()) or f"default (rho {rho:g})"
        seeds = []
        for s in run.layout.seeds():
            m = Run(run.layout.seed(s).path).metrics.get("conta", {})
            if m.get("rounds") and m.get("conta_gt"):
                seeds.append((m["rounds"][0], m["conta_gt"], m.get("oracle")))
        if not seeds:
            raise ValueError(f"{run.path} has no seed with round 0 and the conta_gt arm finished")
        for metric in CONTROL_METRICS:
            base = [metric_value(b, metric) for b, _, _ in seeds]
            gt = [metric_value(g, metric) for _, g, _ in seeds]
            if any(v is None for v in gt):
                continue
            orc = [metric_value(o, metric) for _, _, o in seeds if o]
            has_base = not any(v is None for v in base)
            orc_cell = fmt(mean_std(orc)) if orc and None not in orc else "—"
            if orc_cell != "—" and len(orc) < len(seeds):
                orc_cell += f" ({len(orc)} seeds)"
            rows.append([name, str(len(seeds)), metric, fmt(mean_std(base)) if has_base else "—",
                         fmt(mean_std(gt)), orc_cell,
                         _difference(base, gt) if has_base else "—"])
    folders = ", ".join(f"`{Path(d).name}`" for d in run_dirs)
    return (markdown_table(["run", "seeds", "metric", "baseline (round 0)", "CONTA, true C and x_m", "oracle",
                            "CONTA true - baseline [95 % interval]"], rows) + f"\nRun folders: {folders}\n")


def update_block(path: str | Path, block: str, text: str) -> None:
    """Replace the marked block in ``path`` (atomically); the markers must exist."""
    path = Path(path)
    src = path.read_text()
    start, end = f"<!-- results:{block} -->", f"<!-- /results:{block} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(src):
        raise ValueError(f"{path} has no block {start} ... {end}")
    atomic_write_text(path, pattern.sub(lambda _: f"{start}\n{text.rstrip()}\n{end}", src), overwrite=True)


def copy_figure(src: Path, figure_dir: str | Path) -> str:
    """Copy a run's figure into ``figure_dir`` as a 256-colour palette PNG (keeps the repository small) and
    return its markdown image line."""
    figure_dir = Path(figure_dir)
    figure_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.open(src).convert("RGB").quantize(256).save(buf, format="PNG", optimize=True)
    atomic_write_bytes(figure_dir / src.name, buf.getvalue(), overwrite=True)
    return f"![{src.stem}]({figure_dir.as_posix()}/{src.name})"
