"""An interactive CAM explorer (ipywidgets) with a static equivalent for headless runs.

Pick an image, a class and a round (or an arm: ``"conta_gt"``, CONTA over ground-truth C and x_m, so the
ingredients switch between the pipeline's pseudo-masks and the truth; ``"oracle"``); slide the background
threshold and the overlay opacity; toggle the M term; the CAM, the pseudo-mask it gives and the ground truth
update. Everything shown is computed up
front by :meth:`CamExplorer.from_run`, so moving a control only redraws (:meth:`CamExplorer.render`,
testable without a browser). Under papermill there is no live front end: call ``show(interactive=False)``
(what the notebooks do when run by ``conta-kit run``) and a static grid is drawn instead.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from ..cam import cams_to_labels, compute_cams
from ..config import RunCfg
from ..io import RunLayout
from ..pipeline.rounds import load_round_classifier
from .draw import cam_colorbar, class_legend, class_to_show, colorize, outline, outline_legend, overlay, to_image


class CamExplorer:
    """CAMs of a few images for several rounds, with and without the M term.

    Args:
        images: (N, 3, H, W). masks: (N, H, W) ground truth. labels: (N, C).
        cams: ``{round: {True: (N, C, H, W), False: ...}}`` (False = without the M term; round 0 has only True);
            a key is a round index or an arm name (``"conta_gt"``, ``"oracle"``).
        class_names: C names.
        surround: (N, H, W) context patches (k + 1 on class k's paired context) or None; drawn dashed on every
            CAM panel.
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                 cams: dict[int, dict[bool, torch.Tensor]], class_names: list[str],
                 surround: torch.Tensor | None = None) -> None:
        if not cams:
            raise ValueError("cams is empty: give at least one round")
        for r, d in cams.items():
            for t, c in d.items():
                if c.shape[:2] != labels.shape or c.shape[2:] != images.shape[2:]:
                    raise ValueError(f"cams[{r}][{t}] has shape {tuple(c.shape)}, expected "
                                     f"{(*labels.shape, *images.shape[2:])}")
        self.images, self.masks, self.labels, self.cams, self.surround = images, masks, labels, cams, surround
        self.class_names = list(class_names)
        self.last_figure: Any = None
        #: rounds in order, then the arms
        self.keys: list[int | str] = sorted(k for k in cams if isinstance(k, int)) + \
            [k for k in cams if not isinstance(k, int)]
        self.last_round = max((k for k in cams if isinstance(k, int)), default=self.keys[-1])

    @staticmethod
    def label(key: int | str) -> str:
        """How a round or an arm is named in titles and the dropdown."""
        return {"conta_gt": "CONTA, true C and x_m", "oracle": "oracle (rho = chance)"}.get(key, f"round {key}") \
            if not isinstance(key, int) else f"round {key}"

    @classmethod
    def from_run(cls, cfg: RunCfg, seed_dir: str | Path, dataset: Any, split: str = "val",
                 indices: list[int] | None = None, rounds: list[int | str] | None = None) -> CamExplorer:
        """Load every round's classifier (and the ``conta_gt`` arm's, where it was run) from a seed folder of
        :func:`~conta_kit.pipeline.rounds.run_conta`; ``rounds`` picks rounds and arms."""
        layout = RunLayout(seed_dir)
        if rounds is None:
            rounds = [t for t in layout.rounds() if layout.round(t).checkpoint("classifier").exists()]
            rounds += ["conta_gt"] if layout.conta_gt.final_classifier.exists() else []
        if not rounds:
            raise FileNotFoundError(f"no trained round under {seed_dir}")
        indices = list(range(min(8, len(dataset)))) if indices is None else list(indices)
        items = [dataset[i] for i in indices]
        images = torch.stack([it["image"] for it in items])
        masks = torch.stack([it["mask"] for it in items])
        labels = torch.stack([it["labels"] for it in items])
        b = cfg.baseline
        cams: dict[int | str, dict[bool, torch.Tensor]] = {}
        for r in rounds:
            model, x_m = load_round_classifier(cfg, seed_dir, r, dataset.num_classes)
            if x_m is None:
                cams[r] = {True: compute_cams(model, images, labels, scales=b.cam_scales, flip=b.cam_flip)}
            else:
                xm = x_m[split][indices].float() / 255.0
                on, off = compute_cams(model, images, labels, scales=b.cam_scales, flip=b.cam_flip, x_m=xm,
                                       m_term="both")
                cams[r] = {True: on, False: off}
        surround = torch.stack([it["surround"] for it in items]) if "surround" in items[0] else None
        return cls(images, masks, labels, cams, list(dataset.class_names), surround)

    def present(self, index: int) -> list[int]:
        """Class indices present in image ``index``."""
        return torch.nonzero(self.labels[index]).flatten().tolist()

    def render(self, index: int = 0, cls: int | None = None, round_index: int | str | None = None,
               threshold: float = 0.15, opacity: float = 0.5, m_term: bool = True) -> Any:
        """Figure: the CAM of class ``cls`` over the image, the pseudo-mask at ``threshold``, the ground truth."""
        r = self.last_round if round_index is None else round_index
        if r not in self.cams:
            raise ValueError(f"round {r!r} not loaded; rounds: {self.keys}")
        present = self.present(index)
        k = (present[0] if present else 0) if cls is None else cls
        cams = self.cams[r][m_term if m_term in self.cams[r] else True]
        fig, axes = plt.subplots(1, 3, figsize=(9.0, 2.9), layout="constrained")
        im = overlay(axes[0], self.images[index], cams[index, k], alpha=opacity)
        outline(axes[0], self.masks[index], None if self.surround is None else self.surround[index], k)
        axes[0].set_title(f"CAM {self.class_names[k]}, {self.label(r)}"
                          + ("" if m_term or False not in self.cams[r] else ", M = 0"), fontsize=9)
        pseudo = cams_to_labels(cams[index : index + 1], self.labels[index : index + 1], threshold)[0]
        axes[1].imshow(colorize(pseudo), interpolation="nearest")
        axes[1].set_title(f"CAM labels, background {threshold:.2f}", fontsize=9)
        axes[2].imshow(to_image(self.images[index]))
        axes[2].imshow(colorize(self.masks[index]), alpha=0.6, interpolation="nearest")
        axes[2].set_title("ground truth", fontsize=9)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        cam_colorbar(fig, im, axes[0])
        self.last_figure = fig
        return fig

    def static(self, count: int = 3, threshold: float = 0.15) -> Any:
        """What the widget shows, for the first images at once: the CAM of the first round, the last round (and
        without M) and the extra arms, the last round's CAM labels at ``threshold`` and the ground truth; one CAM
        colour bar, a label legend. The class of a row: the present class whose first CAM puts most of its mass
        on its paired context (without context masks: the largest CAM mass)."""
        first, last = self.keys[0], self.last_round
        cols = [(first, True), (last, True)] + ([(last, False)] if False in self.cams[last] else [])
        cols += [(k, True) for k in self.keys if isinstance(k, str)]
        n = min(count, self.images.shape[0])
        width = len(cols) + 2
        fig, axes = plt.subplots(n, width, figsize=(2.4 * width + 0.6, 2.4 * n + 0.9), squeeze=False,
                                 layout="constrained")
        im, shown = None, set()
        for i in range(n):
            k = class_to_show(self.cams[first][True][i], self.labels[i],
                              None if self.surround is None else self.surround[i])
            for j, (r, t) in enumerate(cols):
                im = overlay(axes[i, j], self.images[i], self.cams[r][t][i, k])
                outline(axes[i, j], self.masks[i], None if self.surround is None else self.surround[i], k)
                axes[i, j].set_title(f"{self.class_names[k]}: {self.label(r)}" + ("" if t else ", M = 0"), fontsize=8)
            pseudo = cams_to_labels(self.cams[last][True][i : i + 1], self.labels[i : i + 1], threshold)[0]
            axes[i, -2].imshow(colorize(pseudo), interpolation="nearest")
            axes[i, -2].set_title(f"CAM labels, {self.label(last)}\nbackground threshold {threshold:.2f}", fontsize=8)
            axes[i, -1].imshow(to_image(self.images[i]))
            axes[i, -1].imshow(colorize(self.masks[i]), alpha=0.6, interpolation="nearest")
            axes[i, -1].set_title("ground truth", fontsize=8)
            shown |= set(self.present(i))
            for ax in axes[i, -2:]:
                ax.set_xticks([])
                ax.set_yticks([])
        cam_colorbar(fig, im, axes[:, : len(cols)])
        class_legend(fig, self.class_names, sorted(shown))
        outline_legend(fig, self.surround is not None)
        fig.suptitle("The explorer's views, side by side (the widget lets you pick image, class, round, threshold)",
                     fontsize=9)
        return fig

    def widget(self) -> Any:
        """An ipywidgets box; every control change re-renders into its output area."""
        import ipywidgets as w  # optional front end: only the live widget needs it
        from IPython.display import Image, display

        n = self.images.shape[0]
        controls = {
            "index": w.IntSlider(0, 0, n - 1, description="image"),
            "cls": w.Dropdown(options=[(c, i) for i, c in enumerate(self.class_names)], value=self._default_cls(0),
                              description="class"),
            "round_index": w.Dropdown(options=[(self.label(k), k) for k in self.keys], value=self.last_round,
                                      description="round"),
            "threshold": w.FloatSlider(value=0.15, min=0.0, max=1.0, step=0.01, description="background"),
            "opacity": w.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="opacity"),
            "m_term": w.Checkbox(value=True, description="M term"),
        }
        out = w.Output()

        def redraw(*_: Any) -> None:
            # the figure goes out as PNG bytes: displaying a Figure object needs the inline backend's formatter,
            # which a front end may not have registered (in JupyterLab the output then showed "<Figure ...>")
            fig = self.render(**{k: c.value for k, c in controls.items()})
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
            plt.close(fig)  # and not drawn a second time below the widget
            with out:
                out.clear_output(wait=True)
                display(Image(data=buf.getvalue(), format="png"))

        def new_image(change: dict[str, Any]) -> None:
            controls["cls"].value = self._default_cls(change["new"])

        controls["index"].observe(new_image, names="value")
        for c in controls.values():
            c.observe(redraw, names="value")
        redraw()
        self.controls = controls
        return w.VBox([w.HBox(list(controls.values())[:3]), w.HBox(list(controls.values())[3:]), out])

    def _default_cls(self, index: int) -> int:
        present = self.present(index)
        return present[0] if present else 0

    def show(self, interactive: bool | None = None) -> Any:
        """The widget where a person is looking, the static grid otherwise. ``interactive=None`` decides: the
        widget in a live front end with ipywidgets installed, the static grid in a headless run (papermill,
        nbconvert) or without ipywidgets; ``True`` asks for the widget (static, with a note, when ipywidgets is
        missing)."""
        from ..notebook import headless

        if interactive is None:
            interactive = not headless()
        if interactive:
            try:
                return self.widget()
            except ImportError:
                print("ipywidgets is not installed (pip install 'conta_kit[notebooks]'): the static view instead")
        return self.static()
