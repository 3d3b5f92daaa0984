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


def label_palette(n: int = 256) -> np.ndarray:
    """VOC's bit-interleaved colour map: (n, 3) uint8; id 255 is drawn white."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    if n > 255:
        pal[255] = (255, 255, 255)
    return pal


def colorize(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W) integer label map -> (H, W, 3) uint8 image; negative ids (no context) are black."""
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(np.int64)
    return np.where(m[..., None] < 0, 0, label_palette()[np.clip(m, 0, 255)]).astype(np.uint8)


def to_image(image: torch.Tensor) -> np.ndarray:
    return image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()


def plot_cooccurrence(matrix: Sequence[Sequence[float]], names: Sequence[str],
                      title: str = "P(column present | row present)") -> Figure:
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
    fig.tight_layout()
    return fig


def plot_layout(heights: Sequence[Sequence[float]], centres: Sequence[Sequence[float]], names: Sequence[str],
                title: str = "where each class sits (from the ground-truth masks)") -> Figure:
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


def plot_class_bars(values: Sequence[float], names: Sequence[str], ylabel: str, title: str = "") -> Figure:
    """Bar chart of one number per class (NaN bars are left empty)."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(names), 3.0))
    ax.bar(range(len(names)), [np.nan if v is None else v for v in values], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def overlay(ax: Any, image: torch.Tensor, heat: torch.Tensor | None, alpha: float = 0.5, cmap: str = "jet",
             vmin: float = 0.0, vmax: float = 1.0) -> Any:
    ax.imshow(to_image(image))
    im = None
    if heat is not None:
        im = ax.imshow(heat.detach().cpu().numpy(), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def contours(ax: Any, mask: torch.Tensor, label: int, color: str = "white") -> None:
    m = (mask.cpu().numpy() == label).astype(float)
    if 0 < m.sum() < m.size:
        ax.contour(m, levels=[0.5], colors=color, linewidths=1.0)


def plot_cam_overlay(image: torch.Tensor, cam: torch.Tensor, title: str = "", alpha: float = 0.5,
                     mask: torch.Tensor | None = None, label: int | None = None) -> Figure:
    """One CAM (H, W) in [0, 1] over its image (3, H, W), with the ground-truth contour of ``label``."""
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    overlay(ax, image, cam, alpha)
    if mask is not None and label is not None:
        contours(ax, mask, label)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_cam_before_after(images: torch.Tensor, before: torch.Tensor, after: torch.Tensor, masks: torch.Tensor,
                          classes: Sequence[int], names: Sequence[str],
                          titles: tuple[str, str] = ("baseline (round 0)", "CONTA")) -> Figure:
    """Rows of image | CAM before | CAM after | difference (after - before), ground-truth contours drawn.

    Args:
        images: (N, 3, H, W). before, after: (N, H, W) CAMs of class ``classes[i]`` (index k, label k + 1).
        masks: (N, H, W) ground truth.
    """
    n = images.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(9.2, 2.3 * n), squeeze=False)
    for i in range(n):
        k = int(classes[i])
        axes[i, 0].imshow(to_image(images[i]))
        axes[i, 0].set_ylabel(names[k], fontsize=9)
        overlay(axes[i, 1], images[i], before[i])
        overlay(axes[i, 2], images[i], after[i])
        diff = (after[i] - before[i]).detach().cpu()
        lim = max(float(diff.abs().max()), 1e-6)
        im = axes[i, 3].imshow(diff.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=axes[i, 3], fraction=0.046, pad=0.02)
        for ax in axes[i, 1:]:
            contours(ax, masks[i], k + 1, "black" if ax is axes[i, 3] else "white")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, t in zip(axes[0], ("image", *titles, "after - before")):
        ax.set_title(t, fontsize=9)
    fig.tight_layout()
    return fig


def plot_prototypes(prototypes: torch.Tensor, names: Sequence[str], prior: Sequence[float] | None = None,
                    title: str = "") -> Figure:
    """Gallery of the confounder prototypes c_i (K, h, w), each titled with its class and P(c_i)."""
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
        ax.imshow(prototypes[i].cpu().numpy(), cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(names[i] + (f"\nP={float(prior[i]):.3f}" if prior is not None else ""), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
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
            ax.imshow(s[j].cpu().numpy(), cmap="magma", vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(names[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(f"C after r{rounds[i]}" if isinstance(rounds[i], int) else str(rounds[i]), fontsize=8)
    fig.tight_layout()
    return fig


def plot_attention(alpha: torch.Tensor, names: Sequence[str], row_labels: Sequence[str] | None = None,
                   title: str = "attention alpha per image") -> Figure:
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
    """Mean ± std over seeds of each metric against the round (the ``summary`` of ``rounds.run_seeds``)."""
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    for name in metrics:
        rows = [r for r in summary["rounds"] if name in r]
        if not rows:
            continue
        x = [r["round"] for r in rows]
        mean = np.array([r[name]["mean"] for r in rows])
        std = np.array([0.0 if r[name]["std"] is None or np.isnan(r[name]["std"]) else r[name]["std"] for r in rows])
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=name)
    ax.set_xlabel("round")
    ax.set_xticks(sorted({r["round"] for r in summary["rounds"]}))
    ax.set_title(title or f"mean ± std over seeds {summary.get('seeds')}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_masks_grid(images: torch.Tensor, rows: dict[str, torch.Tensor]) -> Figure:
    """Columns = images; first row the images, then one row per named (N, H, W) label map."""
    n = images.shape[0]
    r = 1 + len(rows)
    fig, axes = plt.subplots(r, n, figsize=(1.8 * n, 1.85 * r), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(to_image(images[j]))
        for i, m in enumerate(rows.values(), start=1):
            axes[i, j].imshow(colorize(m[j]), interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i, name in enumerate(["image", *rows], start=0):
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def plot_threshold_sweep(sweep: dict[str, dict[str, float]], chosen: float, fixed: float,
                         title: str = "seed mIoU on val against the background threshold") -> Figure:
    """The val sweep that picks the background threshold (``metrics[seed][val_sweep]``)."""
    ts = sorted(float(t) for t in sweep)
    vals = [sweep[str(t)]["miou"] if str(t) in sweep else sweep[f"{t}"]["miou"] for t in ts]
    fig, ax = plt.subplots(figsize=(4.4, 3.0))
    ax.plot(ts, vals, "o-", ms=3)
    ax.axvline(chosen, c="tab:green", ls="--", lw=1, label=f"best on val ({chosen:.2f})")
    ax.axvline(fixed, c="tab:red", ls=":", lw=1, label=f"IRNet fixed ({fixed:.2f})")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_cam_grid(images: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                  names: Sequence[str], per_image: int = 3) -> Figure:
    """One row per image: the image, then the CAM of each present class (up to ``per_image``) with its
    ground-truth contour. cams: (N, C, H, W)."""
    n = images.shape[0]
    fig, axes = plt.subplots(n, 1 + per_image, figsize=(2.1 * (1 + per_image), 2.1 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(to_image(images[i]))
        present = torch.nonzero(labels[i]).flatten().tolist()[:per_image]
        for j in range(per_image):
            ax = axes[i, 1 + j]
            if j < len(present):
                k = present[j]
                overlay(ax, images[i], cams[i, k])
                contours(ax, masks[i], k + 1)
                ax.set_title(names[k], fontsize=8)
            else:
                ax.axis("off")
        axes[i, 0].set_xticks([])
        axes[i, 0].set_yticks([])
    fig.tight_layout()
    return fig
