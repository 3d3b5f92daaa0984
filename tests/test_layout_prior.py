"""The class-prior scene layout (the default) and the uniform one (the negative control for CONTA)."""

import numpy as np
import pytest
import torch

from conta_kit.data import ConfoundedScenes, collate
from conta_kit.data._layout import CLASS_PRIORS
from conta_kit.methods.conta import build_confounder_set, prototype_quality


def _prototype_cosine(layout, n=240, size=64, grid=8, **options):
    ds = ConfoundedScenes("train", num_images=n, image_size=size, layout=layout, **options)
    b = collate([ds[i] for i in range(n)])
    conf = build_confounder_set([(b["mask"], b["labels"])], ds.num_classes, (grid, grid))
    return prototype_quality(conf, conf)["within_cosine"]


def test_class_prototypes_differ_in_the_prior_layout_and_not_in_the_uniform_one():
    prior, uniform = _prototype_cosine("prior"), _prototype_cosine("uniform")
    assert prior <= 0.5, prior  # the goal for the new default
    assert uniform >= 0.85, uniform  # the old layout: near-identical blobs
    for scale in (1.0, 1.4):  # DataCfg()'s, and the option
        default = _prototype_cosine("prior_strip", object_texture="pattern", object_scale=scale)
        assert default <= 0.5, (scale, default)


def test_objects_stay_in_their_class_band_and_size():
    ds = ConfoundedScenes("train", num_images=200, image_size=96)
    seen = {c: 0 for c in range(ds.num_classes)}
    for i in range(len(ds)):
        for o in ds[i]["meta"]["objects"]:
            if o["rider"]:
                continue
            name = ds.class_names[o["class"]]
            (hlo, hhi), (blo, bhi), _ = CLASS_PRIORS[name]
            y0, x0, y1, x1 = o["bbox"]
            cy, h = (y0 + y1) / 2 / 96, (y1 - y0) / 96
            assert h <= hhi + 1 / 96, (name, h)
            # the centre is the band's, unless the object had to be pulled inside the image
            assert blo - 0.01 <= cy <= bhi + 0.01 or h / 2 >= min(cy, 1 - cy) - 0.02, (name, cy, h)
            seen[o["class"]] += 1
    assert all(v > 10 for v in seen.values()), seen


def test_flyers_fly_high_and_ground_classes_stand_low():
    ds = ConfoundedScenes("train", num_images=300, image_size=64)
    heights = {}
    for i in range(len(ds)):
        item = ds[i]
        for k in torch.nonzero(item["labels"]).flatten().tolist():
            rows = torch.nonzero(item["mask"] == k + 1)[:, 0].float()
            heights.setdefault(ds.class_names[k], []).append(float(rows.mean()) / 64)
    mean = {k: float(np.mean(v)) for k, v in heights.items()}
    assert mean["aeroplane"] < 0.3 and mean["bird"] < 0.45
    assert mean["car"] > 0.7 and mean["train"] > 0.65 and mean["aeroplane"] < mean["boat"] < mean["car"]


def test_class_surround_layout_shapes_the_patch_by_the_class_whichever_context_is_drawn():
    kw = dict(num_images=60, image_size=64, layout="prior_class_surround")
    paired = ConfoundedScenes("train", cooccurrence=1.0, **kw)
    other = ConfoundedScenes("train", cooccurrence=0.0, **kw)
    for i in range(len(paired)):
        a, b = paired[i], other[i]
        assert torch.equal(a["mask"], b["mask"])  # same objects at the same places
        assert torch.equal(a["surround"], b["surround"])  # the same surround region
        present = a["surround_paired"] >= 0
        assert (a["surround_paired"][present] == 1).all() and (b["surround_paired"][present] == 0).all()
        assert torch.equal(a["context_mask"] >= 0, b["context_mask"] >= 0)  # only the texture differs


def _kind_of_box(obj, s):
    """Where an object's patch lies relative to the object: "below" reaches the bottom edge from inside the
    object, "behind" ends at the object's feet, "around" encloses it."""
    (y0, _, y1, _), (cy0, cy1, _, _) = obj["bbox"], obj["surround"]
    if cy1 == s and cy0 > y0:
        return "below"
    if cy1 == min(y1, s) and cy0 <= y0:
        return "behind"
    return "around"


def test_prior_layout_shapes_the_patch_by_the_context_drawn():
    from conta_kit.data._layout import CONTEXT_KINDS

    s = 64
    paired = ConfoundedScenes("train", num_images=80, image_size=s, cooccurrence=1.0)
    chance = ConfoundedScenes("train", num_images=80, image_size=s, cooccurrence=0.0)
    kinds = {}
    for i in range(len(paired)):
        a, b = paired[i], chance[i]
        assert torch.equal(a["mask"], b["mask"])  # the same objects at the same places at every rho
        for item, ds in ((a, paired), (b, chance)):
            for o in item["meta"]["objects"]:
                if o["rider"] or o["context"] < 0:
                    continue
                kind = CONTEXT_KINDS[ds.context_names[o["context"]]]
                if kind != "around":  # an "around" patch clipped at the image edge can look like the others
                    assert _kind_of_box(o, s) == kind, (o, kind)
                own = CLASS_PRIORS[ds.class_names[o["class"]]][2]
                assert o["same_geometry"] == (kind == own)
                if o["paired"]:
                    assert kind == own  # a paired context sits where it does in photos
                k = o["class"]
                if not o["same_geometry"]:
                    assert item["surround_paired"][k] == -1 and not (item["surround"] == k + 1).any()
                kinds.setdefault(item is a, set()).add(kind)
    assert kinds[False] == {"around", "below", "behind"}  # unpaired contexts bring every shape


