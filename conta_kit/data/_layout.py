"""Where things go in a confounded scene: the class-prior layout's table and the placement of an object and of
its context surround inside the object's strip (``layout="prior"``), and the first, uniform placement."""

from __future__ import annotations

import numpy as np

# class -> (object height range, vertical band of the object's centre, both as fractions of the image side,
# and where its context lies: "around" the object, a ground band "below" it, or a wall "behind" it)
CLASS_PRIORS: dict[str, tuple[tuple[float, float], tuple[float, float], str]] = {
    "aeroplane": ((0.18, 0.28), (0.14, 0.26), "around"),
    "bird": ((0.16, 0.24), (0.28, 0.42), "around"),
    "boat": ((0.28, 0.38), (0.52, 0.62), "below"),
    "car": ((0.20, 0.27), (0.80, 0.88), "below"),
    "cow": ((0.32, 0.42), (0.62, 0.72), "below"),
    "horse": ((0.38, 0.48), (0.46, 0.56), "below"),
    "person": ((0.60, 0.78), (0.38, 0.50), "behind"),
    "train": ((0.19, 0.25), (0.70, 0.80), "below"),
}


# context -> where its patch lies around an object in the "prior" layout: the sky, the trees and fog around it,
# every ground (water, road, grass, sand, rail, floor) in a band under it, a wall behind it. The paired
# context's kind is its class's kind in CLASS_PRIORS, so a paired surround sits where it does in photos.
CONTEXT_KINDS: dict[str, str] = {"sky": "around", "tree": "around", "water": "below", "road": "below",
                                 "grass": "below", "sand": "below", "wall": "behind", "rail": "below",
                                 "floor": "below", "fog": "around"}


def place_uniform(rng: np.random.Generator, s: int, size: tuple[float, float], aspect: float, x0s: int,
                  x1s: int) -> tuple[int, int, int, int]:
    """The first layout: one size range for every class, centre anywhere below 0.3 S; (y0, x0, h, w)."""
    h = int(round(rng.uniform(*size) * s))
    w = int(round(h * aspect * rng.uniform(0.85, 1.15)))
    if w > (x1s - x0s) * 1.15:  # keep the object roughly inside its strip
        h = max(6, int(h * (x1s - x0s) * 1.15 / w))
        w = int((x1s - x0s) * 1.15)
    h, w = max(h, 6), max(w, 6)
    cx = rng.uniform(x0s + w / 2 - 0.1 * w, x1s - w / 2 + 0.1 * w) if x1s - x0s > w else (x0s + x1s) / 2
    cy = rng.uniform(0.3 * s + h / 2 * 0.2, s - h / 2)
    return int(round(cy - h / 2)), int(round(cx - w / 2)), h, w


def place_prior(rng: np.random.Generator, s: int, prior: tuple[tuple[float, float], tuple[float, float], str],
                aspect: float, x0s: int, x1s: int) -> tuple[int, int, int, int]:
    """The class-prior layout: the class's height range and vertical band; (y0, x0, h, w)."""
    (hlo, hhi), (blo, bhi), _ = prior
    h = int(round(rng.uniform(hlo, hhi) * s))
    w = int(round(h * aspect * rng.uniform(0.85, 1.15)))
    if w > (x1s - x0s) * 1.1:  # a wide object in a narrow strip keeps its aspect and shrinks
        h = max(5, int(h * (x1s - x0s) * 1.1 / w))
        w = int((x1s - x0s) * 1.1)
    h, w = max(h, 5), max(w, 5)
    cx = rng.uniform(x0s + w / 2, x1s - w / 2) if x1s - x0s > w else (x0s + x1s) / 2
    cy = float(np.clip(rng.uniform(blo, bhi) * s, h / 2, s - h / 2))
    return int(round(cy - h / 2)), int(round(cx - w / 2)), h, w


KINDS = ("around", "below", "behind")  # the values of CONTEXT_KINDS


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"context kind must be one of {KINDS}, got {kind!r}")


def context_box(rng: np.random.Generator, s: int, kind: str, y0: int, x0: int, h: int, w: int, x0s: int,
                x1s: int) -> tuple[int, int, int, int]:
    """Where a class's context lies, (y0, y1, x0, x1) clipped to the object's strip: ``"around"`` a flyer, a
    ground band ``"below"`` from the object's lower part to the bottom edge, or a wall ``"behind"`` a person
    from above the head to the feet."""
    if kind == "around":
        m = rng.uniform(0.5, 0.9)
        my, mx = int(m * h) + 2, int(m * w) + 2
        box = (y0 - my, y0 + h + my, x0 - mx, x0 + w + mx)
    elif kind == "below":
        mx = int(rng.uniform(0.2, 0.5) * w) + 2
        box = (y0 + int(rng.uniform(0.55, 0.75) * h), s, x0 - mx, x0 + w + mx)
    elif kind == "behind":
        mx = int(rng.uniform(0.6, 1.0) * w) + 2
        box = (y0 - int(rng.uniform(0.15, 0.35) * h), y0 + h, x0 - mx, x0 + w + mx)
    else:
        _check_kind(kind)
    return max(box[0], 0), min(box[1], s), max(box[2], x0s, 0), min(box[3], x1s, s)


def context_box_fixed_draws(rng: np.random.Generator, s: int, kind: str, y0: int, x0: int, h: int, w: int,
                            x0s: int, x1s: int) -> tuple[int, int, int, int]:
    """:func:`context_box` drawing the same two random numbers whatever ``kind`` is, so that the rest of a
    sample's draws do not depend on which context (and so which kind) was drawn: the "prior" layout's
    geometry follows the context, and the same seed must give the same object layouts at every rho."""
    u, v = rng.random(2)
    if kind == "around":
        m = 0.5 + 0.4 * u
        my, mx = int(m * h) + 2, int(m * w) + 2
        box = (y0 - my, y0 + h + my, x0 - mx, x0 + w + mx)
    elif kind == "below":
        mx = int((0.2 + 0.3 * u) * w) + 2
        box = (y0 + int((0.55 + 0.2 * v) * h), s, x0 - mx, x0 + w + mx)
    elif kind == "behind":
        mx = int((0.6 + 0.4 * u) * w) + 2
        box = (y0 - int((0.15 + 0.2 * v) * h), y0 + h, x0 - mx, x0 + w + mx)
    else:
        _check_kind(kind)
    return max(box[0], 0), min(box[1], s), max(box[2], x0s, 0), min(box[3], x1s, s)


def strip_context_box(rng: np.random.Generator, s: int, kind: str, y0: int, x0: int, h: int, w: int, x0s: int,
                      x1s: int) -> tuple[int, int, int, int]:
    """``layout="prior_strip"``: where a context lies depends on its kind and the object's strip only, never on
    the object: sky, trees, fog and walls fill the strip, a ground fills it from a horizon drawn between 0.45 S
    and 0.75 S, whatever the class, to the bottom edge. (In "prior" a patch's extent follows the object's box,
    so at rho = chance a ground band whose top sits at a flyer's height still tells the class: classifiers
    trained there put the aeroplane CAM on the band under the plane.) Draws two numbers, as
    :func:`context_box_fixed_draws`, so the objects are those of "prior"; (y0, y1, x0, x1)."""
    u, _ = rng.random(2)
    _check_kind(kind)
    top = int((0.45 + 0.3 * u) * s) if kind == "below" else 0
    return top, s, max(x0s, 0), min(x1s, s)
