"""Procedural appearance of the confounded-scenes world: context textures and object templates.

Everything here is a pure function of the image size and a fixed world seed, so every split and every
dataset seed shares one visual world; only the sampling of scenes depends on the dataset seed.
"""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ..config import check_scene_choices

_WORLD_SEED = 20201000
TEMPLATE_SIZE = 64

# Foreground classes: (name, paired context, aspect w/h, colour families RGB in [0, 1]).
CLASSES: tuple[tuple[str, str, float, tuple[tuple[float, float, float], ...]], ...] = (
    ("aeroplane", "sky", 1.6, ((0.92, 0.92, 0.95), (0.75, 0.12, 0.12), (0.55, 0.58, 0.62))),
    ("bird", "tree", 1.2, ((0.95, 0.62, 0.10), (0.18, 0.18, 0.22), (0.85, 0.20, 0.25))),
    ("boat", "water", 1.1, ((0.95, 0.93, 0.85), (0.85, 0.35, 0.10), (0.60, 0.15, 0.15))),
    ("car", "road", 1.8, ((0.85, 0.10, 0.10), (0.10, 0.25, 0.75), (0.95, 0.80, 0.10))),
    ("cow", "grass", 1.5, ((0.12, 0.12, 0.12), (0.60, 0.40, 0.22), (0.90, 0.88, 0.85))),
    ("horse", "sand", 1.3, ((0.45, 0.26, 0.10), (0.25, 0.17, 0.12), (0.70, 0.55, 0.35))),
    ("person", "wall", 0.45, ((0.92, 0.72, 0.58), (0.20, 0.35, 0.70), (0.45, 0.28, 0.18))),
    ("train", "rail", 2.5, ((0.20, 0.45, 0.22), (0.65, 0.12, 0.10), (0.35, 0.35, 0.42))),
)
DISTRACTOR_CONTEXTS = ("floor", "fog", "carpet", "ice")


