"""The closing cell of every notebook: what its numbers show, written from the run's own metrics (never typed),
against the oracle and with the spread stated, and a link to the next notebook. Each function returns markdown;
:func:`say` records it in ``metrics.json[conclusions]`` (the run's ``index.html`` shows it) and displays it.

    from conta_kit.report import conclude
    conclude.say(run, "02_classifier_cams", conclude.cams(nb))
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..io import Run
from ..summary import markdown_table

SEQUENCE = ("01_data", "02_classifier_cams", "03_prototypes", "04_cams_before_after", "05_pseudo_segmentation",
            "06_report", "07_real_photos")
ONE_SEED = ("One seed: there is no spread to compare against here; `conta-kit conta --seeds 0 1 2` (the README's "
            "tables) gives intervals over seeds.")


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _next(key: str) -> str:
    i = SEQUENCE.index(key) if key in SEQUENCE else -1
    if 0 <= i < len(SEQUENCE) - 1:
        return f"\n\nNext: [{SEQUENCE[i + 1]}]({SEQUENCE[i + 1]}.ipynb)."
    return ""


def say(run: Run, key: str, text: str) -> Any:
    """Record ``text`` as notebook ``key``'s conclusion (with the link to the next notebook) and return it
    for display."""
    text = text.rstrip() + _next(key)
    found = run.metrics.get("conclusions", {})
    run.log_metrics("conclusions", {**found, key: text})
    try:
        from IPython.display import Markdown

        return Markdown(text)
    except ImportError:  # pragma: no cover - notebooks always have IPython
        return text


def _cell(v: Any, digits: int) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return _f(v, digits) if v == 0 or abs(v) >= 10 ** -digits else f"{v:.1e}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x, digits) for x in v) if len(v) <= 4 else f"({len(v)} values)"
    return str(v)


def table(obj: dict[str, Any] | list[dict[str, Any]], digits: int = 3) -> Any:
    """A result as a formatted markdown table (not a raw dict): a dict of numbers (one row), a dict of dicts
    (a row per key) or a list of dicts (a row each); nested dicts beyond that are left out."""
    if isinstance(obj, dict) and not any(isinstance(v, dict) for v in obj.values()):
        rows = [("", obj)]
    elif isinstance(obj, dict):
        rows = [(str(k), v) for k, v in obj.items() if isinstance(v, dict)]
    else:
        rows = [("", r) for r in obj]
    cols = [c for c in dict.fromkeys(k for _, r in rows for k in r) if not any(isinstance(r.get(c), dict)
                                                                               for _, r in rows)]
    named = any(name for name, _ in rows)
    text = markdown_table(([""] if named else []) + cols,
                          (([name] if named else []) + [_cell(r.get(c), digits) for c in cols] for name, r in rows))
    try:
        from IPython.display import Markdown

        return Markdown(text)
    except ImportError:  # pragma: no cover
        return text


def data(metrics: dict[str, Any], rho: float) -> str:
    """01: how strong the confounding is, and whether CONTA's confounder set can tell the classes apart."""
    s = metrics.get("data", {}).get("summary", {})
    if not s:
        return "Label statistics only (a VOC/COCO folder): the confounding cannot be measured without context masks."
    tr, sh = s.get("train", {}), s.get("shifted", {})
    paired = tr.get("paired_rate")
    if paired is not None and paired < rho - 0.005:
        why = (f"below rho: the rate is measured from the context masks, so it counts what was drawn, and a person "
               f"riding a horse (rider rate {_f(tr.get('rider_rate'), 2)}) sits on the horse, not on its own context "
               "(the dial below is measured with riders off)")
    else:
        why = "as configured (measured from the drawn context masks)"
    lines = [f"**The confounding.** In train, {_f(paired)} of the objects stand on their paired context (rho = "
             f"{rho:g} configured), {why}. The `shifted` split breaks the pairing ({_f(sh.get('paired_rate'))} "
             "paired, chance): a classifier that learned the context does worse there."]
    lay = metrics.get("layout", {})
    if lay:
        lines.append(f"**What CONTA can attend to.** The ground-truth prototypes of the {lay.get('layout')} layout "
                     f"have a mean pairwise cosine of {_f(lay.get('prototype_cosine'), 2)} (the uniform layout: "
                     f"{_f(lay.get('prototype_cosine_uniform_layout'), 2)}); the lower it is, the more the classes "
                     "differ in place and shape, and the more an attention over class-wise prototypes has to work "
                     "with.")
        bits = lay.get("patch_shape_bits")
        if bits:
            gone = bits["chance"] < 0.1 * max(bits["train"], 1e-9)
            lines.append(f"**The shape of the context patch** tells {_f(bits['train'], 2)} bits about the class at "
                         f"this rho and {_f(bits['chance'], 2)} bits at chance, on the oracle's kind of data: "
                         + ("the intervention removes it with the texture." if gone else
                            "a class cue that drawing the context at chance does not remove, so the oracle can use "
                            "it too."))
        extent = lay.get("patch_extent_bits")
        if extent:
            kept = extent["chance"] >= 0.1
            lines.append(f"**Its kind and extent together** (where its top edge starts) tell {_f(extent['train'], 2)} "
                         f"bits at this rho and {_f(extent['chance'], 2)} bits at chance: "
                         + ("even at chance the context's geometry names the class, a cue that drawing the context at "
                            "chance does not remove (the oracle can use it too)." if kept else
                            "at chance the context's geometry no longer names the class."))
    return "\n\n".join(lines)


