"""Baseline against the oracle (trained at rho = chance, the generator's do-intervention) at each rho, with the
resolution ceiling: the README's ``oracle-gap`` block (``python -m conta_kit.report --oracle-gap RUN ...``)."""

from __future__ import annotations

from pathlib import Path

from ..io import Run, read_json
from ..precision import resolve
from ..summary import fmt, fmt_ci, gap_closed, markdown_table, mean_std, metric_value

ORACLE_METRICS = ("seed_miou_best", "pseudo_miou", "seg_miou", "context_reliance", "cam_leakage",
                  "confounding_leakage", "cam_peak_on_object", "cam_peak_in_box")


def training_precision(run: Run) -> str:
    """What the run's ``amp`` setting became where it ran: "fp32", "bf16" or "fp16", by the kit's one rule
    (:func:`conta_kit.precision.resolve`) applied to the device and CPU bf16 units recorded in env.json;
    "unrecorded" where "auto" ran on a CPU before env.json recorded its units."""
    amp = run.params.get("resolved", {}).get("baseline", {}).get("amp", "auto")
    env = read_json(run.layout.env) if run.layout.env.exists() else {}
    device = env.get("device") or "cpu"
    bf16 = env.get("cpu_bf16", {}).get("auto_uses_bf16")
    if amp == "auto" and bf16 is None and not str(device).startswith("cuda"):
        return "unrecorded"
    return resolve(device, amp, cpu_bf16=bool(bf16))


def oracle_gap_markdown(run_dirs: list[str | Path]) -> str:
    """Baseline against the oracle at each run's rho (one `conta-kit conta` run per rho, every seed's round 0
    and oracle): both, the gap (oracle - baseline, per seed), the resolution ceiling, and how much of the
    baseline's distance to the ceiling the oracle closes ((oracle - baseline) / (ceiling - baseline)), all
    mean ± std over seeds."""
    rows, per_rho, reading, read = [], [], [], []
    for d in run_dirs:
        run = Run(d)
        rho = run.params.get("resolved", {}).get("data", {}).get("cooccurrence")
        pairs = []
        for s in run.layout.seeds():
            m = Run(run.layout.seed(s).path).metrics.get("conta", {})
            if m.get("rounds") and m.get("oracle"):
                pairs.append((m["rounds"][0], m["oracle"]))
        if not pairs:
            raise ValueError(f"{run.path} has no seed with both round 0 and the oracle finished")
        read.append((rho, pairs))
        moved, within = [], []
        for name in ORACLE_METRICS:
            b = [metric_value(r0, name) for r0, _ in pairs]
            o = [metric_value(orc, name) for _, orc in pairs]
            if any(v is None for v in b + o):
                continue
            diff = mean_std([y - x for x, y in zip(b, o)])
            rows.append([f"{rho:g}", name, fmt(mean_std(b)), fmt(mean_std(o)), fmt_ci(diff, digits=3)])
            if len(pairs) > 1:  # beyond the seed spread: the 95 % interval of the mean difference excludes zero
                lo, hi = diff["mean"] - diff["ci95"], diff["mean"] + diff["ci95"]
                (moved if lo > 0 or hi < 0 else within).append(f"{name} {diff['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        ceil = [metric_value(r0, "ceiling_miou_best") for r0, _ in pairs]
        b = [metric_value(r0, "seed_miou_best") for r0, _ in pairs]
        o = [metric_value(orc, "seed_miou_best") for _, orc in pairs]
        above, closes = fmt(mean_std([c - y for y, c in zip(o, ceil)])), fmt(mean_std(
            [gap_closed(y, x, c) for x, y, c in zip(b, o, ceil)]))
        per_rho.append([f"{rho:g}", str(len(pairs)), fmt(mean_std(b)), fmt(mean_std(o)), fmt(mean_std(ceil)),
                        difference(b, o), above, closes])
        if moved or within:
            reading.append(f"- rho {rho:g}: the oracle differs from the baseline beyond the seed spread in "
                           f"{'; '.join(moved) or 'no metric'}; within it in {'; '.join(within) or 'no metric'}. "
                           f"Seed mIoU: the ceiling is {above} above the oracle, which closes {closes} of the "
                           "baseline's distance to it.")
    folders = ", ".join(f"`{Path(d).name}` ({training_precision(Run(d))})" for d in run_dirs)
    said = "\n".join(reading)
    per_class = peaks_by_class(read)
    return ("Seed mIoU (threshold chosen on val) against the resolution ceiling:\n\n"
            + markdown_table(["rho", "seeds", "baseline", "oracle", "ceiling", "oracle - baseline",
                              "ceiling - oracle", "share of (ceiling - baseline) the oracle closes"], per_rho)
            + "\nEvery number, baseline and oracle (mean ± std over seeds; the difference per seed, with the 95 % "
              "interval of its mean):\n\n"
            + markdown_table(["rho", "metric", "baseline", "oracle", "oracle - baseline"], rows)
            + (f"\nWhat these numbers show (written from them):\n\n{said}\n" if said else "")
            + (f"\nWhere the CAM peaks land, per class: share on the object's pixels / in its box (mean over "
               f"seeds; in the box but off the pixels: between a thin object's parts):\n\n{per_class}" if per_class
               else "")
            + f"\nRun folders (training and CAM precision): {folders}\n")


def difference(a: list[float], b: list[float]) -> str:
    """(b - a) per seed: mean ± std and the 95 % interval of the mean (one seed: the difference alone)."""
    return fmt_ci(mean_std([y - x for x, y in zip(a, b)]), digits=3)


def peaks_by_class(runs: list[tuple[float, list[tuple[dict, dict]]]]) -> str:
    """Markdown table, per run (its rho and its seeds' (round 0, oracle) metrics) and arm, of each class's share
    of CAM peaks on its object / in its box, mean over the seeds; "" where the runs predate the peak in the
    box."""
    from ..data import ConfoundedScenes

    rows, names = [], None
    for rho, pairs in runs:
        for label, arm in (("baseline", 0), ("oracle", 1)):
            locs = [p[arm].get("seed", {}).get("localisation", {}) for p in pairs]
            if not all("cam_peak_in_box_per_class" in x for x in locs):
                return ""
            n = len(locs[0]["cam_peak_on_object_per_class"])
            names = names or ConfoundedScenes("train", num_images=0).class_names[:n]
            cells = []
            for k in range(n):
                # a class absent from the images has no share (NaN, written to JSON as null)
                on = [v for v in (x["cam_peak_on_object_per_class"][k] for x in locs) if v is not None and v == v]
                box = [v for v in (x["cam_peak_in_box_per_class"][k] for x in locs) if v is not None and v == v]
                cells.append(f"{mean_std(on)['mean']:.2f} / {mean_std(box)['mean']:.2f}" if on and box else "—")
            rows.append([f"{rho:g}", label, str(len(locs)), *cells])
    return markdown_table(["rho", "classifier", "seeds", *names], rows) if rows else ""
