"""The options of the confounded-scenes generator (:class:`SceneOptions`) and which of them seed a sample's
random draws."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..config import check_scene_choices
from ._textures import CLASSES, DISTRACTOR_CONTEXTS

# options left out of a sample's stream seed: appearance (the same draws) and the objects' scale (the same seed;
# see ``object_scale``), so that adding them changed no earlier image
_SAME_DRAWS = ("object_texture", "pattern_strength", "object_scale", "train_windows")


@dataclass(frozen=True)
class SceneOptions:
    """Generator options beyond the main arguments of :class:`ConfoundedScenes`.

    Attributes:
        num_classes: number of foreground classes (1..8), taken in order from the class table.
        num_distractors: contexts paired with no class (0..4); they only appear as "other" contexts and in
            ``ood_kind="random"`` images.
        objects_per_image: inclusive (min, max) number of objects (riders not counted).
        object_size: (min, max) object height as a fraction of the image side.
        context_margin: (min, max) margin of the context patch around an object, as a fraction of the
            object's size.
        rider_rate: probability that a horse carries an overlapping person (needs both classes).
        noise: standard deviation of the additive pixel noise.
        boundary_ignore: width in pixels of a VOC-style 255 band around every object (0 = none).
        object_texture: "plain" (each object one colour, shaded: only its silhouette says its class) or
            "pattern" (a class-specific surface pattern, :func:`object_patterns`, at ``pattern_strength``
            of the shading: a local cue inside the object). Appearance only: the same draws, layouts and
            masks either way.
        pattern_strength: contrast of the pattern (0.3: the shading varies by +-30 %).
        object_scale: the class-prior layouts' object heights (``CLASS_PRIORS``) times this factor, capped at
            0.9 / 0.95 of the image side (1.0: the table's sizes; the uniform layout uses ``object_size``).
            The image's first object keeps its class, context and band; a larger object that no longer fits
            its strip skips a draw, so later objects of that image can differ.
        train_windows: "open" (the train's windows are holes in its silhouette: the context shows through and
            they are not in its mask) or "glass" (dark panes inside the train's silhouette and mask, as VOC
            annotates windows). Appearance and mask only: the same draws and layouts either way.
    """

    num_classes: int = 8
    num_distractors: int = 2
    objects_per_image: tuple[int, int] = (1, 3)
    object_size: tuple[float, float] = (0.3, 0.55)
    context_margin: tuple[float, float] = (0.3, 0.7)
    rider_rate: float = 0.3
    noise: float = 0.04
    boundary_ignore: int = 0
    object_texture: str = "plain"
    pattern_strength: float = 0.3
    object_scale: float = 1.0
    train_windows: str = "open"

    def __post_init__(self) -> None:
        check_scene_choices(object_texture=self.object_texture, object_scale=self.object_scale,
                            train_windows=self.train_windows)
        if not 0.0 <= self.pattern_strength <= 1.0:
            raise ValueError(f"pattern_strength must be in [0, 1], got {self.pattern_strength}")
        if not 1 <= self.num_classes <= len(CLASSES):
            raise ValueError(f"num_classes must be in 1..{len(CLASSES)}, got {self.num_classes}")
        if not 0 <= self.num_distractors <= len(DISTRACTOR_CONTEXTS):
            raise ValueError(f"num_distractors must be in 0..{len(DISTRACTOR_CONTEXTS)}, got {self.num_distractors}")
        lo, hi = self.objects_per_image
        if not 1 <= lo <= hi <= min(3, self.num_classes):
            raise ValueError(f"objects_per_image must satisfy 1 <= min <= max <= min(3, num_classes), got {lo, hi}")
        for name in ("object_size", "context_margin"):
            a, b = getattr(self, name)
            if not 0 <= a <= b:
                raise ValueError(f"{name} must be (min, max) with 0 <= min <= max, got {(a, b)}")
        if not 0 < self.object_size[1] <= 1:
            raise ValueError(f"object_size max must be in (0, 1], got {self.object_size[1]}")
        if not 0.0 <= self.rider_rate <= 1.0:
            raise ValueError(f"rider_rate must be in [0, 1], got {self.rider_rate}")
        if self.noise < 0 or self.boundary_ignore < 0:
            raise ValueError("noise and boundary_ignore must be >= 0")


def draw_options(options: SceneOptions) -> str:
    """The options that seed a sample's random draws, as the dataclass repr of the first release printed them
    (options that change no draw left out), so adding such an option changes no existing image."""
    kept = ", ".join(f"{f.name}={getattr(options, f.name)!r}" for f in fields(options) if f.name not in _SAME_DRAWS)
    return f"{type(options).__qualname__}({kept})"