def _seed(m: dict[str, Any]) -> dict[str, Any]:
    return m.get("seed", {})


def cams(history: list[dict[str, Any]], arms: dict[str, dict[str, Any]], names: list[str] | None = None) -> str:
    """02: how good the baseline's CAMs are, and what confounding costs it (against the oracle); with the class
    ``names``, where each class's CAM peak lands."""
    b = _seed(history[0])
    lines = [f"**Baseline CAMs.** Seed mIoU {_f(b.get('miou_fixed'))} at IRNet's fixed threshold "
             f"{b.get('fixed_threshold', 0.15)}, {_f(b.get('miou_best'))} at the threshold chosen on val "
             f"({b.get('best_threshold_on_val')}); that is {_f(b.get('share_of_ceiling'), 2)} of the resolution "
             f"ceiling (the ground truth pooled to the CAM grid). CAM leakage onto the paired context: "
             f"{_f(b.get('cam_leakage'))}."]
    if b.get("best_at_grid_edge"):
        lines.append("Warning: the best threshold sits at the end of the grid; the grid may be too short.")
    loc = b.get("localisation", {})
    if loc:
        lines.append(f"The CAM puts {_f(loc.get('cam_mass_in_object'))} of its mass inside the objects, which cover "
                     f"{_f(loc.get('object_pixel_share'))} of the pixels: "
                     + ("the CAMs localise." if loc.get("cam_mass_in_object", 0) > 2 * loc.get("object_pixel_share", 1)
                        else "the CAMs barely localise (not much above the objects' share); read the comparisons "
                             "below with that in mind."))
        per = loc.get("cam_peak_on_object_per_class")
        if per and names:
            ranked = sorted((v, n) for v, n in zip(per, names) if v == v)  # NaN: class absent
            lines.append("CAM peak on the object, per class: " + ", ".join(f"{n} {_f(v, 2)}" for v, n in ranked)
                         + " (a class whose peak rarely lands on its object is recognised by something else: its "
                           "context, or the shape of the patch it stands on).")
            box = loc.get("cam_peak_in_box_per_class")
            if box:
                between = sorted((b - v, n) for v, b, n in zip(per, box, names)
                                 if v is not None and b is not None and v == v and b - v >= 0.15)[::-1]
                if between:
                    lines.append("Peaks in the object's box but off its pixels (between a thin object's parts: "
                                 "wings, legs, windows), per class: " + ", ".join(f"{n} {_f(d, 2)}" for d, n in between)
                                 + "; those CAMs found the object and peak in its gaps.")
    if "oracle" in arms:
        o = arms["oracle"]
        pairs = [("seed mIoU at the val threshold", _seed(o).get("miou_best"), b.get("miou_best"), True),
                 ("seed mIoU at 0.15", _seed(o).get("miou_fixed"), b.get("miou_fixed"), True),
                 ("pseudo-mask mIoU", o.get("pseudo", {}).get("miou"), history[0].get("pseudo", {}).get("miou"), True),
                 ("CAM leakage", _seed(o).get("cam_leakage"), b.get("cam_leakage"), False)]
        pairs = [(n, ov, bv, up) for n, ov, bv, up in pairs if ov is not None and bv is not None]
        ahead = [n for n, ov, bv, up in pairs if (ov > bv if up else ov < bv)]
        behind = [n for n, _, _, _ in pairs if n not in ahead]
        lines.append("**What confounding costs.** The oracle (the same recipe trained at rho = chance, the generator's "
                     "intervention) against the baseline: " + ", ".join(f"{n} {_f(ov)} vs {_f(bv)}"
                                                                         for n, ov, bv, _ in pairs) + ". "
                     + (f"The oracle is ahead on {', '.join(ahead)}" if ahead else
                        "The oracle is ahead on none of them")
                     + (f" and not on {', '.join(behind)}" if behind else "") + ": a de-confounding method is read on "
                     "the measures where the oracle leads; where it does not, there is no confounding cost to remove.")
    lines.append(ONE_SEED)
    return "\n\n".join(lines)


