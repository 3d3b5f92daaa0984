"""The embedded benchmark: procedurally generated scenes whose context confounding is a dial.

Scene model (see ``shared/design/benchmark.md``): the image is split into 1-3 vertical strips, one per
object. Each object stands on a patch of *context* stuff (water, rail, grass, ...); with probability
``cooccurrence`` (rho) that context is the class's paired context, otherwise one drawn uniformly from all the
other contexts. A horse may carry a rider (a person that overlaps it) at ``rider_rate``. Everything outside
the context patches is a neutral backdrop.

Four layouts (the generator's own defaults are ``layout="prior"``, plain objects at the class table's sizes, as
when it was written; the kit's ``default`` preset, :class:`~conta_kit.config.DataCfg`, uses ``"prior_strip"``
and patterned objects). ``layout="prior"``: each class has its own size, aspect and
vertical band, as in photos (``CLASS_PRIORS``: flyers small and high, people tall, cars and trains low and
wide), and a context patch lies where that context lies in photos (``CONTEXT_KINDS``): sky, trees and fog around
the object, every ground (water, road, grass, sand, rail, floor) in a band under it, a wall behind it. A paired
context therefore sits where it does in photos (around flyers, under boats, cars, trains and animals, behind
people). The patch's kind is drawn with the context, but its extent follows the object's box: at rho = chance
its texture says nothing about the class, its geometry still does (a ground band whose top sits at a flyer's
height). ``layout="prior_strip"``: the objects of "prior", the context's extent independent of the object: sky,
trees, fog and walls fill the object's strip, grounds fill it below a horizon drawn whatever the class.
``layout="prior_class_surround"``: the objects of "prior", the patch geometry the *class's* whichever context is
drawn (the default of earlier commits): a class cue that the rho dial, and so the oracle's intervention, never
removes (the aeroplane CAM sits on the lower edge of the patch around the plane). ``layout="uniform"``: one size
range for every class, the context a rectangle around the object; the class-wise average masks (CONTA's
prototypes) are alike: the negative control where the adjustment has nothing to attend to (the first layout,
exactly).

Sample ``i`` is a pure function of ``(config, seed, split, i)``: it is drawn from its own
``numpy.random.Generator`` seeded with that tuple, so image 10,000 needs nothing of images 0..9,999,
and ``num_images`` does not change any sample.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import check_scene_choices
from ._layout import (
    CLASS_PRIORS,
    CONTEXT_KINDS,
    context_box,
    context_box_fixed_draws,
    place_prior,
    place_uniform,
    strip_context_box,
)
from ._options import SceneOptions, draw_options
from ._textures import CLASSES, DISTRACTOR_CONTEXTS, TEMPLATE_SIZE, context_textures, object_patterns, object_templates

SPLITS = ("train", "val", "shifted", "ood")
#: Recorded in every run's env.json. 2: ``layout="prior"`` shapes a context patch by the context drawn (before, by
#: the object's class: that layout is now ``"prior_class_surround"``); a run without it cannot be resumed on "prior".
SCENES_VERSION = 2
OOD_KINDS = ("hard", "random")
_SPLIT_CODE = {"train": 0, "val": 1, "shifted": 2, ("ood", "hard"): 3, ("ood", "random"): 4}
DEFAULT_NUM_IMAGES = {"train": 2000, "val": 500, "shifted": 500, "ood": 500}


class ConfoundedScenes(Dataset):
    """Confounded-scenes dataset; items are dicts of tensors.

    Args:
        split: "train", "val", "shifted" (rho at chance level: objects on random contexts) or "ood"
            (context-only images with no object).
        num_images: dataset length; default per split (train 2000, val/shifted/ood 500).
        image_size: side S of the square images.
        cooccurrence: rho, probability that an object stands on its paired context. Ignored by "shifted".
        seed: dataset seed; splits draw from disjoint streams of it.
        ood_kind: for split "ood": "hard" (the paired contexts of 1-3 classes, laid out as in a real scene)
            or "random" (backdrop and unpaired distractor contexts only).
        stream: 0 for the benchmark's splits; another value draws a disjoint set of images of the same
            split (W-OoD's training pool of background-only images is stream 1 of "ood", so the held-out
            "ood" split stays unseen).
        **options: fields of :class:`SceneOptions`.

    Each item: ``image`` (3, S, S) float32 in [0, 1]; ``labels`` (C,) float32 multi-hot, equal to the set
    of classes in ``mask``; ``mask`` (S, S) int64, 0 background, k+1 for class index k, 255 ignore;
    ``context_mask`` (S, S) int64, the context id of each visible context pixel, -1 for backdrop and object
    pixels; ``surround`` (S, S) int64, k + 1 on the visible context pixels of the object of class k, 0
    elsewhere, and ``surround_paired`` (C,) float32, 1 where that context is the paired one, 0 unpaired, -1
    no surround; ``meta`` dict (index, seed, split, objects with class/context/bbox/surround/rider/paired).
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int | None = None,
        image_size: int = 96,
        cooccurrence: float = 0.9,
        seed: int = 0,
        ood_kind: str = "hard",
        stream: int = 0,
        layout: str = "prior",
        **options: Any,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if ood_kind not in OOD_KINDS:
            raise ValueError(f"ood_kind must be one of {OOD_KINDS}, got {ood_kind!r}")
        check_scene_choices(layout=layout)
        if not isinstance(stream, int) or stream < 0:
            raise ValueError(f"stream must be an int >= 0, got {stream!r}")
        if not 0.0 <= float(cooccurrence) <= 1.0:
            raise ValueError(f"cooccurrence must be in [0, 1], got {cooccurrence}")
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
        num_images = DEFAULT_NUM_IMAGES[split] if num_images is None else num_images
        if not isinstance(num_images, int) or num_images < 0:
            raise ValueError(f"num_images must be an int >= 0, got {num_images!r}")
        self.options = SceneOptions(**options)
        self.split, self.ood_kind = split, ood_kind
        self.num_images, self.image_size, self.seed = num_images, image_size, int(seed)
        self.cooccurrence = float(cooccurrence)

        table = CLASSES[: self.options.num_classes]
        self.class_names: tuple[str, ...] = tuple(c[0] for c in table)
        self.num_classes = len(self.class_names)
        self.context_names: tuple[str, ...] = tuple(c[1] for c in table) + DISTRACTOR_CONTEXTS[
            : self.options.num_distractors
        ]
        self.num_contexts = len(self.context_names)
        #: paired_context[k] is the context id paired with class index k (mask id k + 1).
        self.paired_context: tuple[int, ...] = tuple(range(self.num_classes))
        #: cooccurrence actually used by this split (chance level for "shifted").
        self.rho = 1.0 / self.num_contexts if split == "shifted" else self.cooccurrence
        code = _SPLIT_CODE[(split, ood_kind)] if split == "ood" else _SPLIT_CODE[split]
        # rho is not part of the stream: the same seed gives the same layouts at every rho (only the
        # context draws differ), so sweeps over the confounding dial compare like with like.
        self._stream = (self.seed, code, image_size, zlib.crc32(draw_options(self.options).encode()))
        self.stream, self.layout = stream, layout
        if stream:  # appended only when set, so stream 0 keeps the images the benchmark always had
            self._stream = (*self._stream, stream)
        if layout != "uniform":  # likewise: the uniform layout draws exactly the samples it always drew
            # (and "prior_class_surround" those that the class-prior layout drew when it was called "prior")
            # "prior_strip" too: the same objects as "prior", only the context geometry differs
            self._stream = (*self._stream, zlib.crc32(("prior" if layout.startswith("prior") else layout)
                                                      .encode()))
        tex = context_textures(image_size)
        self._ctx_tex = [tex[n] for n in self.context_names]
        self._backdrop, self._noise = tex["backdrop"], tex["noise"]
        self._templates = object_templates(self.options.train_windows)[: self.num_classes]
        self._patterns = object_patterns(image_size)[: self.num_classes] \
            if self.options.object_texture == "pattern" else None
        self._aspect = [c[2] for c in table]
        k = self.options.object_scale
        self._prior = [((min(lo * k, 0.9), min(hi * k, 0.95)), band, kind)
                       for (lo, hi), band, kind in (CLASS_PRIORS[c[0]] for c in table)]
        self._context_kind = [CONTEXT_KINDS[n] for n in self.context_names]
        self._colours = [np.asarray(c[3], np.float32) for c in table]
        self._horse = self.class_names.index("horse") if "horse" in self.class_names else -1
        self._person = self.class_names.index("person") if "person" in self.class_names else -1

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (f"ConfoundedScenes(split={self.split!r}, num_images={self.num_images}, image_size={self.image_size}, "
                f"cooccurrence={self.cooccurrence}, seed={self.seed}, layout={self.layout!r}, "
                f"rho_used={self.rho:.3f})")

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        index = index % self.num_images if self.num_images else index
        image, mask, ctx, objects = self.render(index)
        counts = np.bincount(mask.ravel(), minlength=256)[1 : self.num_classes + 1]
        surround = np.zeros(mask.shape, np.int64)
        paired = np.full(self.num_classes, -1.0, np.float32)
        for o in objects:  # each object's own context surround (boxes of different objects do not overlap)
            if o["surround"] is None or o["context"] < 0 or counts[o["class"]] == 0 or not o["same_geometry"]:
                continue  # (a surround shaped unlike the paired context's is left out of the comparison)
            y0, y1, x0, x1 = o["surround"]
            region = ctx[y0:y1, x0:x1] == o["context"]
            surround[y0:y1, x0:x1][region] = o["class"] + 1
            paired[o["class"]] = float(o["paired"]) if o["same_geometry"] else -1.0
        return {
            "image": torch.from_numpy(image),
            "labels": torch.from_numpy((counts > 0).astype(np.float32)),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "context_mask": torch.from_numpy(ctx.astype(np.int64)),
            "surround": torch.from_numpy(surround),
            "surround_paired": torch.from_numpy(paired),
            "meta": {"index": index, "seed": self.seed, "split": self.split, "objects": objects},
        }

    # ------------------------------------------------------------------ rendering
    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Render sample ``index`` as numpy arrays: image (3,S,S) f32, mask (S,S) u8, context (S,S) i8, objects."""
        rng = np.random.default_rng((*self._stream, index))
        s, opt = self.image_size, self.options
        oy, ox = rng.integers(0, s, size=2)
        image = self._backdrop[:, oy : oy + s, ox : ox + s].copy()
        mask = np.zeros((s, s), np.uint8)
        ctx = np.full((s, s), -1, np.int8)

        k = int(rng.integers(opt.objects_per_image[0], opt.objects_per_image[1] + 1))
        classes = rng.choice(self.num_classes, size=k, replace=False)
        rider = self._horse in classes and self._person >= 0 and self.split != "ood" \
            and rng.random() < opt.rider_rate
        if rider and self._person in classes:  # the person rides instead of standing elsewhere
            spare = [c for c in range(self.num_classes) if c not in classes and c != self._person]
            j = int(np.flatnonzero(classes == self._person)[0])
            if spare:
                classes[j] = spare[int(rng.integers(0, len(spare)))]
            else:
                classes = np.delete(classes, j)
                k -= 1
        cuts = np.sort(rng.uniform(0.15, 0.85, size=k - 1)) if k > 1 else np.empty(0)
        edges = np.concatenate(([0.0], cuts, [1.0])) * s
        if k > 1:  # keep strips at least S/6 wide
            edges[1:-1] = np.maximum.accumulate(np.maximum(edges[1:-1], edges[:-2] + s / 6))
            edges[1:-1] = np.minimum(edges[1:-1], s - s / 6 * (k - np.arange(1, k)))

        objects, placed = [], []
        for j, c in enumerate(classes):
            c = int(c)
            draw, other = rng.random(), int(rng.integers(0, max(self.num_contexts - 1, 1)))
            if self.split == "ood" and self.ood_kind == "random":
                context = self.num_classes + other % opt.num_distractors if opt.num_distractors else -1
            elif self.split == "ood" or draw < self.rho or self.num_contexts == 1:
                context = self.paired_context[c]
            else:
                context = other + (other >= self.paired_context[c])
            x0s, x1s = int(edges[j]), int(edges[j + 1])
            if self.layout == "uniform":
                y0, x0, h, w = place_uniform(rng, s, opt.object_size, self._aspect[c], x0s, x1s)
                margin = rng.uniform(*opt.context_margin)
                my, mx = int(margin * h) + 2, int(margin * w) + 2
                box = (max(y0 - my, 0), min(y0 + h + my, s), max(x0 - mx, x0s, 0), min(x0 + w + mx, x1s, s))
            elif self.layout == "prior_class_surround":
                y0, x0, h, w = place_prior(rng, s, self._prior[c], self._aspect[c], x0s, x1s)
                box = context_box(rng, s, self._prior[c][2], y0, x0, h, w, x0s, x1s)
            else:  # the patch lies where the drawn context lies (its kind); two draws whatever the kind
                y0, x0, h, w = place_prior(rng, s, self._prior[c], self._aspect[c], x0s, x1s)
                kind = self._context_kind[context] if context >= 0 else self._prior[c][2]
                place = strip_context_box if self.layout == "prior_strip" else context_box_fixed_draws
                box = place(rng, s, kind, y0, x0, h, w, x0s, x1s)
            if context >= 0:
                cy0, cy1, cx0, cx1 = box
                ty, tx = rng.integers(0, s, size=2)
                image[:, cy0:cy1, cx0:cx1] = self._ctx_tex[context][:, ty + cy0 : ty + cy1, tx + cx0 : tx + cx1]
                ctx[cy0:cy1, cx0:cx1] = context
            flip = bool(rng.random() < 0.5)
            # a surround is compared with the paired one (confounding leakage) only when it has the paired
            # context's geometry: always in the uniform and class-surround layouts, same kind in "prior"
            same_geometry = self.layout not in ("prior", "prior_strip") or context < 0 or \
                self._context_kind[context] == self._prior[c][2]
            objects.append({"class": c, "context": context, "bbox": (y0, x0, y0 + h, x0 + w), "surround": box,
                            "rider": False, "paired": context == self.paired_context[c],
                            "same_geometry": same_geometry})
            placed.append((c, y0, x0, h, w, flip))
            if c == self._horse and rider:
                ph, pw = int(h * 1.05), max(int(h * 1.05 * 0.45), 4)
                py0 = y0 + int(0.55 * h) - ph  # legs overlap the horse's back
                px0 = x0 + int(w * rng.uniform(0.25, 0.55)) - pw // 2
                objects.append({"class": self._person, "context": -1, "bbox": (py0, px0, py0 + ph, px0 + pw),
                                "surround": None, "rider": True, "paired": False, "same_geometry": True})
                placed.append((self._person, py0, px0, ph, pw, False))

        if self.split != "ood":
            for c, y0, x0, h, w, flip in placed:
                self._paint_object(rng, image, mask, ctx, c, y0, x0, h, w, flip)
            if opt.boundary_ignore:
                _ignore_band(mask, opt.boundary_ignore)

        ny, nx = rng.integers(0, s, size=2)
        gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-0.06, 0.06)
        image *= gain
        image += bias
        image += opt.noise * self._noise[:, ny : ny + s, nx : nx + s]
        np.clip(image, 0.0, 1.0, out=image)
        return image, mask, ctx, objects

    def _paint_object(self, rng, image, mask, ctx, c, y0, x0, h, w, flip) -> None:
        s = self.image_size
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + h, s), min(x0 + w, s)
        if ye <= ys or xe <= xs:
            return
        iy = ((np.arange(ys, ye) - y0) * TEMPLATE_SIZE) // h
        ix = ((np.arange(xs, xe) - x0) * TEMPLATE_SIZE) // w
        if flip:
            ix = TEMPLATE_SIZE - 1 - ix
        shade = self._templates[c][iy[:, None], ix[None, :]]
        inside = shade > 0
        if self._patterns is not None:
            shade = shade * (1.0 + self.options.pattern_strength * self._patterns[c][ys:ye, xs:xe])
        family = self._colours[c]
        colour = family[rng.integers(0, len(family))] + rng.uniform(-0.07, 0.07, size=3).astype(np.float32)
        np.copyto(image[:, ys:ye, xs:xe], colour[:, None, None] * shade[None], where=inside[None])
        mask[ys:ye, xs:xe][inside] = c + 1
        ctx[ys:ye, xs:xe][inside] = -1


def _ignore_band(mask: np.ndarray, width: int) -> None:
    """Set pixels within ``width`` of a label change (object boundaries) to 255, in place."""
    edge = np.zeros(mask.shape, bool)
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[:, :-1] |= mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    edge[:-1, :] |= mask[1:, :] != mask[:-1, :]
    band = edge.copy()
    for _ in range(width - 1):
        grown = band.copy()
        grown[1:] |= band[:-1]
        grown[:-1] |= band[1:]
        grown[:, 1:] |= band[:, :-1]
        grown[:, :-1] |= band[:, 1:]
        band = grown
    mask[band] = 255
