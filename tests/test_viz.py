"""Every plot returns a Figure headlessly; the explorer's logic runs without a browser."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from conta_kit.report import viz  # noqa: E402
from conta_kit.report.explore import CamExplorer  # noqa: E402
from conta_kit.summary import summarize  # noqa: E402

NAMES = ["cow", "boat", "car"]


def _pixels(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _array(im):
    return np.asarray(im.get_array())


def _bars(ax):
    return [r.get_height() for r in ax.patches]


def test_plots_draw_their_inputs():
    imgs, cams = torch.rand(2, 3, 16, 16), torch.rand(2, 16, 16)
    masks = torch.zeros(2, 16, 16, dtype=torch.long)
    masks[:, 4:10, 4:10] = 1

    fig = viz.plot_cam_overlay(imgs[0], cams[0], "cow", mask=masks[0], label=1)
    ax, bar = fig.axes  # the panel and its colour bar
    assert ax.get_title() == "cow" and len(ax.images) == 2 and bar.get_label() == "<colorbar>"
    assert np.allclose(_array(ax.images[0]), imgs[0].permute(1, 2, 0).numpy())  # the photo, then the CAM on it
    assert np.allclose(_array(ax.images[1]), cams[0].numpy()) and ax.images[1].get_clim() == (0.0, 1.0)
    assert ax.collections, "the ground-truth contour is missing"
    _pixels(fig)

    after = cams.flip(-1)
    fig = viz.plot_cam_before_after(imgs, cams, after, masks, [0, 2], NAMES)
    image_axes = [a for a in fig.axes if a.images]
    assert len(image_axes) == 8  # 2 rows x (image, before, after, difference), plus colorbars
    assert [a.get_title() for a in image_axes[:4]] == ["image", "baseline (round 0)", "CONTA", "after - before"]
    assert image_axes[0].get_ylabel() == "cow" and image_axes[4].get_ylabel() == "car"
    assert np.allclose(_array(image_axes[3].images[-1]), (after[0] - cams[0]).numpy(), atol=1e-6)
    _pixels(fig)

    protos = torch.rand(3, 6, 6)
    fig = viz.plot_prototypes(protos, NAMES, prior=[0.5, 0.25, 0.25])
    shown = [a for a in fig.axes if a.images]
    assert [a.get_title() for a in shown] == ["cow\nP=0.500", "boat\nP=0.250", "car\nP=0.250"]
    assert all(np.allclose(_array(a.images[0]), protos[i].numpy()) for i, a in enumerate(shown))
    _pixels(fig)

    fig = viz.plot_prototype_rounds([protos, protos * 0.5], NAMES, [0, 1])
    assert len(fig.axes) == 7 and fig.axes[3].get_ylabel() == "C after r1"  # 6 panels and one colour bar
    assert np.allclose(_array(fig.axes[4].images[0]), protos[1].numpy() * 0.5)
    _pixels(fig)

    alpha = torch.softmax(torch.rand(5, 3), 1)
    fig = viz.plot_attention(alpha, NAMES)
    assert np.allclose(fig.axes[0].collections[0].get_array().reshape(5, 3), alpha.numpy())
    _pixels(fig)

    conf = torch.tensor([[2, 2, 0, 0], [0, 4, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    fig = viz.plot_confusion(conf, ["bg", *NAMES])
    cells = fig.axes[0].collections[0].get_array().reshape(4, 4)
    assert np.allclose(cells[0], [0.5, 0.5, 0, 0]) and np.allclose(cells[1], [0, 1, 0, 0])  # rows normalised
    assert fig.axes[0].get_ylabel() == "ground truth" and fig.axes[0].get_xlabel() == "predicted"
    _pixels(fig)

    fig = viz.plot_grouped_bars({"before": [0.5, 0.4, None], "after": [0.3, 0.2, 0.1]}, NAMES, "leakage")
    heights = _bars(fig.axes[0])
    assert np.allclose(heights[:2], [0.5, 0.4]) and np.isnan(heights[2]) and np.allclose(heights[3:], [0.3, 0.2, 0.1])
    assert fig.axes[0].get_ylabel() == "leakage"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["before", "after"]
    _pixels(fig)

    summary = summarize({s: [{"seed": {"miou_fixed": 0.2 + s / 10}}, {"seed": {"miou_fixed": 0.3}}] for s in (0, 1)})
    fig = viz.plot_round_curves(summary, ["seed_miou_fixed"])
    line = fig.axes[0].lines[0]
    assert np.allclose(line.get_xdata(), [0, 1]) and np.allclose(line.get_ydata(), [0.25, 0.3])
    assert fig.axes[0].get_xlabel() == "round (0 = baseline)"
    _pixels(fig)

    fig = viz.plot_masks_grid(imgs, {"gt": masks, "pseudo": masks.flip(-1)})
    assert len(fig.axes) == 6 and [fig.axes[i].get_ylabel() for i in (0, 2, 4)] == ["image", "gt", "pseudo"]
    assert np.array_equal(_array(fig.axes[2].images[0]), viz.colorize(masks[0]))
    _pixels(fig)

    fig = viz.plot_class_bars([0.1, 0.2, 0.3], NAMES, "IoU", "per class")
    assert np.allclose(_bars(fig.axes[0]), [0.1, 0.2, 0.3]) and fig.axes[0].get_title() == "per class"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == NAMES
    _pixels(fig)

    fig = viz.plot_cooccurrence(torch.eye(3).tolist(), NAMES)
    assert np.allclose(fig.axes[0].collections[0].get_array().reshape(3, 3), np.eye(3))
    _pixels(fig)


def _explorer():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 3, 20, 20, generator=g)
    masks = torch.zeros(3, 20, 20, dtype=torch.long)
    masks[:, 5:12, 5:12] = 1
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1]])
    cams = {0: {True: torch.rand(3, 3, 20, 20, generator=g)},
            1: {True: torch.rand(3, 3, 20, 20, generator=g), False: torch.rand(3, 3, 20, 20, generator=g)},
            "conta_gt": {True: torch.rand(3, 3, 20, 20, generator=g), False: torch.rand(3, 3, 20, 20, generator=g)}}
    return CamExplorer(imgs, masks, labels, cams, NAMES)


def test_explorer_render_reacts_to_every_setting():
    ex = _explorer()
    base = _pixels(ex.render(0, 0, 1, 0.15, 0.5, True))
    for change in ({"index": 2}, {"cls": 2}, {"round_index": 0}, {"round_index": "conta_gt"}, {"threshold": 0.6},
                   {"opacity": 0.9}, {"m_term": False}):
        kw = {"index": 0, "cls": 0, "round_index": 1, "threshold": 0.15, "opacity": 0.5, "m_term": True, **change}
        assert _pixels(ex.render(**kw)) != base, change
    with pytest.raises(ValueError, match="round 5 not loaded"):
        ex.render(round_index=5)
    assert ex.keys == [0, 1, "conta_gt"] and ex.last_round == 1
    assert "true C and x_m" in ex.render(round_index="conta_gt").axes[0].get_title()
    grid = ex.show(interactive=False)  # headless: a static grid, nothing waits
    assert isinstance(grid, Figure)
    assert [a.get_title().split(": ")[1] for a in grid.axes[:4]] == ["round 0", "round 1", "round 1, M = 0",
                                                                      "CONTA, true C and x_m"]


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
    assert [v for _, v in ex.controls["round_index"].options] == [0, 1, "conta_gt"]
    ex.controls["round_index"].value = "conta_gt"  # pseudo-mask ingredients -> the true ones
    assert "true C" in ex.last_figure.axes[0].get_title()
    ex.controls["index"].value = 1  # a new image selects one of its own classes
    assert ex.controls["cls"].value == 1
    assert len({first, after_threshold, after_toggle, _pixels(ex.last_figure)}) == 4


def test_explorer_rejects_mismatched_cams():
    ex = _explorer()
    with pytest.raises(ValueError, match="cams\\[0\\]\\[True\\] has shape"):
        CamExplorer(ex.images, ex.masks, ex.labels, {0: {True: torch.rand(3, 2, 20, 20)}}, NAMES)


def test_plot_adjustment_draws_the_change_the_attention_and_m():
    from conta_kit.report.viz_conta import plot_adjustment

    ex = _explorer()
    before, after = ex.cams[0][True][:2, 0], ex.cams[1][True][:2, 0]
    surround = torch.zeros(2, 20, 20, dtype=torch.long)
    surround[:, 12:18, 2:18] = 1
    alpha = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    m = torch.rand(2, 5, 5)
    fig = plot_adjustment(ex.images[:2], before, after, ex.masks[:2], surround, [0, 0], NAMES, alpha, NAMES, m)
    grid = [a for a in fig.axes if a.get_label() != "<colorbar>"]  # 5 panels per row
    assert len(grid) == 10
    diff = grid[2].images[1].get_array()
    assert np.allclose(diff, (after[0] - before[0]).numpy())
    assert [round(b.get_height(), 3) for b in grid[3].patches] == [0.7, 0.2, 0.1]
    assert grid[3].patches[0].get_facecolor() != grid[3].patches[1].get_facecolor()  # the image's class in colour
    assert np.allclose(grid[4].images[0].get_array(), m[0].numpy())
    assert "context: green" in grid[2].get_title()
    lim = float((after - before).abs().max())
    assert grid[2].images[1].get_clim() == grid[7].images[1].get_clim() == (-lim, lim)  # one scale for all rows
    fig = plot_adjustment(ex.images[:2], before, after, ex.masks[:2], None, [0, 0], NAMES, None, [], None)
    assert len([a for a in fig.axes if a.get_label() != "<colorbar>"]) == 6