def _m_line(label: str, m: dict[str, Any]) -> str:
    st = m.get("m", {})
    a = st.get("attention", {})
    if not st:
        return f"- {label}: no adjustment statistics."
    if not st.get("m_max_mean"):
        return (f"- {label}: M is zero on every image (the previous segmenter's masks x_m are empty), so the "
                "adjustment adds nothing to the logits; its CAMs can only repeat round 0's.")
    return (f"- {label}: attention entropy {_f(a.get('entropy'), 2)} (1 = uniform), top prototype one of the image's "
            f"classes for {_f(a.get('top_is_present_class'), 2)} of the images (chance {_f(a.get('chance'), 2)}), M's "
            f"share of the logits {_f(st.get('logit_share_from_m'), 2)}, NWGM gap to the exact backdoor sum "
            f"{_f(st.get('nwgm', {}).get('mean_abs_gap'), 3)}.")


def prototypes(history: list[dict[str, Any]], arms: dict[str, dict[str, Any]], metrics: dict[str, Any]) -> str:
    """03: are the estimated prototypes like the true ones, and does the attention use them?"""
    lines = []
    quality = metrics.get("prototypes", {}).get("quality", [])
    for q in quality:
        lines.append(f"- C after round {q.get('round')}: mean cosine to the ground-truth prototypes "
                     f"{_f(q.get('mean_cosine'), 2)}, mean absolute difference {_f(q.get('mean_abs_diff'))}"
                     + (" (all zero: the segmenter predicted no object, so the prototypes are empty)"
                        if not q.get("mean_cosine") else "") + ".")
    adjusted = [(f"round {m['round']}", m) for m in history[1:]]
    adjusted += [("CONTA over true C and x_m", arms["conta_gt"])] if "conta_gt" in arms else []
    text = "**Prototypes.**\n\n" + ("\n".join(lines) if lines else "- no rounds after round 0 in this run.")
    if adjusted:
        text += "\n\n**Attention and M.**\n\n" + "\n".join(_m_line(label, m) for label, m in adjusted)
    return text + "\n\n" + ONE_SEED


