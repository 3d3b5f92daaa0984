"""Baseline against the oracle (trained at rho = chance, the generator's do-intervention) at each rho, with the
resolution ceiling: the README's ``oracle-gap`` block (``python -m conta_kit.report --oracle-gap RUN ...``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import Run, read_json
from ..summary import fmt, fmt_ci, gap_closed, markdown_table, mean_std, metric_value

ORACLE_METRICS = ("seed_miou_best", "pseudo_miou", "seg_miou", "context_reliance", "cam_leakage",
                  "confounding_leakage", "cam_peak_on_object")


def training_precision(run: Run) -> str:
    """What the run's ``amp`` setting became where it ran: "fp32", "bf16" or "fp16" (from params.json and the
    device and CPU bf16 units recorded in env.json; "unrecorded" where env.json predates that record)."""
    amp = run.params.get("resolved", {}).get("baseline", {}).get("amp", "auto")
    env = read_json(run.layout.env) if run.layout.env.exists() else {}
    if amp == "off":
        return "fp32"
    if str(env.get("device", "")).startswith("cuda"):
        return "fp16" if amp == "fp16" else "bf16"
    if amp == "bf16":
        return "bf16"
    if amp == "fp16":
        return "fp32"  # fp16 autocast is CUDA-only; the CPU runs fp32
    bf16 = env.get("cpu_bf16", {}).get("auto_uses_bf16")
    return "unrecorded" if bf16 is None else ("bf16" if bf16 else "fp32")


def oracle_gap_markdown(run_dirs: list[str | Path]) -> str:
    """Baseline against the oracle at each run's rho (one `conta-kit conta` run per rho, every seed's round 0
    and oracle): both, the gap (oracle - baseline, per seed), the resolution ceiling, and how much of the
    baseline's distance to the ceiling the oracle closes ((oracle - baseline) / (ceiling - baseline)), all
    mean ± std over seeds."""
    rows, per_rho, reading = [], [], []
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
        for name in ORACLE_METRICS:
            b = [metric_value(r0, name) for r0, _ in pairs]
            o = [metric_value(orc, name) for _, orc in pairs]
            if any(v is None for v in b + o):
                continue
            rows.append([f"{rho:g}", name, fmt(mean_std(b)), fmt(mean_std(o)), difference(b, o)])
            if len(pairs) > 1:
                reading.append((rho, name, mean_std([y - x for x, y in zip(b, o)])))
        ceil = [metric_value(r0, "ceiling_miou_best") for r0, _ in pairs]
        b = [metric_value(r0, "seed_miou_best") for r0, _ in pairs]
        o = [metric_value(orc, "seed_miou_best") for _, orc in pairs]
        closes = [gap_closed(y, x, c) for x, y, c in zip(b, o, ceil)]
        per_rho.append([f"{rho:g}", str(len(pairs)), fmt(mean_std(b)), fmt(mean_std(o)), fmt(mean_std(ceil)),
                        difference(b, o), fmt(mean_std([c - y for y, c in zip(o, ceil)])),
                        fmt(mean_std(closes))])
    folders = ", ".join(f"`{Path(d).name}` ({training_precision(Run(d))})" for d in run_dirs)
    said = _gap_reading(reading, per_rho)
    return ("Seed mIoU (threshold chosen on val) against the resolution ceiling:\n\n"
            + markdown_table(["rho", "seeds", "baseline", "oracle", "ceiling", "oracle - baseline",
                              "ceiling - oracle", "share of (ceiling - baseline) the oracle closes"], per_rho)
            + "\nEvery number, baseline and oracle (mean ± std over seeds; the difference per seed, with the 95 % "
              "interval of its mean):\n\n"
            + markdown_table(["rho", "metric", "baseline", "oracle", "oracle - baseline"], rows)
            + (f"\nWhat these numbers show (written from them):\n\n{said}\n" if said else "")
            + f"\nRun folders (training and CAM precision): {folders}\n")


def _gap_reading(reading: list[tuple[float, str, dict[str, Any]]], per_rho: list[list[str]]) -> str:
    """One line per rho: which metrics the oracle moves beyond the seed spread (95 % interval of the mean
    difference excluding zero), which it does not, and the seed-mIoU room the ceiling leaves above the oracle."""
    lines = []
    for rho in dict.fromkeys(r for r, _, _ in reading):
        moved, within = [], []
        for r, name, st in reading:
            if r != rho:
                continue
            lo, hi = st["mean"] - st["ci95"], st["mean"] + st["ci95"]
            (moved if lo > 0 or hi < 0 else within).append(f"{name} {st['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        row = next(p for p in per_rho if p[0] == f"{rho:g}")
        lines.append(f"- rho {rho:g}: the oracle differs from the baseline beyond the seed spread in "
                     f"{'; '.join(moved) or 'no metric'}; within it in {'; '.join(within) or 'no metric'}. "
                     f"Seed mIoU: the ceiling is {row[6]} above the oracle, which closes {row[7]} of the "
                     f"baseline's distance to it.")
    return "\n".join(lines)


def difference(a: list[float], b: list[float]) -> str:
    """(b - a) per seed: mean ± std and the 95 % interval of the mean (one seed: the difference alone)."""
    return fmt_ci(mean_std([y - x for x, y in zip(a, b)]), digits=3)
