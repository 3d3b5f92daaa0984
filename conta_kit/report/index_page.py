"""A run's ``index.html``: the report page a newcomer reads first. The run's settings, the headline numbers of every
arm (baseline, CONTA rounds, CONTA over true ingredients, oracle) with their spread where there are several
seeds, then the story in notebook order: each notebook's conclusion (written from the numbers by
:mod:`conta_kit.report.conclude`) and its key figures with captions, and links to the executed notebooks."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

from ..io import Run, read_json
from ..summary import fmt, mean_std

# (figure stem, caption) in story order; the figures of a run not listed here follow their notebook's, by name
FIGURES = {
    "01": [("01_samples_train", "Train images and their masks: each object stands on its paired context with "
                                "probability rho (the confounder)."),
           ("01_paired_rate_per_class", "Share of each class's objects on its paired context, against rho."),
           ("01_dial", "The dial: configured rho against the pairing measured from the drawn context masks."),
           ("01_gt_prototypes", "CONTA's confounder set built from the ground truth: how different the classes' "
                                "rough location and shape are."),
           ("01_samples_shifted", "The shifted split: the same classes at chance pairing.")],
    "02": [("02_cams_val", "Baseline CAMs on val, object outlined, its paired context dashed: where the CAM "
                           "spills onto the context."),
           ("02_baseline_vs_oracle", "Baseline against the oracle (trained without confounding), same images."),
           ("02_threshold_sweep", "The background threshold, chosen on val."),
           ("02_cam_leakage", "CAM mass on the paired context, per class.")],
    "03": [("03_prototypes_truth_and_rounds", "The prototypes: ground truth beside the ones each round estimated."),
           ("03_attention", "The attention over the prototypes, per image."),
           ("03_m_maps", "M, the map the adjusted classifier receives.")],
    "04": [("04_before_after", "CAM before and after the adjustment, and their difference on one scale."),
           ("04_adjustment_conta_gt", "The adjustment with the true ingredients: CAMs, difference, attention, M."),
           ("04_leakage_per_class", "Context leakage per class, before and after."),
           ("04_explorer_static", "The explorer's views side by side: CAMs, CAM labels at a threshold, ground "
                                  "truth.")],
    "05": [("05_pseudo_masks", "Pseudo-masks against the ground truth."),
           ("05_rounds", "Scores over rounds."), ("05_confusion", "The segmenter's confusion, row-normalised.")],
    "06": [("06_rounds_this_run", "Every round of this run in one figure.")],
    "07": [("07_2011_003271_diningtable", "A real VOC photo: where a pretrained network's CAM of 'dining table' "
                                          "sits, and how much spills onto the chairs and people around it.")],
}
_ROWS = [("seed mIoU (val threshold)", ("seed", "miou_best")), ("seed mIoU (0.15)", ("seed", "miou_fixed")),
         ("pseudo-mask mIoU", ("pseudo", "miou")), ("segmenter mIoU", ("segmentation", "miou")),
         ("CAM leakage", ("seed", "cam_leakage"))]


def markdown_html(text: str) -> str:
    """The little markdown the conclusions use: paragraphs, ``- `` lists, **bold**, `code`, [links](url)."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        items = all(line.startswith("- ") for line in lines)
        parts = [_inline(line[2:] if items else line) for line in lines]
        out.append("<ul>" + "".join(f"<li>{p}</li>" for p in parts) + "</ul>" if items else f"<p>{' '.join(parts)}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    t = html.escape(text, quote=False)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f"<a href='{html.escape(m.group(2))}'>{m.group(1)}</a>", t)


def _fmt(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return fmt(mean_std(vals)) if vals else "—"


def _arms(run: Run) -> tuple[list[tuple[str, list[dict[str, Any]]]], list[int]]:
    """(label, that arm's metrics for every seed) for every arm of the run's seed folders."""
    per_seed = {}
    for s in run.layout.seeds():
        p = run.layout.seed(s).metrics
        conta = read_json(p).get("conta", {}) if p.exists() else {}
        if conta.get("rounds"):
            per_seed[s] = conta
    if not per_seed:
        return [], []
    n_rounds = min(len(c["rounds"]) for c in per_seed.values())
    arms = [("baseline (round 0)" if t == 0 else f"CONTA round {t}", [c["rounds"][t] for c in per_seed.values()])
            for t in range(n_rounds)]
    for key, label in (("conta_gt", "CONTA, true C and x_m"), ("oracle", "oracle (rho = chance)")):
        if all(c.get(key) for c in per_seed.values()):
            arms.append((label, [c[key] for c in per_seed.values()]))
    return arms, sorted(per_seed)


def headline_table(run: Run) -> str:
    arms, seeds = _arms(run)
    if not arms:
        return "<p>No trained rounds in this run.</p>"
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _ in _ROWS)
    rows = "".join(f"<tr><td>{html.escape(label)}</td>" + "".join(
        f"<td>{_fmt([m.get(a, {}).get(b) for m in ms])}</td>" for _, (a, b) in _ROWS) + "</tr>" for label, ms in arms)
    spread = (f"mean ± std over seeds {seeds}" if len(seeds) > 1 else
              f"one seed ({seeds[0]}): no spread; the README's tables, made with `conta-kit conta --seeds 0 1 2`, "
              "carry intervals over seeds")
    return (f"<table><tr><th>arm</th>{head}</tr>{rows}</table><p class='note'>Thresholds chosen on val; scores on "
            f"val. {html.escape(spread)}.</p>")


def build(run: Run, index: list[dict[str, Any]]) -> str:
    """The page's HTML."""
    p = run.params if run.layout.params.exists() else {}
    env = read_json(run.layout.env) if run.layout.env.exists() else {}
    metrics = run.metrics
    conclusions = metrics.get("conclusions", {})
    figures = sorted(f.stem for f in run.figures.glob("*.png"))
    total = sum(float(e.get("seconds") or 0) for e in index)
    over = p.get("overrides") or {}
    settings = (f"preset <b>{html.escape(str(p.get('preset')))}</b>, overrides "
                f"<code>{html.escape(str(over) if over else 'none')}</code>, "
                f"device {html.escape(str(env.get('device')))}"
                f"{' (' + html.escape(str(env.get('gpu'))) + ')' if env.get('gpu') else ''}, commit "
                f"<code>{html.escape(str(env.get('git_commit')))}</code>, {total:.0f} s of notebooks")
    parts = [f"<h1>{html.escape(run.path.name)}</h1><p>{settings}</p>",
             "<h2>Headline numbers</h2>", headline_table(run)]
    status = {e["notebook"]: e for e in index}
    for nb in sorted({*status, *(f"{k}.ipynb" for k in conclusions)}):
        key, prefix = Path(nb).stem, Path(nb).stem[:2]
        e = status.get(nb, {})
        parts.append(f"<h2><a href='{html.escape(nb)}'>{html.escape(key)}</a> <span class='note'>"
                     f"{html.escape(str(e.get('status', '')))} {e.get('seconds', '')} s</span></h2>")
        if key in conclusions:
            parts.append(markdown_html(conclusions[key]))
        listed = [(s, c) for s, c in FIGURES.get(prefix, []) if s in figures]
        rest = [(s, s.replace("_", " ")) for s in figures if s.startswith(prefix + "_") and s not in dict(listed)]
        for stem, caption in listed + rest:
            parts.append(f"<figure><img src='figures/{html.escape(stem)}.png' alt='{html.escape(stem)}'>"
                         f"<figcaption>{html.escape(caption)} <span class='note'>({html.escape(stem)})</span>"
                         "</figcaption></figure>")
    parts.append("<p><a href='metrics.json'>metrics.json</a> · <a href='params.json'>params.json</a> · "
                 "<a href='env.json'>env.json</a></p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}img{max-width:100%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child{text-align:left}.note{color:#666;font-size:90%}figure{margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run.path.name)}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(parts) + "</body></html>")
