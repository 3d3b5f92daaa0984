"""Drawing primitives every figure shares: label colours, image conversion, CAM overlays with their colour bar,
object and context outlines, class legends, and the rule for which class an image's CAM panel shows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.rcParams.setdefault("figure.max_open_warning", 0)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

CAM_LABEL = "CAM (normalised, 0-1)"
OBJECT_COLOUR, CONTEXT_COLOUR = "white", "lime"


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


def overlay(ax: Any, image: torch.Tensor, heat: torch.Tensor | None, alpha: float = 0.5, cmap: str = "jet",
            vmin: float = 0.0, vmax: float = 1.0) -> Any:
    """The image with ``heat`` (H, W) drawn over it on a fixed scale; returns the heat's image (for a colour
    bar) or None."""
    ax.imshow(to_image(image))
    im = None
    if heat is not None:
        im = ax.imshow(heat.detach().float().cpu().numpy(), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def contours(ax: Any, mask: torch.Tensor, label: int, color: str = OBJECT_COLOUR, linestyle: str = "-") -> None:
    """The outline of ``mask == label`` (nothing when the label is absent or fills the image)."""
    m = (mask.cpu().numpy() == label).astype(float)
    if 0 < m.sum() < m.size:
        ax.contour(m, levels=[0.5], colors=color, linewidths=1.0, linestyles=linestyle)


def outline(ax: Any, mask: torch.Tensor, surround: torch.Tensor | None, k: int, object_colour: str = OBJECT_COLOUR
            ) -> None:
    """Object (solid) and, where the dataset has it, its paired context patch (dashed) of class index k."""
    contours(ax, mask, k + 1, object_colour)
    if surround is not None:
        contours(ax, surround, k + 1, CONTEXT_COLOUR, "--")


def outline_legend(fig: Any, context: bool) -> None:
    """What the outlines mean, once per figure."""
    handles = [Patch(facecolor="none", edgecolor="black", label="object (ground truth)")]
    if context:
        handles.append(Patch(facecolor="none", edgecolor=CONTEXT_COLOUR, linestyle="--", label="its paired context"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.02))


def cam_colorbar(fig: Any, im: Any, axes: Any, label: str = CAM_LABEL) -> Any:
    """One colour bar for every CAM panel of ``axes`` (they share the scale)."""
    if im is None:
        return None
    return fig.colorbar(im, ax=np.asarray(axes).ravel().tolist(), fraction=0.025, pad=0.01, label=label)


def class_legend(fig: Any, names: Sequence[str], ids: Sequence[int] | None = None, context: bool = False,
                 ignore: bool = False) -> None:
    """Legend of label colours: class id k + 1 -> names[k] (``ids``: the class indices to list, default all).
    ``context``: say that a context patch has its class's colour; ``ignore``: white = ignored (255)."""
    pal = label_palette()
    ids = range(len(names)) if ids is None else ids
    handles = [Patch(color=pal[k + 1] / 255, label=names[k]) for k in ids]
    handles.insert(0, Patch(color=pal[0] / 255, label="background"))
    if ignore:
        handles.append(Patch(facecolor="white", edgecolor="grey", label="ignored (255)"))
    title = "label colours" + (" (a context patch has the colour of the class it pairs with)" if context else "")
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 8), fontsize=7, title=title,
               title_fontsize=7, frameon=False, bbox_to_anchor=(0.5, 0.0))


def class_to_show(cams: torch.Tensor, labels: torch.Tensor, surround: torch.Tensor | None = None) -> int:
    """The class index an image's CAM panel shows: of the classes present, the one whose CAM puts the most mass
    on its own paired context (where it leaks most); without context masks, the present class with the
    largest CAM mass. ``cams``: (C, H, W) in [0, 1]; ``labels``: (C,)."""
    present = torch.nonzero(labels).flatten().tolist()
    if not present:
        return 0
    if surround is None:
        return max(present, key=lambda k: float(cams[k].sum()))

    def leak(k: int) -> float:
        patch = surround == k + 1
        return float(cams[k][patch].sum() / cams[k].sum().clamp_min(1e-8)) if patch.any() else -1.0

    return max(present, key=leak)


CLASS_RULE = "per image, the present class whose CAM puts most of its mass on its paired context"