def before_after(history: list[dict[str, Any]], arms: dict[str, dict[str, Any]], story: dict[str, Any]) -> str:
    """04: what the adjustment changed in the CAMs and in the scores, against the oracle."""
    b = _seed(history[0])
    rows = [(f"CONTA round {m['round']}", m) for m in history[1:]]
    rows += [("CONTA over true C and x_m", arms["conta_gt"])] if "conta_gt" in arms else []
    if not rows:
        return "No adjusted classifier in this run (rounds = 0): only the baseline is shown."
    lines = [f"Baseline seed mIoU {_f(b.get('miou_best'))}, leakage {_f(b.get('cam_leakage'))}."]
    for label, m in rows:
        s = _seed(m)
        key = str(m.get("round")) if label.startswith("CONTA round") else "conta_gt"
        change = story.get(key, {}).get("mean_abs_cam_change")
        delta = (s.get("miou_best") or 0) - (b.get("miou_best") or 0)
        lines.append(f"- {label}: seed mIoU {_f(s.get('miou_best'))} ({delta:+.3f}), "
                     f"leakage {_f(s.get('cam_leakage'))}"
                     + (f", mean |CAM change| on these images {_f(change)}" if change is not None else "") + ".")
    if "oracle" in arms:
        o = _seed(arms["oracle"])
        lines.append(f"- oracle (rho = chance): seed mIoU {_f(o.get('miou_best'))}, "
                     f"leakage {_f(o.get('cam_leakage'))}.")
    return "**What changed.** " + lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n\n" + ONE_SEED


def segmentation(history: list[dict[str, Any]], arms: dict[str, dict[str, Any]]) -> str:
    """05: pseudo-masks and the segmenter over rounds."""
    lines = []
    for label, m in [(f"round {h['round']}", h) for h in history] + [(k, v) for k, v in arms.items()]:
        p, s = m.get("pseudo", {}), m.get("segmentation", {})
        lines.append(f"- {label}: pseudo-mask mIoU {_f(p.get('miou'))} over all pixels "
                     f"({_f(p.get('miou_labelled_only'))} on the {_f(p.get('coverage'), 2)} of pixels the "
                     "pseudo-mask labels; the rest is ignored in "
                     f"training), segmenter mIoU on val {_f(s.get('miou'))}.")
    return ("**Pseudo-masks and segmentation.** The confusion matrix is row-normalised (each ground-truth class sums "
            "to 1).\n\n" + "\n".join(lines) + "\n\n" + ONE_SEED)


def report(summary: dict[str, Any]) -> str:
    """06: the rounds in one paragraph."""
    rounds = summary.get("rounds", [])
    if not rounds:
        return "No rounds to report."
    first, last = rounds[0], rounds[-1]

    def mean(r: dict[str, Any], k: str) -> float | None:
        return r.get(k, {}).get("mean")

    return (f"From round {first['round']} to round {last['round']}: seed mIoU {_f(mean(first, 'seed_miou_fixed'))} -> "
            f"{_f(mean(last, 'seed_miou_fixed'))}, pseudo-mask mIoU {_f(mean(first, 'pseudo_miou'))} -> "
            f"{_f(mean(last, 'pseudo_miou'))}, segmentation mIoU {_f(mean(first, 'seg_miou'))} -> "
            f"{_f(mean(last, 'seg_miou'))}, CAM leakage {_f(mean(first, 'cam_leakage'))} -> "
            f"{_f(mean(last, 'cam_leakage'))}. " + (ONE_SEED if len(summary.get("seeds", [])) < 2 else
                                                     "Mean over the seeds above; the table gives the spread.")
            + " The run's `index.html` puts these numbers beside the figures.")


