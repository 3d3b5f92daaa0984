"""From a classifier to masks: analytic CAMs (and captum's Grad-CAM as the reference), a dataset's CAMs
streamed to shards, and CAMs turned into seeds and pseudo-masks."""

from .analytic import cam_from_features, cam_precision, compute_cams, normalize_cams
from .gradcam import grad_cam
from .pseudo import cams_to_labels, cams_to_pseudo_masks, foreground_argmax
from .shards import cams_to_shards, load_cams

__all__ = ["cam_from_features", "cam_precision", "cams_to_labels", "cams_to_pseudo_masks", "cams_to_shards",
           "compute_cams", "foreground_argmax", "grad_cam", "load_cams", "normalize_cams"]
