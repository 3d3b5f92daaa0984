"""conta_kit: causal weakly-supervised semantic segmentation (CONTA, W-OoD) as a tested, notebook-driven kit.

Importing the package has no side effects; plots live in :mod:`conta_kit.viz` (imported on demand).
"""

from .config import DataCfg, RunCfg, resolve_device
from .data import ConfoundedScenes, SceneOptions, collate
from .data.folder import COCOSegmentation, VOCSegmentation
from .data.stats import scene_statistics
from .io import Run, write_json
from .metrics import (
    BoundaryFScore,
    ConfusionMatrix,
    ContextLeakage,
    multilabel_map,
    ood_false_positive_rate,
)

__version__ = "0.1.0"

__all__ = [
    "BoundaryFScore",
    "COCOSegmentation",
    "ConfoundedScenes",
    "ConfusionMatrix",
    "ContextLeakage",
    "DataCfg",
    "Run",
    "RunCfg",
    "SceneOptions",
    "VOCSegmentation",
    "collate",
    "multilabel_map",
    "ood_false_positive_rate",
    "resolve_device",
    "scene_statistics",
    "write_json",
]
