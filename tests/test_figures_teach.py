"""Figures that teach, checked on the figure objects: colour bars, one symmetric scale for differences, object and
context outlines, legends, titles that ask the figure's question, and the class-per-image rule."""

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.contour import ContourSet  # noqa: E402

from conta_kit.report import viz  # noqa: E402
from conta_kit.report.draw import CAM_LABEL, class_to_show  # noqa: E402

NAMES = ["cow", "boat", "car"]


def _scene(n=2, size=16):
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(n, 3, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    masks[:, 4:9, 4:9] = 1
    surround = torch.zeros(n, size, size, dtype=torch.long)
    surround[:, 9:14, 2:12] = 1  # the cow's paired context patch, under it
    labels = torch.tensor([[1.0, 0, 0]] * n)
    return imgs, masks, surround, labels


def _colorbars(fig):
    return [a for a in fig.axes if a.get_label() == "<colorbar>"]


def _contours(ax, style=None):
    sets = [c for c in ax.collections if isinstance(c, ContourSet)]
    if style is None:
        return sets
    return [c for c in sets if any(ls[1] is not None for ls in c.get_linestyles()) == (style == "dashed")]


def test_cam_grid_has_one_cam_colorbar_outlines_of_object_and_context_and_a_question():
    imgs, masks, surround, labels = _scene()
    cams = torch.rand(2, 3, 16, 16)
    fig = viz.plot_cam_grid(imgs, cams, labels, masks, NAMES, surround=surround, question="Where is the CAM?")
    (bar,) = _colorbars(fig)
    assert bar.get_ylabel() == CAM_LABEL
    panels = [a for a in fig.axes if a.images and a.get_title() == "cow"]
    assert len(panels) == 2 and all(a.images[-1].get_clim() == (0.0, 1.0) for a in panels)
    assert all(_contours(a, "solid") and _contours(a, "dashed") for a in panels)
    assert fig._suptitle.get_text() == "Where is the CAM?"
    assert fig.legends, "the outlines' legend is missing"


def test_before_after_differences_share_one_symmetric_scale_across_rows():
    imgs, masks, surround, labels = _scene()
    before = torch.rand(2, 16, 16)
    after = before.clone()
    after[0] += 0.3  # a large change in row 0, a tiny one in row 1
    after[1] += 0.02
    fig = viz.plot_cam_before_after(imgs, before, after, masks, [0, 0], NAMES, surround=surround)
    diffs = [a for a in fig.axes if a.get_title() == "after - before" or (a.images and a.images[-1].get_cmap().name
                                                                          == "RdBu_r")]
    clims = {a.images[-1].get_clim() for a in diffs}
    assert len(clims) == 1 and np.isclose(next(iter(clims))[1], 0.3, atol=1e-5)  # the same +-0.3 for both rows
    assert next(iter(clims))[0] == -next(iter(clims))[1]
    bars = {b.get_ylabel() for b in _colorbars(fig)}
    assert bars == {CAM_LABEL, "CAM change (one scale, all rows)"}
    cam_panels = [a for a in fig.axes if len(a.images) == 2 and a.images[-1].get_cmap().name == "jet"]
    assert len(cam_panels) == 4 and all(_contours(a, "dashed") for a in cam_panels)
    assert fig._suptitle.get_text().endswith("?")


def test_label_maps_carry_a_colour_legend_and_prototypes_a_colorbar():
    imgs, masks, _, _ = _scene()
    fig = viz.plot_masks_grid(imgs, {"gt": masks, "pseudo": torch.where(masks > 0, 255, 0)}, NAMES)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == ["background", "cow", "ignored (255)"]
    fig = viz.plot_prototypes(torch.rand(3, 6, 6), NAMES)
    assert len(_colorbars(fig)) == 1


def test_round_curves_put_scores_and_context_measures_on_their_own_labelled_axes():
    from conta_kit.summary import summarize

    one = summarize({0: [{"seed": {"miou_fixed": 0.2, "cam_leakage": 0.4}}, {"seed": {"miou_fixed": 0.3,
                                                                                        "cam_leakage": 0.3}}]})
    fig = viz.plot_round_curves(one, ["seed_miou_fixed", "cam_leakage"])
    assert [a.get_ylabel() for a in fig.axes] == ["score (higher is better)", "context measure (lower is better)"]
    assert "one seed" in fig._suptitle.get_text() and "nan" not in fig._suptitle.get_text()


def test_titles_say_what_a_reader_needs():
    fig = viz.plot_confusion(torch.eye(3), NAMES)
    assert "row-normalised" in fig.axes[0].get_title()
    sweep = {"0.1": {"miou": 0.2}, "0.5": {"miou": 0.3}, "0.9": {"miou": 0.4}}
    assert "end of the grid" in viz.plot_threshold_sweep(sweep, 0.9, 0.15).axes[0].get_title()
    assert "end of the grid" not in viz.plot_threshold_sweep(sweep, 0.5, 0.15).axes[0].get_title()
    fig = viz.plot_class_bars([0.8, 0.9, 0.85], NAMES, "paired", ref=0.9, ref_label="rho = 0.9")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["rho = 0.9"]


def test_the_class_shown_is_the_one_that_leaks_most_onto_its_context():
    surround = torch.zeros(8, 8, dtype=torch.long)
    surround[6:, :] = 2  # class index 1's context
    cams = torch.zeros(3, 8, 8)
    cams[0, :2] = 1.0  # class 0: all its mass away from any context
    cams[1, 5:] = 1.0  # class 1: most of its mass on its own context
    labels = torch.tensor([1.0, 1.0, 0.0])
    assert class_to_show(cams, labels, surround) == 1
    assert class_to_show(cams, torch.tensor([1.0, 0.0, 0.0]), surround) == 0  # only present classes
    assert class_to_show(cams, labels) == 1  # without context masks: the larger CAM mass (16 vs 24 pixels)


def test_the_explorer_static_view_has_cam_labels_ground_truth_and_a_colorbar_and_headless_picks_it():
    from matplotlib.figure import Figure

    from conta_kit.notebook import headless
    from conta_kit.report.explore import CamExplorer

    imgs, masks, surround, labels = _scene(3, 20)
    cams = {0: {True: torch.rand(3, 3, 20, 20)}, 1: {True: torch.rand(3, 3, 20, 20)}}
    ex = CamExplorer(imgs, masks, labels, cams, NAMES, surround)
    assert headless()  # a test process is not a live front end
    fig = ex.show()  # interactive=None: decided by headless()
    assert isinstance(fig, Figure)
    titles = [a.get_title() for a in fig.axes]
    assert any(t.startswith("CAM labels") and "threshold 0.15" in t for t in titles)
    assert "ground truth" in titles and len(_colorbars(fig)) == 1 and fig.legends
    cam_panels = [a for a in fig.axes if a.get_title().startswith("cow: round")]
    assert len(cam_panels) == 6 and all(_contours(a, "solid") and _contours(a, "dashed") for a in cam_panels)


def test_conclusion_tables_are_formatted():
    from conta_kit.report.conclude import table

    text = table({"baseline": {"miou": 0.123456789, "tiny": 0.00012}, "oracle": {"miou": 0.5}}).data
    assert "0.123" in text and "0.123456" not in text and "1.2e-04" in text and "| oracle |" in text


def test_the_index_page_tells_the_story_from_the_run(tmp_path):
    """index.html from a run folder: settings, the headline numbers of every arm, each notebook's conclusion and
    its figures in story order with captions, links to the executed notebooks; parsed, not just present."""
    import json
    from html.parser import HTMLParser

    from conta_kit.io import Run, write_json
    from conta_kit.report.index_page import build

    run = Run.create("main", tmp_path, params={"command": "run", "preset": "smoke", "overrides": {"rounds": 1}})
    arm = lambda miou: {"seed": {"miou_best": miou, "miou_fixed": miou - 0.01, "cam_leakage": 0.4},  # noqa: E731
                        "pseudo": {"miou": miou}, "segmentation": {"miou": miou}}
    (run.path / "seed_0").mkdir()
    write_json(run.path / "seed_0" / "metrics.json", {"conta": {"rounds": [arm(0.30), arm(0.31)],
                                                                 "oracle": arm(0.40), "conta_gt": arm(0.29)}})
    run.log_metrics("conclusions", {"02_classifier_cams": "**Baseline CAMs.** Seed mIoU 0.300.\n\n- a\n- b"})
    for stem in ("02_threshold_sweep", "02_cams_val", "02_zzz_extra"):
        (run.figures / f"{stem}.png").write_bytes(b"png")
    index = [{"notebook": "01_data.ipynb", "status": "ok", "seconds": 3.0},
             {"notebook": "02_classifier_cams.ipynb", "status": "ok", "seconds": 4.0}]

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.text, self.imgs, self.links = [], [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            a = dict(attrs)
            if tag == "img":
                self.imgs.append(a["src"])
            if tag == "a":
                self.links.append(a["href"])

        def handle_data(self, data):
            self.text.append(data)

    page = Page()
    page.feed(build(run, index))
    text = " ".join(page.text)
    assert "preset smoke" in text.replace("  ", " ") and "{'rounds': 1}" in text
    for row in ("baseline (round 0)", "CONTA round 1", "CONTA, true C and x_m", "oracle (rho = chance)"):
        assert row in text
    assert "0.400" in text and "one seed (0)" in text and "nan" not in text
    assert page.imgs == ["figures/02_cams_val.png", "figures/02_threshold_sweep.png", "figures/02_zzz_extra.png"]
    assert "Baseline CAMs." in text and page.tags.count("li") == 2
    assert {"01_data.ipynb", "02_classifier_cams.ipynb", "metrics.json"} <= set(page.links)
    assert json.loads((run.path / "params.json").read_text())["preset"] == "smoke"


def test_sweep_panels_label_their_scales():
    from conta_kit.report.sweep_plots import plot_sweep

    cell = {"num_seeds": 2, "seed_miou_fixed": {"mean": 0.3, "std": 0.01}, "cam_leakage": {"mean": 0.2, "std": 0.02}}
    summary = {"rounds": 0, "rhos": [0.5, 0.9], "methods": {"baseline": {"0.5": cell, "0.9": cell}}}
    fig = plot_sweep(summary, ("seed_miou_fixed", "cam_leakage"))
    labels = [a.get_ylabel() for a in fig.axes]
    assert all(labels) and labels[1].endswith("(lower is better)") and not labels[0].endswith("better)")


def test_cams_conclusion_names_the_classes_whose_peak_misses_the_object():
    from conta_kit.report import conclude

    seed = {"miou_fixed": 0.2, "miou_best": 0.3, "localisation": {
        "cam_mass_in_object": 0.2, "object_pixel_share": 0.05, "cam_peak_on_object": 0.4,
        "cam_peak_on_object_per_class": [0.8, 0.04, float("nan")]}}
    text = conclude.cams([{"seed": seed}], {}, ["car", "aeroplane", "cow"])
    assert "CAM peak on the object, per class: aeroplane 0.04, car 0.80" in text and "cow" not in text
    assert "per class" not in conclude.cams([{"seed": seed}], {})  # without names: no per-class sentence


def test_cams_conclusion_names_the_classes_whose_peaks_fall_between_their_parts():
    from conta_kit.report import conclude

    loc = {"cam_mass_in_object": 0.2, "object_pixel_share": 0.05, "cam_peak_on_object": 0.4,
           "cam_peak_on_object_per_class": [0.8, 0.2, 0.5], "cam_peak_in_box_per_class": [0.85, 0.6, 0.55]}
    text = conclude.cams([{"seed": {"miou_fixed": 0.2, "miou_best": 0.3, "localisation": loc}}], {},
                         ["car", "aeroplane", "cow"])
    assert "in the object's box but off its pixels" in text and "aeroplane 0.40" in text
    assert "car 0.05" not in text and "cow 0.05" not in text  # small differences are not named
    del loc["cam_peak_in_box_per_class"]  # runs made before the measure
    assert "off its pixels" not in conclude.cams([{"seed": {"localisation": loc}}], {}, ["car", "aeroplane", "cow"])
