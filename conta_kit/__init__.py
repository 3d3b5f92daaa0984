"""conta_kit: causal weakly-supervised semantic segmentation (CONTA, W-OoD) as a tested, notebook-driven kit.

The package follows the pipeline: ``data/`` (scenes, VOC/COCO folders, transforms, splits) -> ``models/``
(backbones, classifiers, segmenters) -> ``cam/`` (CAMs, shards, pseudo-masks) -> ``methods/`` (conta, wood)
-> ``pipeline/`` (a round's steps, the rounds, seeds, the sweep) -> ``report/`` (markdown, plots, explorer);
``config``, ``io``, ``metrics``, ``summary``, ``train``, ``infer``, ``distributed``, ``notebook`` and
``cli`` sit beside them. Importing the package has no side effects; plots live in
:mod:`conta_kit.report.viz` (imported on demand).
"""

from .cam import cams_to_pseudo_masks, compute_cams, grad_cam
from .config import BaselineCfg, ContaCfg, DataCfg, RunCfg, resolve_device
from .data import COCOSegmentation, ConfoundedScenes, SceneOptions, VOCSegmentation, collate
from .data.stats import scene_statistics
from .io import Run, RunLayout, write_json
from .methods.conta import BackdoorAdjustment, ConfounderSet, ContaClassifier, build_confounder_set
from .metrics import (
    BoundaryFScore,
    ConfusionMatrix,
    ContextLeakage,
    multilabel_map,
    ood_false_positive_rate,
)
from .models import build_classifier, build_segmenter
from .notebook import notebook_setup
from .pipeline import run_baseline, run_conta, run_seeds
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
    "RunLayout",
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
    "notebook_setup",
    "ood_false_positive_rate",
    "resolve_device",
    "run_baseline",
    "run_conta",
    "run_seeds",
    "scene_statistics",
    "write_json",
]
