"""CAM and mask figures. Every CAM panel is drawn on the fixed 0-1 scale with one colour bar per figure, the
object outlined (solid) and, where the benchmark has it, its paired context (dashed); label maps carry a
colour legend; difference maps share one symmetric scale across the figure."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .draw import cam_colorbar, class_legend, colorize, outline, outline_legend, overlay, to_image


def plot_cam_overlay(image: torch.Tensor, cam: torch.Tensor, title: str = "", alpha: float = 0.5,
                     mask: torch.Tensor | None = None, label: int | None = None) -> Figure:
    """One CAM (H, W) in [0, 1] over its image (3, H, W), with the ground-truth contour of ``label``."""
    fig, ax = plt.subplots(figsize=(3.6, 3.2), layout="constrained")
    im = overlay(ax, image, cam, alpha)
    if mask is not None and label is not None:
        outline(ax, mask, None, label - 1)
    cam_colorbar(fig, im, ax)
    ax.set_title(title, fontsize=9)
    return fig


def plot_cam_before_after(images: torch.Tensor, before: torch.Tensor, after: torch.Tensor, masks: torch.Tensor,
                          classes: Sequence[int], names: Sequence[str],
                          titles: tuple[str, str] = ("baseline (round 0)", "CONTA"),
                          surround: torch.Tensor | None = None, question: str = "") -> Figure:
    """Rows of image | CAM before | CAM after | after - before. CAMs on one 0-1 scale; the differences on one
    symmetric scale across all rows (a 0.02 change and a 0.3 change look different); object and context
    outlined on every panel.

    Args:
        images: (N, 3, H, W). before, after: (N, H, W) CAMs of class ``classes[i]`` (index k, label k + 1).
        masks: (N, H, W) ground truth. surround: (N, H, W) context patches (k + 1 on class k's) or None.
        question: the figure's title (what it answers).
    """
    n = images.shape[0]
    diffs = (after - before).detach().float().cpu()
    lim = max(float(diffs.abs().max()), 1e-3)
    fig, axes = plt.subplots(n, 4, figsize=(10.0, 2.3 * n + 0.8), squeeze=False, layout="constrained")
    cam_im = diff_im = None
    for i in range(n):
        k = int(classes[i])
        axes[i, 0].imshow(to_image(images[i]))
        axes[i, 0].set_ylabel(names[k], fontsize=9)
        cam_im = overlay(axes[i, 1], images[i], before[i])
        overlay(axes[i, 2], images[i], after[i])
        axes[i, 3].imshow(to_image(images[i]), alpha=0.35)
        diff_im = axes[i, 3].imshow(diffs[i].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.85)
        for j, ax in enumerate(axes[i]):
            if j:
                outline(ax, masks[i], None if surround is None else surround[i], k,
                        "black" if j == 3 else "white")
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, t in zip(axes[0], ("image", *titles, "after - before")):
        ax.set_title(t, fontsize=9)
    cam_colorbar(fig, cam_im, axes[:, 1:3])
    fig.colorbar(diff_im, ax=axes[:, 3].tolist(), fraction=0.05, pad=0.01, label="CAM change (one scale, all rows)")
    outline_legend(fig, surround is not None)
    fig.suptitle(question or "Where does the CAM change after the adjustment?", fontsize=10)
    return fig


def plot_cam_grid(images: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                  names: Sequence[str], per_image: int = 3, surround: torch.Tensor | None = None,
                  question: str = "") -> Figure:
    """One row per image: the image, then the CAM of each present class (up to ``per_image``) with the object
    and its paired context outlined. cams: (N, C, H, W) in [0, 1]."""
    n = images.shape[0]
    fig, axes = plt.subplots(n, 1 + per_image, figsize=(2.2 * (1 + per_image) + 0.6, 2.1 * n + 0.7),
                             squeeze=False, layout="constrained")
    im = None
    for i in range(n):
        axes[i, 0].imshow(to_image(images[i]))
        present = torch.nonzero(labels[i]).flatten().tolist()[:per_image]
        for j in range(per_image):
            ax = axes[i, 1 + j]
            if j < len(present):
                k = present[j]
                im = overlay(ax, images[i], cams[i, k])
                outline(ax, masks[i], None if surround is None else surround[i], k)
                ax.set_title(names[k], fontsize=8)
            else:
                ax.axis("off")
        axes[i, 0].set_xticks([])
        axes[i, 0].set_yticks([])
    cam_colorbar(fig, im, axes[:, 1:])
    outline_legend(fig, surround is not None)
    fig.suptitle(question or "Where does each present class's CAM sit?", fontsize=10)
    return fig


def plot_masks_grid(images: torch.Tensor, rows: dict[str, torch.Tensor], names: Sequence[str] | None = None,
                    question: str = "") -> Figure:
    """Columns = images; first row the images, then one row per named (N, H, W) label map, with a legend of the
    label colours (``names``: the class names; white = ignored)."""
    n = images.shape[0]
    r = 1 + len(rows)
    fig, axes = plt.subplots(r, n, figsize=(1.8 * n, 1.85 * r + 0.9), squeeze=False, layout="constrained")
    for j in range(n):
        axes[0, j].imshow(to_image(images[j]))
        for i, m in enumerate(rows.values(), start=1):
            axes[i, j].imshow(colorize(m[j]), interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i, name in enumerate(["image", *rows], start=0):
        axes[i, 0].set_ylabel(name, fontsize=8)
    if names is not None:
        ids = sorted({int(v) - 1 for m in rows.values() for v in torch.unique(m) if 0 < int(v) < 255})
        class_legend(fig, names, ids, ignore=any(bool((m == 255).any()) for m in rows.values()))
    if question:
        fig.suptitle(question, fontsize=10)
    return fig


def plot_threshold_sweep(sweep: dict[str, dict[str, float]], chosen: float, fixed: float,
                         title: str = "seed mIoU on val against the background threshold") -> Figure:
    """The val sweep that picks the background threshold (``metrics[seed][val_sweep]``); the title warns when
    the best value sits at an end of the grid (the grid may be too short)."""
    ts = sorted(float(t) for t in sweep)
    vals = [sweep[str(t)]["miou"] if str(t) in sweep else sweep[f"{t}"]["miou"] for t in ts]
    fig, ax = plt.subplots(figsize=(4.6, 3.2), layout="constrained")
    ax.plot(ts, vals, "o-", ms=3)
    ax.axvline(chosen, c="tab:green", ls="--", lw=1, label=f"best on val ({chosen:.2f})")
    ax.axvline(fixed, c="tab:red", ls=":", lw=1, label=f"IRNet fixed ({fixed:.2f})")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("seed mIoU on val")
    if ts and np.isclose(chosen, ts[0]) or ts and np.isclose(chosen, ts[-1]):
        title += "\nwarning: the best threshold is at the end of the grid"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def plot_photo_cams(image: torch.Tensor, cams: dict[str, torch.Tensor], mask: torch.Tensor | None = None,
                    voc_id: int | None = None, question: str = "") -> Figure:
    """A real photo and one CAM per method (e.g. the analytic CAM and Grad-CAM of the same class), on the 0-1
    scale with one colour bar; with a ground truth, the class's object outlined (white) and every other
    object dashed (green), so a CAM spilling onto neighbours (chairs around a table) shows."""
    fig, axes = plt.subplots(1, 1 + len(cams), figsize=(3.6 * (1 + len(cams)) + 0.6, 3.4), squeeze=False,
                             layout="constrained")
    axes[0, 0].imshow(to_image(image))
    axes[0, 0].set_title("photo", fontsize=9)
    axes[0, 0].set_xticks([])
    axes[0, 0].set_yticks([])
    im = None
    for ax, (title, cam) in zip(axes[0, 1:], cams.items()):
        im = overlay(ax, image, cam)
        if mask is not None and voc_id is not None:
            others = torch.where((mask != voc_id) & (mask != 0) & (mask != 255), 1, 0)
            outline(ax, torch.where(mask == voc_id, 1, 0), others, 0)
        ax.set_title(title, fontsize=9)
    cam_colorbar(fig, im, axes[0, 1:])
    if mask is not None and voc_id is not None:
        outline_legend(fig, True)
        fig.legends[-1].get_texts()[-1].set_text("other objects (ground truth)")
    if question:
        fig.suptitle(question, fontsize=10)
    return fig
