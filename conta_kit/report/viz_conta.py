"""What the backdoor adjustment does to one image, drawn for a teacher: the CAM before and after, their
difference with the object outline and the context patch, the attention over the prototypes, and M."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .viz import contours, overlay, to_image


def plot_adjustment(images: torch.Tensor, before: torch.Tensor, after: torch.Tensor, masks: torch.Tensor,
                    surround: torch.Tensor | None, classes: Sequence[int], names: Sequence[str],
                    alpha: torch.Tensor | None, prototype_names: Sequence[str], m: torch.Tensor | None,
                    titles: tuple[str, str] = ("before (round 0)", "after (CONTA)")) -> Figure:
    """One row per image: CAM before | CAM after | after - before | attention alpha | M. The differences share
    one symmetric colour scale, and the M maps one scale, across all rows.

    Args:
        images: (N, 3, H, W). before, after: (N, H, W) CAMs in [0, 1] of class ``classes[i]`` (index k).
        masks: (N, H, W) ground truth (the object's outline is drawn in every CAM panel).
        surround: (N, H, W) the benchmark's ``surround`` (k + 1 on the object's context patch) or None; its
            outline is drawn dashed on the difference.
        alpha: (N, K) attention of the adjusted classifier (bars; the image's classes in colour) or None.
        prototype_names: K names of the prototypes. m: (N, h, w) M on its grid, or None.
    """
    n = images.shape[0]
    cols = 3 + (alpha is not None) + (m is not None)
    diffs = (after - before).detach().float().cpu()
    lim = max(float(diffs.abs().max()), 1e-3)  # one symmetric scale for every row: changes compare across images
    m_max = max(float(m.max()), 1e-6) if m is not None else 1.0
    fig, axes = plt.subplots(n, cols, figsize=(2.5 * cols + 0.6, 2.3 * n), squeeze=False)
    for i in range(n):
        k = int(classes[i])
        overlay(axes[i, 0], images[i], before[i])
        overlay(axes[i, 1], images[i], after[i])
        diff = diffs[i]
        axes[i, 2].imshow(to_image(images[i]), alpha=0.35)
        im = axes[i, 2].imshow(diff.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.85)
        fig.colorbar(im, ax=axes[i, 2], fraction=0.046, pad=0.02, label="CAM change")
        for j in range(3):
            contours(axes[i, j], masks[i], k + 1, "black" if j == 2 else "white")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        if surround is not None:
            patch = (surround[i].cpu().numpy() == k + 1).astype(float)
            if 0 < patch.sum() < patch.size:
                axes[i, 2].contour(patch, levels=[0.5], colors="tab:green", linewidths=1.2, linestyles="--")
        axes[i, 0].set_ylabel(names[k], fontsize=9)
        c = 3
        if alpha is not None:
            a = alpha[i].detach().float().cpu().numpy()
            present = {j for j, p in enumerate(prototype_names) if p in {names[q] for q in _present(masks[i])}}
            colours = ["tab:orange" if j in present else "tab:gray" for j in range(len(a))]
            axes[i, c].bar(np.arange(len(a)), a, color=colours)
            axes[i, c].axhline(1.0 / len(a), color="black", linewidth=0.8, linestyle=":")
            axes[i, c].set_ylim(0, 1)
            axes[i, c].set_ylabel("alpha", fontsize=8)
            axes[i, c].set_xticks(np.arange(len(a)), prototype_names, rotation=90, fontsize=7)
            c += 1
        if m is not None:
            mi = axes[i, c].imshow(m[i].detach().float().cpu().numpy(), cmap="magma", vmin=0, vmax=m_max)
            fig.colorbar(mi, ax=axes[i, c], fraction=0.046, pad=0.02, label="M")
            axes[i, c].set_xticks([])
            axes[i, c].set_yticks([])
    heads = [*titles, "after - before (object: black, context: green)"]
    heads += ["attention (orange: the image's classes; dotted: uniform)"] if alpha is not None else []
    heads += ["M on the feature grid"] if m is not None else []
    for ax, t in zip(axes[0], heads):
        ax.set_title(t, fontsize=8)
    fig.tight_layout()
    return fig


def _present(mask: torch.Tensor) -> list[int]:
    """Class indices with pixels in a label mask (0 background, 255 ignore)."""
    ids = torch.unique(mask)
    return [int(v) - 1 for v in ids if 0 < int(v) < 255]
