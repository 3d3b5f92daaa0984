"""Numbers over seeds, and how every table of the kit prints them.

One rule for all tables: ``mean ± std`` (sample std, ddof 1) where there are two or more values, the mean
alone where there is one (its std is NaN: there is no spread to show), ``—`` where there is none; values
below 0.01 in magnitude keep their digits (``1.2e-03 ± 4.0e-04``). :func:`mean_std` also gives the 95 %
confidence half-width of the mean (Student t). :data:`METRICS` names every number a table reads from a
round's metrics.json, once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

# name in summaries and tables -> path in a round's metrics.json
METRICS: dict[str, tuple[str, ...]] = {
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
    "attention_top_present": ("m", "attention", "top_is_present_class"),
    "nwgm_gap": ("m", "nwgm", "mean_abs_gap"),
    "seed_precision_fixed": ("seed", "mean_precision_fixed"), "seed_recall_fixed": ("seed", "mean_recall_fixed"),
    "ood_fp_rate": ("ood", "hard", "fp_rate"), "ood_fp_rate_random": ("ood", "random", "fp_rate"),
    "ood_mean_max_prob": ("ood", "hard", "mean_max_prob"),
    "ceiling_miou_best": ("seed", "ceiling", "miou_best"), "ceiling_miou_fixed": ("seed", "ceiling", "miou_fixed"),
    "seed_share_of_ceiling": ("seed", "share_of_ceiling"),
    "cam_mass_in_object": ("seed", "localisation", "cam_mass_in_object"),
    "object_pixel_share": ("seed", "localisation", "object_pixel_share"),
    "cam_peak_on_object": ("seed", "localisation", "cam_peak_on_object"),
    "cam_peak_in_box": ("seed", "localisation", "cam_peak_in_box"),
    "surround_leakage_paired": ("seed", "surround", "surround_leakage_paired"),
    "surround_leakage_unpaired": ("seed", "surround", "surround_leakage_unpaired"),
    "confounding_leakage": ("seed", "surround", "confounding_leakage"),
    "total_s": ("timing", "total_s"),
}
#: the numbers read as the share of the baseline-to-oracle gap a method closes
GAP_METRICS = ("seed_miou_best", "seed_miou_fixed", "pseudo_miou", "context_reliance", "cam_leakage",
               "confounding_leakage")



def sweep_methods(rounds: int) -> dict[str, tuple[str, int | str]]:
    """The confounding sweep's rows in table order: method name -> (arm, round): baseline, oracle (the
    baseline trained at rho = chance), CONTA r1..rT, CONTA over ground-truth C and x_m, W-OoD, CONTA + W-OoD
    r1..rT."""
    out: dict[str, tuple[str, int | str]] = {"baseline": ("plain", 0), "oracle": ("plain", "oracle")}
    out.update({f"CONTA r{t}": ("plain", t) for t in range(1, rounds + 1)})
    out["CONTA (true C, x_m)"] = ("plain", "conta_gt")
    out["W-OoD"] = ("wood", 0)
    out.update({f"CONTA + W-OoD r{t}": ("wood", t) for t in range(1, rounds + 1)})
    return out


# two-sided 95 % Student t quantiles by degrees of freedom (1..30); 1.96 beyond
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def metric_value(round_metrics: dict[str, Any], name: str) -> float | None:
    """The number :data:`METRICS` ``[name]`` points at in a round's metrics, or None where it is missing."""
    d: Any = round_metrics
    for k in METRICS[name]:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, int | float) and not isinstance(d, bool) else None


def finite(values: Iterable[float | None]) -> list[float]:
    """The values that are numbers and not NaN."""
    return [v for v in values if v is not None and not math.isnan(v)]