def sweep(summary: dict[str, Any]) -> str:
    """07: the share of the oracle's gap each method closes, per rho, with intervals over seeds."""
    from ..summary import fmt, fmt_ci

    rhos = [f"{r:g}" for r in summary.get("rhos", [])]
    methods = summary.get("methods", {})
    base, oracle = methods.get("baseline", {}), methods.get("oracle", {})
    gaps = [[f"{name}"] + [fmt_ci(cells.get(r, {}).get("gap_seed_miou_best")) for r in rhos]
            for name, cells in methods.items() if name not in ("baseline", "oracle")]
    diff = [["seed mIoU: baseline"] + [fmt(base.get(r, {}).get("seed_miou_best")) for r in rhos],
            ["seed mIoU: oracle"] + [fmt(oracle.get(r, {}).get("seed_miou_best")) for r in rhos]]
    return ("**What the sweep shows.** The baseline against the oracle (trained at rho = chance) at every rho, "
            "mean ± std over seeds:\n\n" + markdown_table(["", *rhos], diff) + "\n\nThe share of the baseline-oracle "
            "gap in seed mIoU each method closes, per seed against that seed's baseline and oracle (0: the baseline, "
            "1: the oracle, below 0: worse than the baseline), mean ± std [95 % interval over seeds]; an interval "
            "that holds 0 is no measurable change, and where the oracle is not ahead of the baseline the share "
            "is not meaningful:\n\n" + markdown_table(["method", *rhos], gaps))


def photos(result: dict[str, Any]) -> str:
    """07: what a pretrained network's CAMs do on real photos, and what a handful of photos can and cannot say."""
    scored = result.get("scored", [])
    n_photos, n_gt = result.get("num_photos", 0), result.get("num_with_ground_truth", 0)
    lines = [f"**Real photos.** {n_photos} photo(s), {n_gt} with a VOC ground truth; EfficientNet-Lite0 with its "
             "ImageNet-1k weights, no training. A VOC class is scored through its most probable ImageNet class; "
             + (", ".join(result.get("unscorable", [])) + " ha" + ("s" if len(result.get("unscorable", [])) == 1
                                                                    else "ve") + " no ImageNet class and is not scored."
                if result.get("unscorable") else "every present class has an ImageNet name.")]
    if scored:
        lines.append("\n".join(
            f"- {r['photo']}, {r['voc_class']} (ImageNet: {r['imagenet_class']}), {r['method']}: IoU "
            f"{_f(r['iou'], 2)} at the fixed threshold {r['threshold']}, boundary F {_f(r['boundary_f'], 2)}; "
            f"{_f(r['cam_mass_on_object'], 2)} of the CAM on the object, {_f(r['cam_mass_on_other_classes'], 2)} on "
            f"other objects, {_f(r['cam_mass_on_background'], 2)} on background (the object covers "
            f"{_f(r['object_share'], 2)})."
            for r in scored))
        if result.get("gradcam_equals_cam_at_last_layer") is not None:
            lines.append(f"At the last feature map Grad-CAM equals the analytic CAM (max difference "
                         f"{result['gradcam_equals_cam_at_last_layer']:.1e}); the Grad-CAM above is taken one stage "
                         "earlier, at output stride 16, a different map.")
    lines.append("What this is not: a benchmark. These are single photos, scored at a threshold fixed in advance; "
                 "the best IoU over thresholds in the table is the optimistic end on these photos, not a held-out "
                 "number. It shows where a pretrained network's CAM sits on a real scene and where it spills onto "
                 "neighbouring objects and context, which is the boundary effect the synthetic benchmark measures.")
    return "\n\n".join(lines)


def photos_markdown(run_dir: str | Path, figure_dir: str | Path | None = None) -> str:
    """The README block of notebook 07: its conclusion (from the run's metrics) and its dining-table figure (copied
    into ``figure_dir`` when given)."""
    from .markdown import copy_figure

    run = Run(run_dir)
    result = run.metrics.get("real_photos")
    if not result:
        raise ValueError(f"{run_dir}/metrics.json has no 'real_photos' (run notebook 07 first)")
    figures = sorted(run.figures.glob("07_*diningtable.png")) or sorted(run.figures.glob("07_*.png"))
    lines = [f"Run folder `{Path(run_dir).name}` (notebook 07, input {result.get('input_size')} px, weights "
             f"{result.get('weights')}).", ""]
    if figures and figure_dir is not None:
        lines += [copy_figure(figures[0], figure_dir), ""]
    return "\n".join(lines) + "\n" + photos(result)
