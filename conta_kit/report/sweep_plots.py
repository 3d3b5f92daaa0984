"""Plots of the confounding sweep (notebook 08): metrics against rho per method, per-class precision and
recall at one rho, and where each classifier fires on background-only images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from ..summary import sweep_methods
from .viz import overlay

_SWEEP_LABELS = {"seed_miou_fixed": "seed mIoU (fixed thr)", "seed_miou_best": "seed mIoU (thr on val)",
                 "pseudo_miou": "pseudo-mask mIoU", "cam_leakage": "CAM leakage onto context",
                 "ood_fp_rate": "OoD false-positive rate", "context_reliance": "context reliance"}


def _method_style(name: str, i: int) -> dict[str, Any]:
    if name == "oracle":  # the reference every method is read against: trained at rho = chance
        return {"color": "tab:green", "linestyle": ":", "marker": "D"}
    if "true C" in name:  # CONTA's own ceiling: ground-truth ingredients
        return {"color": "tab:purple", "linestyle": "-.", "marker": "*"}
    wood = "W-OoD" in name
    conta = "CONTA" in name
    palette = sns.color_palette("Blues" if not wood else "Oranges", 5) if conta else None
    r = int(name.rsplit("r", 1)[1]) if conta else 0
    color = palette[min(4, 1 + r)] if conta else ("black" if not wood else "tab:red")
    return {"color": color, "linestyle": "--" if conta else "-", "marker": "os^v"[i % 4] if not conta else "."}


def plot_sweep(summary: dict[str, Any], metrics: Sequence[str] = ("seed_miou_fixed", "pseudo_miou", "cam_leakage"),
               methods: Sequence[str] | None = None) -> Figure:
    """The confounding sweep: one panel per metric against rho, one line per method, mean ± std over seeds
    (``summary`` from :func:`conta_kit.sweep.summarize_sweep`)."""
    names = list(methods or [m for m in sweep_methods(summary["rounds"]) if m in summary["methods"]])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, name in enumerate(names):
            cells = summary["methods"].get(name, {})
            pts = sorted((float(r), c[metric]) for r, c in cells.items() if metric in c)
            if not pts:
                continue
            std = [0.0 if s["std"] is None or math.isnan(s["std"]) else s["std"] for _, s in pts]
            ax.errorbar([p for p, _ in pts], [s["mean"] for _, s in pts], yerr=std, capsize=2, lw=1.2,
                        label=name, **_method_style(name, i))
        ax.set_xlabel("cooccurrence rho")
        ax.set_ylabel(_SWEEP_LABELS.get(metric, metric) + (" (lower is better)" if "leakage" in metric
                                                            or "reliance" in metric or "fp" in metric else ""))
        ax.set_title(_SWEEP_LABELS.get(metric, metric), fontsize=9)
        ax.set_xticks(summary["rhos"])
    axes[0][-1].legend(fontsize=7, loc="best")
    seeds = {c.get("num_seeds") for cells in summary["methods"].values() for c in cells.values()}
    fig.suptitle(f"mean ± std over {'/'.join(str(s) for s in sorted(seeds))} seeds" + (
        " (partial)" if summary.get("partial") else ""), fontsize=9)
    fig.tight_layout()
    return fig


def plot_sweep_per_class(summary: dict[str, Any], rho: float, class_names: Sequence[str],
                         methods: Sequence[str] | None = None) -> Figure:
    """Per-class precision and recall of the seed masks at one rho, one bar per method (mean over seeds)."""
    names = list(methods or summary["methods"])
    key = f"{rho:g}"
    fig, axes = plt.subplots(2, 1, figsize=(1.6 + 0.9 * len(class_names), 5.6), sharex=True)
    width = 0.8 / max(len(names), 1)
    for ax, what in zip(axes, ("precision", "recall")):
        for i, name in enumerate(names):
            vals = summary["methods"].get(name, {}).get(key, {}).get(f"per_class_{what}")
            if vals is None:
                continue
            x = np.arange(len(class_names)) + (i - (len(names) - 1) / 2) * width
            ax.bar(x, vals[1:1 + len(class_names)], width, label=name, color=_method_style(name, i)["color"])
        ax.set_ylabel(f"seed {what}")
    axes[1].set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes[0].set_title(f"per-class precision / recall of the seed masks at rho {key}", fontsize=9)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_ood_cams(result: dict[str, Any]) -> Figure:
    """Held-out background-only images (no object), then per method the top class's CAM x its probability
    (``result`` from :func:`conta_kit.sweep.ood_cams`)."""
    methods = [k for k in result if k not in ("images", "class_names")]
    images, names = result["images"], result["class_names"]
    n = images.shape[0]
    fig, axes = plt.subplots(1 + len(methods), n, figsize=(1.9 * n, 2.0 * (1 + len(methods))), squeeze=False)
    for i in range(n):
        overlay(axes[0, i], images[i], None)
        for r, m in enumerate(methods, start=1):
            d = result[m]
            overlay(axes[r, i], images[i], d["cam"][i])
            axes[r, i].set_title(f"{names[int(d['top'][i])]} p={float(d['prob'][i]):.2f}", fontsize=7)
        axes[0, 0].set_ylabel("OoD image", fontsize=8)
    for r, m in enumerate(methods, start=1):
        axes[r, 0].set_ylabel(f"{m}\nCAM x p", fontsize=8)
    fig.tight_layout()
    return fig
