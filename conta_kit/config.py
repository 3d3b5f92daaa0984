"""Typed, frozen run configuration. Notebook ``parameters`` cells hold flat literals mapped here once.

``RunCfg.from_params(preset="default", **flat)`` starts from a preset and overrides fields by their flat
names (``cooccurrence=0.75``, ``num_train=500``); an unknown name is an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

PRESETS = ("smoke", "default")


@dataclass(frozen=True)
class DataCfg:
    """The embedded benchmark's size and confounding.

    Attributes:
        image_size: square image side S.
        cooccurrence: rho, the probability that an object stands on its paired context.
        num_train, num_val, num_shifted, num_ood: images per split.
        rider_rate: probability that a horse carries a rider.
    """

    image_size: int = 96
    cooccurrence: float = 0.9
    num_train: int = 2000
    num_val: int = 500
    num_shifted: int = 500
    num_ood: int = 500
    rider_rate: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.cooccurrence <= 1.0:
            raise ValueError(f"cooccurrence must be in [0, 1], got {self.cooccurrence}")
        for f in ("num_train", "num_val", "num_shifted", "num_ood", "image_size"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must be >= 0, got {getattr(self, f)}")


@dataclass(frozen=True)
class RunCfg:
    """Everything one run of the kit needs.

    Attributes:
        preset: "smoke" (seconds, for tests) or "default" (the CPU benchmark).
        seed: the run's seed (datasets and, later, training).
        device: "auto" (CUDA when available), "cpu" or "cuda[:i]".
        data: :class:`DataCfg`.
    """

    preset: str = "default"
    seed: int = 0
    device: str = "auto"
    data: DataCfg = field(default_factory=DataCfg)

    @property
    def smoke(self) -> bool:
        return self.preset == "smoke"

    @classmethod
    def preset_cfg(cls, preset: str) -> RunCfg:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        if preset == "smoke":
            return cls(preset="smoke", data=DataCfg(image_size=64, num_train=96, num_val=48, num_shifted=48,
                                                    num_ood=48))
        return cls()

    @classmethod
    def from_params(cls, preset: str = "default", **params: Any) -> RunCfg:
        """Build from a preset and flat overrides; ``None`` values keep the preset's value."""
        cfg = cls.preset_cfg(preset)
        top = {f.name for f in fields(cls)} - {"data"}
        data_names = {f.name for f in fields(DataCfg)}
        top_kw, data_kw = {}, {}
        for k, v in params.items():
            if v is None:
                continue
            if k in top:
                top_kw[k] = v
            elif k in data_names:
                data_kw[k] = v
            else:
                raise ValueError(f"unknown parameter {k!r}; known: {sorted(top | data_names)}")
        return replace(cfg, data=replace(cfg.data, **data_kw), **top_kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when available, else "cpu"; other values are checked and returned."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}")
    return device
