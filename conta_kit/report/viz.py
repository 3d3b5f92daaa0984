"""Plots. Every function returns a matplotlib Figure and draws nothing on screen by itself."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.rcParams.setdefault("figure.max_open_warning", 0)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .draw import (  # noqa: E402,F401 - the primitives, importable from here too
    class_legend,
    colorize,
    contours,
    label_palette,
    overlay,
    to_image,
)
from .viz_cams import (  # noqa: E402,F401 - the CAM and mask figures, importable from here too
    plot_cam_before_after,
    plot_cam_grid,
    plot_cam_overlay,
    plot_masks_grid,
    plot_photo_cams,
    plot_threshold_sweep,
)


def plot_cooccurrence(matrix: Sequence[Sequence[float]], names: Sequence[str],
                      title: str = "Which classes appear together? P(column present | row present)") -> Figure:
    """Heat map of a (C, C) label co-occurrence matrix."""
    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(names), 0.8 + 0.55 * len(names)))
    sns.heatmap(m, annot=True, fmt=".2f", xticklabels=names, yticklabels=names, cmap="mako", vmin=0, vmax=1,
                ax=ax, cbar_kws={"shrink": 0.7})
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_scenes(dataset: Any, indices: Sequence[int], context: bool = True) -> Figure:
    """Grid of samples: image, class mask, and (if the dataset has them and ``context``) context masks."""
    items = [dataset[i] for i in indices]
    rows = 3 if context and "context_mask" in items[0] else 2
    fig, axes = plt.subplots(rows, len(items), figsize=(1.9 * len(items), 1.9 * rows), squeeze=False)
    names = dataset.class_names
    for j, it in enumerate(items):
        present = [names[k] for k in torch.nonzero(it["labels"]).flatten().tolist()]
        axes[0, j].imshow(to_image(it["image"]))
        axes[0, j].set_title(", ".join(present) or "(no object)", fontsize=7)
        axes[1, j].imshow(colorize(it["mask"]), interpolation="nearest")
        if rows == 3:
            axes[2, j].imshow(colorize(it["context_mask"] + 1), interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("class mask")
    if rows == 3:
        axes[2, 0].set_ylabel("context mask")
    fig.tight_layout()
    class_legend(fig, names, context=rows == 3)
    return fig


def plot_pairing(rhos: Sequence[float], measured: Sequence[float], chance: float) -> Figure:
    """Measured share of objects on their paired context against the configured cooccurrence rho."""
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="measured = rho")
    ax.axhline(chance, ls="--", c="tab:red", lw=1, label=f"chance ({chance:.2f})")
    ax.plot(rhos, measured, "o-", c="tab:blue", label="measured from context masks")
    ax.set_xlabel("cooccurrence rho (configured)")
    ax.set_ylabel("objects on paired context")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Does the dial do what it says? (riders off)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_layout(heights: Sequence[Sequence[float]], centres: Sequence[Sequence[float]], names: Sequence[str],
                title: str = "Where does each class sit, and how big is it? (ground-truth masks)") -> Figure:
    """Per class, the spread of object heights and of vertical centres (fractions of the image side; 0 = top)."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 0.45 * len(names) + 1.2), sharey=True)
    for ax, data, label in ((axes[0], heights, "object height / image side"),
                            (axes[1], centres, "vertical centre / image side (0 = top)")):
        ax.boxplot([list(d) if len(d) else [np.nan] for d in data], vert=False, widths=0.6, showfliers=False)
        ax.set_yticks(range(1, len(names) + 1), names)
        ax.set_xlim(0, 1)
        ax.set_xlabel(label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_class_bars(values: Sequence[float], names: Sequence[str], ylabel: str, title: str = "",
                    ref: float | None = None, ref_label: str = "") -> Figure:
    """Bar chart of one number per class (NaN bars are left empty), with an optional horizontal reference line
    (e.g. the configured rho)."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(names), 3.0))
    ax.bar(range(len(names)), [np.nan if v is None else v for v in values], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    if ref is not None:
        ax.axhline(ref, color="tab:red", ls="--", lw=1, label=ref_label or f"{ref:g}")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_prototypes(prototypes: torch.Tensor, names: Sequence[str], prior: Sequence[float] | None = None,
                    title: str = "", colorbar: str = "mask value (one scale for all panels)") -> Figure:
    """Gallery of the confounder prototypes c_i (K, h, w), each titled with its class and P(c_i), on one
    colour scale with its bar."""
    k = prototypes.shape[0]
    cols = min(k, 8)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.7 * rows + 0.3), squeeze=False)
    vmax = max(float(prototypes.max()), 1e-6)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= k:
            ax.axis("off")
            continue
        im = ax.imshow(prototypes[i].cpu().numpy(), cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(names[i] + (f"\nP={float(prior[i]):.3f}" if prior is not None else ""), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.01, label=colorbar)
    return fig


def plot_prototype_rounds(sets: Sequence[torch.Tensor], names: Sequence[str], rounds: Sequence[int | str]) -> Figure:
    """How each prototype changes over rounds: rows = rounds (an int t is "C after r<t>", a string is its own
    label, e.g. "ground truth"), columns = classes, one colour scale."""
    r, k = len(sets), sets[0].shape[0]
    fig, axes = plt.subplots(r, k, figsize=(1.3 * k, 1.35 * r + 0.4), squeeze=False)
    vmax = max(max(float(s.max()) for s in sets), 1e-6)
    for i, s in enumerate(sets):
        for j in range(k):
            ax = axes[i, j]
            im = ax.imshow(s[j].cpu().numpy(), cmap="magma", vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(names[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(f"C after r{rounds[i]}" if isinstance(rounds[i], int) else str(rounds[i]), fontsize=8)
    fig.tight_layout()
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.01, label="mask value (one scale)")
    return fig


def plot_attention(alpha: torch.Tensor, names: Sequence[str], row_labels: Sequence[str] | None = None,
                   title: str = "Which prototype does each image attend to? (alpha)") -> Figure:
    """Heat map of alpha (N, K): one row per image, one column per prototype (rows sum to one)."""
    a = alpha.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * a.shape[1], 0.8 + 0.28 * a.shape[0]))
    sns.heatmap(a, ax=ax, cmap="viridis", vmin=0, xticklabels=names,
                yticklabels=row_labels if row_labels is not None else False, cbar_kws={"shrink": 0.7})
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def plot_confusion(matrix: torch.Tensor | np.ndarray, names: Sequence[str], normalize: bool = True,
                   title: str = "") -> Figure:
    """Confusion matrix (rows = ground truth, columns = prediction), row-normalised by default."""
    m = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=float)
    if normalize:
        m = m / np.clip(m.sum(1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(names), 0.9 + 0.5 * len(names)))
    sns.heatmap(m, annot=len(names) <= 12, fmt=".2f", cmap="Blues", xticklabels=names, yticklabels=names, ax=ax,
                vmin=0, vmax=1 if normalize else None, cbar_kws={"shrink": 0.7})
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if normalize:
        title = (title + "\n" if title else "") + "row-normalised: each ground-truth row sums to 1"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_grouped_bars(groups: dict[str, Sequence[float]], names: Sequence[str], ylabel: str,
                      title: str = "") -> Figure:
    """Per-class bars for several series side by side (e.g. leakage before vs after)."""
    fig, ax = plt.subplots(figsize=(1.4 + 0.7 * len(names), 3.2))
    width = 0.8 / max(len(groups), 1)
    for i, (label, vals) in enumerate(groups.items()):
        x = np.arange(len(names)) + (i - (len(groups) - 1) / 2) * width
        ax.bar(x, [np.nan if v is None else v for v in vals], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_round_curves(summary: dict[str, Any], metrics: Sequence[str], title: str = "") -> Figure:
    """Mean ± std over seeds of each metric against the round (the ``summary`` of ``rounds.run_seeds``): scores
    (mIoU, boundary F; higher is better) and context measures (leakage, reliance; lower is better) on panels
    of their own, each with its y label."""
    families = {"score (higher is better)": [m for m in metrics if "miou" in m or "bf" in m],
                "context measure (lower is better)": [m for m in metrics if not ("miou" in m or "bf" in m)]}
    families = {k: v for k, v in families.items() if v}
    fig, axes = plt.subplots(1, len(families), figsize=(5.0 * len(families), 3.4), squeeze=False,
                             layout="constrained")
    for ax, (ylabel, names) in zip(axes[0], families.items()):
        for name in names:
            rows = [r for r in summary["rounds"] if name in r]
            if not rows:
                continue
            x = [r["round"] for r in rows]
            mean = np.array([r[name]["mean"] for r in rows])
            std = np.array([0.0 if r[name]["std"] is None or np.isnan(r[name]["std"]) else r[name]["std"]
                            for r in rows])
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=name)
        ax.set_xlabel("round (0 = baseline)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted({r["round"] for r in summary["rounds"]}))
        ax.legend(fontsize=7)
    seeds = summary.get("seeds") or []
    spread = "mean ± std over seeds " + str(seeds) if len(seeds) > 1 else f"one seed {seeds}: no spread"
    fig.suptitle(title + (" · " if title else "") + spread, fontsize=9)
    return fig