def test_at_chance_the_patch_shape_says_nothing_about_the_class():
    from conta_kit.data._layout import CONTEXT_KINDS

    ds = ConfoundedScenes("train", num_images=1500, image_size=32, cooccurrence=0.1)  # 1 / 10 contexts: chance
    table = np.zeros((ds.num_classes, 3))
    names = ("around", "below", "behind")
    for i in range(len(ds)):
        for o in ds.render(i)[3]:
            if not o["rider"] and o["context"] >= 0:
                table[o["class"], names.index(CONTEXT_KINDS[ds.context_names[o["context"]]])] += 1
    expected = np.array([3, 6, 1]) / 10  # kinds of the 10 contexts
    share = table / table.sum(1, keepdims=True)
    assert np.abs(share - expected).max() < 0.08, share
    old = ConfoundedScenes("train", num_images=300, image_size=32, cooccurrence=0.1, layout="prior_class_surround")
    for i in range(len(old)):  # the class-surround layout: one shape per class at any rho
        for o in old.render(i)[3]:
            if not o["rider"]:
                assert o["same_geometry"]


def test_surround_marks_visible_context_of_its_own_object():
    ds = ConfoundedScenes("train", num_images=40, image_size=64)
    for i in range(len(ds)):
        it = ds[i]
        region = it["surround"] > 0
        assert (it["context_mask"][region] >= 0).all() and (it["mask"][region] == 0).all()
        for k in torch.unique(it["surround"][region]).tolist():
            assert it["labels"][k - 1] == 1 and it["surround_paired"][k - 1] >= 0


def test_layouts_are_deterministic_and_distinct():
    a = ConfoundedScenes("train", num_images=5, layout="prior", seed=3)
    b = ConfoundedScenes("train", num_images=5, layout="prior", seed=3)
    u = ConfoundedScenes("train", num_images=5, layout="uniform", seed=3)
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(5))
    assert not torch.equal(a[0]["mask"], u[0]["mask"])
    with pytest.raises(ValueError, match="layout must be one of"):
        ConfoundedScenes("train", layout="diagonal")


def test_patch_shape_information_is_gone_at_chance_only_where_the_shape_follows_the_context():
    from conta_kit.data.stats import patch_shape_information

    def bits(layout, rho):
        ds = ConfoundedScenes("train", num_images=600, image_size=32, cooccurrence=rho, layout=layout)
        return patch_shape_information(ds)["mutual_information_bits"]

    assert bits("prior", 0.1) < 0.03 < 0.5 < bits("prior", 0.9)
    assert bits("prior_strip", 0.1) < 0.03
    fixed = bits("prior_class_surround", 0.1)
    assert fixed == pytest.approx(bits("prior_class_surround", 0.9)) and fixed > 1.0
    assert bits("uniform", 0.9) == 0.0


def test_strip_layout_keeps_the_objects_and_frees_the_context_from_the_object():
    from conta_kit.data._layout import CONTEXT_KINDS

    s = 64
    prior = ConfoundedScenes("train", num_images=60, image_size=s, cooccurrence=0.1, seed=2)
    strip = ConfoundedScenes("train", num_images=60, image_size=s, cooccurrence=0.1, seed=2, layout="prior_strip")
    for i in range(len(prior)):
        a, b = prior.render(i)[3], strip.render(i)[3]
        assert [o["bbox"] for o in a] == [o["bbox"] for o in b]  # the same objects at the same places
        assert [o["context"] for o in a] == [o["context"] for o in b]  # and the same contexts
        for o in b:
            if o["rider"] or o["context"] < 0:
                continue
            cy0, cy1, _, _ = o["surround"]
            assert cy1 == s
            if CONTEXT_KINDS[strip.context_names[o["context"]]] == "below":
                assert int(0.45 * s) <= cy0 <= int(0.75 * s)  # a horizon whatever the class
            else:
                assert cy0 == 0  # sky, trees, fog, walls fill the strip


def test_patch_extent_tells_the_class_at_chance_only_where_it_follows_the_object():
    from conta_kit.data.stats import patch_shape_information

    def bits(layout):
        ds = ConfoundedScenes("train", num_images=600, image_size=32, cooccurrence=0.1, layout=layout)
        return patch_shape_information(ds)["extent_information_bits"]

    assert bits("prior") > 0.8  # a ground band starting at a flyer's height: the class, at chance
    assert bits("prior_strip") < 0.05


