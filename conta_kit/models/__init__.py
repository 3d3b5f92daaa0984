"""Models: classifiers with an explicit ``features(x, x_m=None)`` and a bias-free 1x1-conv ``head`` (CAMs need
no hooks), segmenters, and the utilities every stage uses on them. Registries are plain dicts:
``BACKBONES`` and ``SEGMENTERS``."""

from .backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, ResNetBackbone, TinyBackbone
from .classifier import Classifier, build_classifier, pool_logits
from .inference import eval_mode, fold_batchnorm, load_checkpoint, model_fingerprint
from .segmenters import SEGMENTERS, TinySegmenter, TorchvisionSegmenter, build_segmenter

__all__ = ["BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "SEGMENTERS", "Classifier", "ResNetBackbone",
           "TinyBackbone", "TinySegmenter", "TorchvisionSegmenter", "build_classifier", "build_segmenter",
           "eval_mode", "fold_batchnorm", "load_checkpoint", "model_fingerprint", "pool_logits"]