def _shape(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean silhouette of a class on normalised coordinates u (x) and v (y) in [-1, 1]."""

    def ell(cx, cy, rx, ry):
        return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0

    def rect(x0, y0, x1, y1):
        return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)

    if name == "aeroplane":
        wings = (np.abs(u + 0.05) * 1.1 + np.abs(v - 0.05) * 0.35 <= 0.28)
        return ell(0.0, 0.0, 0.95, 0.2) | wings | ((u < -0.6) & (v < 0) & (v > -0.75 + (u + 0.95) * 0.9))
    if name == "bird":
        wing = (v < 0) & (v > -0.95 + 0.9 * np.abs(u - 0.05) * 1.6) & (u > -0.45) & (u < 0.55)
        beak = (u > 0.55) & (u < 0.98) & (np.abs(v - 0.05) < 0.25 * (0.98 - u) / 0.43)
        return ell(0.0, 0.25, 0.6, 0.42) | ell(0.55, 0.05, 0.22, 0.22) | beak | wing
    if name == "boat":
        hull = (v > 0.25) & (v < 0.95) & (np.abs(u) < 0.95 - (v - 0.25) * 0.55)
        sail = (v <= 0.25) & (v > -0.95) & (u > -0.05) & (u < 0.05 + (v + 0.95) * 0.62)
        return hull | sail | rect(-0.1, -0.95, 0.0, 0.3)
    if name == "car":
        body = rect(-0.95, -0.1, 0.95, 0.55)
        cabin = (v >= -0.7) & (v < -0.1) & (np.abs(u + 0.05) < 0.45 + (v + 0.7) * 0.35)
        return body | cabin | ell(-0.55, 0.62, 0.22, 0.35) | ell(0.55, 0.62, 0.22, 0.35)
    if name == "cow":
        legs = (v > 0.3) & (v < 0.98) & ((np.abs(u + 0.55) < 0.1) | (np.abs(u - 0.35) < 0.1)
                                         | (np.abs(u + 0.3) < 0.08) | (np.abs(u - 0.6) < 0.08))
        return rect(-0.75, -0.45, 0.75, 0.4) | rect(0.65, -0.8, 0.98, -0.2) | legs
    if name == "horse":
        legs = (v > 0.2) & (v < 0.98) & ((np.abs(u + 0.5) < 0.07) | (np.abs(u - 0.35) < 0.07)
                                         | (np.abs(u + 0.3) < 0.07) | (np.abs(u - 0.55) < 0.07))
        neck = (u > 0.45) & (u < 0.8) & (v < 0.0) & (v > -0.85) & (np.abs(u - 0.6 + v * 0.25) < 0.16)
        return ell(0.0, -0.05, 0.72, 0.33) | neck | ell(0.82, -0.78, 0.17, 0.12) | legs
    if name == "person":
        legs = (v > 0.3) & ((np.abs(u + 0.3) < 0.2) | (np.abs(u - 0.3) < 0.2))
        arms = (v > -0.45) & (v < 0.15) & (np.abs(u) < 0.95)
        return ell(0.0, -0.75, 0.42, 0.22) | rect(-0.6, -0.5, 0.6, 0.35) | legs | arms & (np.abs(u) > 0.6)
    if name == "train":
        body = rect(-0.98, -0.6, 0.8, 0.7) | ((u >= 0.8) & (v > -0.6 + (u - 0.8) * 2.5) & (v < 0.7))
        windows = _train_windows(u, v)
        wheels = (v >= 0.7) & (v < 0.95) & (np.mod(u + 1.0, 0.35) < 0.22)
        return (body & ~windows) | wheels
    raise KeyError(name)


def _train_windows(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The train's windows on the template's coordinates: holes in its silhouette for ``"open"`` windows."""
    return ((v > -0.4) & (v < -0.05) & (np.mod(u + 1.0, 0.4) > 0.12) & (np.mod(u + 1.0, 0.4) < 0.3) & (u < 0.7))


GLASS_SHADE = 0.4  # a window pane's shading relative to the train's paint: dark glass of the train's colour


@cache
def object_templates(train_windows: str = "open") -> tuple[np.ndarray, ...]:
    """One float32 (T, T) shading map per class; 0 outside the silhouette, in [0.75, 1.1] inside.

    ``train_windows``: "open" (the train's windows are holes: the context shows through them and they are not
    in its mask) or "glass" (dark panes, part of the train and of its mask, as VOC annotates a train's windows;
    shaded at :data:`GLASS_SHADE` of the paint)."""
    check_scene_choices(train_windows=train_windows)
    t = np.linspace(-1.0, 1.0, TEMPLATE_SIZE, dtype=np.float32)
    v, u = np.meshgrid(t, t, indexing="ij")
    out = []
    for name, *_ in CLASSES:
        m = _shape(name, u, v)
        shade = 1.1 - 0.35 * (v + 1.0) / 2.0 + 0.06 * np.cos(3.0 * u)  # top-lit
        if name == "train" and train_windows == "glass":
            panes = _train_windows(u, v)
            m, shade = m | panes, np.where(panes, GLASS_SHADE * shade, shade)
        out.append(np.where(m, shade, 0.0).astype(np.float32))
    return tuple(out)


@lru_cache(maxsize=8)
def object_patterns(image_size: int) -> tuple[np.ndarray, ...]:
    """One float32 (S, S) surface pattern in {-1, 1} per class, in image pixels (``object_texture="pattern"``):
    a local, class-specific cue inside the silhouette, like fur, paint or windows in photos, whose period does
    not change with the object's size. Integer arithmetic (no rounding decides a pixel), and no two classes'
    patterns become alike under the horizontal flips of training and CAM inference. Aeroplane: horizontal
    stripes; bird: fine checks; boat: fine vertical stripes; car: diagonal stripes; cow: blotches; horse: dots;
    person: coarse checks; train: wide vertical stripes."""
    yy, xx = np.meshgrid(np.arange(image_size), np.arange(image_size), indexing="ij")
    rng = np.random.default_rng(_WORLD_SEED)
    blotch = rng.random((image_size // 6 + 1, image_size // 6 + 1)) > 0.5
    on = (yy // 2 % 2 == 0,  # aeroplane
          (yy // 2 + xx // 2) % 2 == 0,  # bird
          xx // 2 % 2 == 0,  # boat
          (xx + yy) // 3 % 2 == 0,  # car (flipped: the other diagonal, which no class has)
          blotch[yy // 6, xx // 6],  # cow
          (yy % 5 < 2) & (xx % 5 < 2),  # horse
          (yy // 4 + xx // 4) % 2 == 0,  # person
          xx // 4 % 2 == 0)  # train
    return tuple(np.where(o, 1.0, -1.0).astype(np.float32) for o in on)


def _smooth_noise(gen: torch.Generator, shape: tuple[int, int], cells: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (channels, H, W) by bicubic upsampling of a coarse random grid."""
    coarse = torch.rand((1, channels, cells, cells), generator=gen) * 2 - 1
    up = F.interpolate(coarse, size=shape, mode="bicubic", align_corners=False)
    return up[0].clamp(-1, 1).numpy()


@lru_cache(maxsize=8)
def context_textures(image_size: int) -> dict[str, np.ndarray]:
    """Texture (3, 2S, 2S) float32 in [0, 1] for every context and for the neutral backdrop."""
    s2 = 2 * image_size
    gen = torch.Generator().manual_seed(_WORLD_SEED)
    yy, xx = np.meshgrid(np.arange(s2, dtype=np.float32), np.arange(s2, dtype=np.float32), indexing="ij")
    fine = (torch.rand((s2, s2), generator=gen).numpy() - 0.5)
    period = max(image_size / 12.0, 3.0)

    def rgb(c, mod):
        return np.clip(np.asarray(c, np.float32)[:, None, None] * mod[None], 0, 1)

    low = _smooth_noise(gen, (s2, s2), 10)[0]
    tex = {
        "sky": rgb((0.55, 0.75, 0.98), 1.0 + 0.12 * (yy / s2) + 0.03 * low),
        "tree": rgb((0.10, 0.42, 0.12), 1.0 + 0.45 * _smooth_noise(gen, (s2, s2), 18)[0] + 0.15 * fine),
        "water": rgb((0.10, 0.35, 0.75), 1.0 + 0.25 * np.sin(2 * np.pi * yy / period + 0.6 * np.sin(xx / 7.0))),
        "road": rgb((0.33, 0.33, 0.35), 1.0 + 0.25 * fine),
        "grass": rgb((0.30, 0.70, 0.20), 1.0 + 0.35 * np.sin(2 * np.pi * xx / (period / 2.5)) * (0.5 + fine)),
        "sand": rgb((0.86, 0.76, 0.52), 1.0 + 0.18 * (fine > 0.38) - 0.12 * (fine < -0.42)),
        "wall": rgb((0.62, 0.28, 0.18), 1.0 - 0.45 * ((np.mod(yy, period) < 1.5)
                                                      | (np.mod(xx + (np.floor(yy / period) % 2) * period,
                                                                2 * period) < 1.5))),
        "rail": rgb((0.50, 0.48, 0.45), 1.0 + 0.3 * fine - 0.4 * (np.mod(xx, period) < 2.0)),
        "floor": rgb((0.75, 0.70, 0.62),
                     1.0 - 0.25 * ((np.floor(yy / (2 * period)) + np.floor(xx / (2 * period))) % 2)),
        "fog": rgb((0.80, 0.82, 0.84), 1.0 + 0.12 * _smooth_noise(gen, (s2, s2), 6)[0]),
        "carpet": rgb((0.55, 0.20, 0.45), 1.0 + 0.3 * np.sin(xx / 2.0) * np.sin(yy / 2.0)),
        "ice": rgb((0.82, 0.92, 0.96), 1.0 - 0.2 * (np.abs(np.sin((xx + yy) / period)) < 0.08)),
    }
    road = tex["road"]  # dashed lane markings
    lane = (np.mod(yy, 3 * period) < 1.5) & (np.mod(xx, 2 * period) < period)
    road[:, lane] = np.float32([0.95, 0.90, 0.55])[:, None]
    rail = tex["rail"]  # two steel rails per period band
    steel = np.mod(yy, 2 * period) < 1.2
    rail[:, steel] = np.float32([0.78, 0.78, 0.80])[:, None]
    tex["backdrop"] = np.clip(0.5 + 0.06 * _smooth_noise(gen, (s2, s2), 5, channels=3), 0, 1)
    tex["noise"] = (torch.randn((3, s2, s2), generator=gen).numpy()).astype(np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tex.items()}