def nanmean(values: Iterable[float | None]) -> float:
    """Mean of the finite values; NaN when there is none."""
    vals = finite(values)
    return sum(vals) / len(vals) if vals else math.nan


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "ci95", "values"}`` of a non-empty list: sample std (ddof 1) and the 95 % confidence
    half-width of the mean (t quantile x std / sqrt(n)); both NaN for one value."""
    vals = list(values)
    if not vals:
        raise ValueError("mean_std needs at least one value")
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else math.nan
    t = _T95[n - 2] if 2 <= n <= 31 else 1.96
    return {"mean": mean, "std": std, "ci95": t * std / math.sqrt(n) if n > 1 else math.nan, "values": vals}


def fmt(stats: dict[str, Any] | None) -> str:
    """A :func:`mean_std` cell as the tables print it (the rule at the top of this module)."""
    if not stats or stats.get("mean") is None:
        return "—"
    mean, std = stats["mean"], stats.get("std")
    spread = std is not None and not math.isnan(std) and len(stats.get("values", [0, 0])) > 1
    spec = ".1e" if mean != 0 and abs(mean) < 0.01 else ".3f"
    return f"{mean:{spec}} ± {std:{spec}}" if spread else f"{mean:{spec}}"


def gap_closed(method: float | None, baseline: float | None, oracle: float | None, eps: float = 1e-9) -> float:
    """``(method - baseline) / (oracle - baseline)``: 0 = the baseline, 1 = the oracle (trained at rho =
    chance); NaN where a value is missing or the oracle does not differ from the baseline."""
    if method is None or baseline is None or oracle is None or abs(oracle - baseline) < eps:
        return math.nan
    return (method - baseline) / (oracle - baseline)


def _row(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name in METRICS:
        vals = finite(metric_value(m, name) for m in metrics)
        if vals:
            row[name] = mean_std(vals)
    return row


def summarize(per_seed: dict[int, list[dict[str, Any]]], oracle: dict[int, dict[str, Any]] | None = None,
              arms: dict[str, dict[int, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Every :data:`METRICS` number of every round as :func:`mean_std` over the seeds that have it (rounds
    that every seed finished). With the seeds' ``oracle`` metrics: an ``oracle`` row and, in every round,
    ``gap_<name>`` for :data:`GAP_METRICS` (:func:`gap_closed` per seed, then mean, std and 95 % interval).
    ``arms`` (name -> seed -> metrics, e.g. ``conta_gt``): one more row each, with its gaps, in ``"arms"``."""
    seeds = sorted(per_seed)
    n_rounds = min(len(r) for r in per_seed.values())

    def gaps(row: dict[str, Any], method: dict[int, dict[str, Any]]) -> dict[str, Any]:
        for name in GAP_METRICS:
            vals = finite(gap_closed(metric_value(method[s], name), metric_value(per_seed[s][0], name),
                                     metric_value(oracle[s], name)) for s in seeds if s in oracle and s in method)
            if vals:
                row[f"gap_{name}"] = mean_std(vals)
        return row

    out = []
    for t in range(n_rounds):
        row: dict[str, Any] = {"round": t, **_row([per_seed[s][t] for s in seeds])}
        out.append(gaps(row, {s: per_seed[s][t] for s in seeds}) if oracle else row)
    res: dict[str, Any] = {"seeds": seeds, "rounds": out}
    if oracle:
        res["oracle"] = {"round": "oracle", **_row([oracle[s] for s in seeds if s in oracle])}
    extra = []
    for name, by_seed in (arms or {}).items():
        have = {s: by_seed[s] for s in seeds if s in by_seed}
        if have:
            row = {"round": name, **_row(list(have.values()))}
            extra.append(gaps(row, have) if oracle else row)
    if extra:
        res["arms"] = extra
    return res


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def fmt_ci(stats: dict[str, Any] | None, digits: int = 2) -> str:
    """:func:`fmt` followed by the 95 % interval of the mean, ``[lo, hi]`` to ``digits`` decimals, where there
    are two values or more."""
    text = fmt(stats)
    if not stats or stats.get("ci95") is None or math.isnan(stats["ci95"]):
        return text
    lo, hi = stats["mean"] - stats["ci95"], stats["mean"] + stats["ci95"]
    return f"{text} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def summary_table(summary: dict[str, Any], names: Sequence[str] = ("seed_miou_fixed", "seed_miou_best",
                  "pseudo_miou", "seg_miou", "seed_bf_fixed", "cam_leakage", "context_reliance"),
                  intervals: bool = False) -> str:
    """Rounds x metrics of a :func:`summarize` output (and its oracle and arm rows), every cell by :func:`fmt`
    (with ``intervals``: :func:`fmt_ci`)."""
    rows = summary["rounds"] + summary.get("arms", []) + ([summary["oracle"]] if summary.get("oracle") else [])
    cell = fmt_ci if intervals else fmt
    return markdown_table(["round", *names], ([str(r["round"]), *(cell(r.get(n)) for n in names)] for r in rows))
