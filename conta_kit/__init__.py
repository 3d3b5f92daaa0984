"""conta_kit: causal weakly-supervised semantic segmentation (CONTA, W-OoD) as a tested, notebook-driven kit.

Importing the package has no side effects; plots live in :mod:`conta_kit.viz` (imported on demand).
"""

from .cam import compute_cams, grad_cam
from .config import BaselineCfg, ContaCfg, DataCfg, RunCfg, resolve_device
from .conta import BackdoorAdjustment, ConfounderSet, ContaClassifier, build_confounder_set
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
from .models import build_classifier, build_segmenter
from .pipeline import run_baseline
from .pseudo import cams_to_pseudo_masks
from .rounds import run_conta, run_seeds
from .train import TrainCfg, fit

__version__ = "0.1.0"

__all__ = [
    "BackdoorAdjustment",
    "BaselineCfg",
    "BoundaryFScore",
    "COCOSegmentation",
    "ConfoundedScenes",
    "ConfounderSet",
    "ConfusionMatrix",
    "ContaCfg",
    "ContaClassifier",
    "ContextLeakage",
    "DataCfg",
    "Run",
    "RunCfg",
    "SceneOptions",
    "TrainCfg",
    "VOCSegmentation",
    "build_classifier",
    "build_confounder_set",
    "build_segmenter",
    "cams_to_pseudo_masks",
    "collate",
    "compute_cams",
    "fit",
    "grad_cam",
    "multilabel_map",
    "ood_false_positive_rate",
    "resolve_device",
    "run_baseline",
    "run_conta",
    "run_seeds",
    "scene_statistics",
    "write_json",
]