def test_object_pattern_changes_pixels_only():
    kw = dict(num_images=12, image_size=64, seed=1, layout="prior_strip")
    plain, pattern = ConfoundedScenes("train", **kw), ConfoundedScenes("train", object_texture="pattern", **kw)
    changed = 0
    for i in range(len(plain)):
        a, b = plain[i], pattern[i]
        for key in ("mask", "labels", "context_mask", "surround"):
            assert torch.equal(a[key], b[key]), key
        obj = a["mask"] > 0
        assert torch.equal(a["image"][:, ~obj], b["image"][:, ~obj])  # the background is untouched
        changed += int((a["image"][:, obj] != b["image"][:, obj]).any())
    assert changed == len(plain)
    with pytest.raises(ValueError, match="object_texture"):
        ConfoundedScenes("train", object_texture="fur")


def test_pattern_strength_reaches_the_generator_from_the_config():
    from dataclasses import replace

    from conta_kit.config import DataCfg
    from conta_kit.data.splits import scene_kwargs

    d = replace(DataCfg(), num_train=4)
    kw = dict(split="train", num_images=4, seed=0)
    none, default, strong = (ConfoundedScenes(**kw, **scene_kwargs(replace(d, pattern_strength=v)))
                             for v in (0.0, 0.3, 0.6))
    plain = ConfoundedScenes(**kw, **scene_kwargs(replace(d, object_texture="plain")))
    for i in range(4):
        obj = plain[i]["mask"] > 0
        assert torch.equal(none[i]["image"], plain[i]["image"])  # no contrast: the plain objects
        a = plain[i]["image"][:, obj]
        ratio = float((strong[i]["image"][:, obj] - a).abs().mean() / (default[i]["image"][:, obj] - a).abs().mean())
        assert 1.6 < ratio <= 2.0  # twice the contrast (less where the brighter pixels clip at 1)
    with pytest.raises(ValueError, match="pattern_strength"):
        DataCfg(pattern_strength=1.5)


def test_train_windows_glass_adds_the_panes_to_the_train_and_nothing_else():
    from dataclasses import replace

    from conta_kit.config import DataCfg
    from conta_kit.data.splits import scene_kwargs

    d = replace(DataCfg(), num_train=60)
    kw = dict(split="train", num_images=60, seed=0)
    open_, glass = (ConfoundedScenes(**kw, **scene_kwargs(replace(d, train_windows=v))) for v in ("open", "glass"))
    train = open_.class_names.index("train") + 1
    with_train = 0
    for i in range(60):
        a, b = open_.render(i), glass.render(i)
        assert a[3] == b[3]  # the same draws: classes, contexts, boxes
        changed = a[1] != b[1]
        assert set(b[1][changed].tolist()) <= {train} and not (a[1][changed] > 0).any()  # panes join the train
        same_image = (a[0] == b[0]).all(0)
        assert same_image[~changed].all()  # nothing but the panes is repainted
        if (a[1] == train).any():
            with_train += 1
            assert changed.sum() > 0.05 * (a[1] == train).sum()
            # the panes are dark: darker than the train's paint around them
            assert b[0][:, changed].mean() < b[0][:, a[1] == train].mean()
    assert with_train >= 5
    with pytest.raises(ValueError, match="train_windows"):
        DataCfg(train_windows="tinted")
    with pytest.raises(ValueError, match="train_windows"):
        ConfoundedScenes("train", train_windows="tinted")


def test_object_scale_grows_the_objects():
    kw = dict(num_images=40, image_size=96, seed=0, cooccurrence=0.5)
    one, big = ConfoundedScenes("train", **kw), ConfoundedScenes("train", object_scale=1.4, **kw)
    ratios = []
    for i in range(len(one)):
        oa, ob = one.render(i)[3][0], big.render(i)[3][0]  # the first object: drawn before any placement differs
        assert (oa["class"], oa["context"]) == (ob["class"], ob["context"])
        ratios.append((ob["bbox"][2] - ob["bbox"][0]) / (oa["bbox"][2] - oa["bbox"][0]))
    assert 1.2 < float(np.median(ratios)) < 1.5
    with pytest.raises(ValueError, match="object_scale"):
        ConfoundedScenes("train", object_scale=0.0)


def test_appearance_options_leave_the_earlier_images_as_they_were():
    # the stream's seed leaves out options that change no draw: "prior" with defaults draws what it drew before
    from conta_kit.data._options import SceneOptions, draw_options

    assert draw_options(SceneOptions()) == ("SceneOptions(num_classes=8, num_distractors=2, objects_per_image=(1, 3), "
                                            "object_size=(0.3, 0.55), context_margin=(0.3, 0.7), rider_rate=0.3, "
                                            "noise=0.04, boundary_ignore=0)")


def test_object_patterns_stay_apart_under_horizontal_flips():
    # training and CAM inference flip images: no class's pattern may become another's
    from conta_kit.data._textures import object_patterns

    pats = [p - p.mean() for p in object_patterns(96)]
    for i, a in enumerate(pats):
        assert set(np.unique(object_patterns(96)[i])) == {-1.0, 1.0}
        for j, b in enumerate(pats):
            if i != j:
                for other in (b, b[:, ::-1]):
                    corr = float((a * other).mean() / (a.std() * other.std()))
                    assert abs(corr) < 0.1, (i, j, corr)
