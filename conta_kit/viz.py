"""Plots. Every function returns a matplotlib Figure and draws nothing on screen by itself."""

from __future__ import annotations

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


def _img(image: torch.Tensor) -> np.ndarray:
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
        axes[0, j].imshow(_img(it["image"]))
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


def plot_class_bars(values: Sequence[float], names: Sequence[str], ylabel: str, title: str = "") -> Figure:
    """Bar chart of one number per class (NaN bars are left empty)."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(names), 3.0))
    ax.bar(range(len(names)), [np.nan if v is None else v for v in values], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig
