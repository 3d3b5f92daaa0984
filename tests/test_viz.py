"""Every plot returns a Figure headlessly; the explorer's logic runs without a browser."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from conta_kit import viz  # noqa: E402
from conta_kit.explore import CamExplorer  # noqa: E402
from conta_kit.rounds import summarize  # noqa: E402

NAMES = ["cow", "boat", "car"]


def _pixels(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def test_every_plot_returns_a_figure():
    imgs, cams = torch.rand(2, 3, 16, 16), torch.rand(2, 16, 16)
    masks = torch.zeros(2, 16, 16, dtype=torch.long)
    masks[:, 4:10, 4:10] = 1
    summary = summarize({s: [{"seed": {"miou_fixed": 0.2 + s / 10}}, {"seed": {"miou_fixed": 0.3}}] for s in (0, 1)})
    figs = [
        viz.plot_cam_overlay(imgs[0], cams[0], "cow", mask=masks[0], label=1),
        viz.plot_cam_before_after(imgs, cams, cams.flip(-1), masks, [0, 0], NAMES),
        viz.plot_prototypes(torch.rand(3, 6, 6), NAMES, prior=[1 / 3] * 3),
        viz.plot_prototype_rounds([torch.rand(3, 6, 6), torch.rand(3, 6, 6)], NAMES, [0, 1]),
        viz.plot_attention(torch.softmax(torch.rand(5, 3), 1), NAMES),
        viz.plot_confusion(torch.randint(0, 9, (4, 4)), ["bg", *NAMES]),
        viz.plot_grouped_bars({"before": [0.5, 0.4, None], "after": [0.3, 0.2, 0.1]}, NAMES, "leakage"),
        viz.plot_round_curves(summary, ["seed_miou_fixed"]),
        viz.plot_masks_grid(imgs, {"gt": masks, "pseudo": masks.flip(-1)}),
        viz.plot_class_bars([0.1, 0.2, 0.3], NAMES, "IoU"),
        viz.plot_cooccurrence(torch.eye(3).tolist(), NAMES),
    ]
    for fig in figs:
        assert isinstance(fig, Figure) and len(_pixels(fig)) > 1000


def _explorer():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 3, 20, 20, generator=g)
    masks = torch.zeros(3, 20, 20, dtype=torch.long)
    masks[:, 5:12, 5:12] = 1
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1]])
    cams = {0: {True: torch.rand(3, 3, 20, 20, generator=g)},
            1: {True: torch.rand(3, 3, 20, 20, generator=g), False: torch.rand(3, 3, 20, 20, generator=g)}}
    return CamExplorer(imgs, masks, labels, cams, NAMES)


def test_explorer_render_reacts_to_every_setting():
    ex = _explorer()
    base = _pixels(ex.render(0, 0, 1, 0.15, 0.5, True))
    for change in ({"index": 2}, {"cls": 2}, {"round_index": 0}, {"threshold": 0.6}, {"opacity": 0.9},
                   {"m_term": False}):
        kw = {"index": 0, "cls": 0, "round_index": 1, "threshold": 0.15, "opacity": 0.5, "m_term": True, **change}
        assert _pixels(ex.render(**kw)) != base, change
    with pytest.raises(ValueError, match="round 5 not loaded"):
        ex.render(round_index=5)
    assert isinstance(ex.show(interactive=False), Figure)  # headless: a static grid, nothing waits


def test_explorer_widgets_drive_the_output():
    pytest.importorskip("ipywidgets")
    ex = _explorer()
    box = ex.show(interactive=True)
    assert box.children  # a VBox of controls and an output area
    first = _pixels(ex.last_figure)
    ex.controls["threshold"].value = 0.7
    after_threshold = _pixels(ex.last_figure)
    ex.controls["m_term"].value = False
    after_toggle = _pixels(ex.last_figure)
    ex.controls["index"].value = 1  # a new image selects one of its own classes
    assert ex.controls["cls"].value == 1
    assert len({first, after_threshold, after_toggle, _pixels(ex.last_figure)}) == 4


def test_explorer_rejects_mismatched_cams():
    ex = _explorer()
    with pytest.raises(ValueError, match="cams\\[0\\]\\[True\\] has shape"):
        CamExplorer(ex.images, ex.masks, ex.labels, {0: {True: torch.rand(3, 2, 20, 20)}}, NAMES)
