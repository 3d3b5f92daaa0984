"""Datasets: the embedded confounded-scenes benchmark and PASCAL VOC / MS-COCO from a local folder."""

from .folder import COCOSegmentation, SegmentationFolder, VOCSegmentation
from .scenes import ConfoundedScenes, SceneOptions
from .transforms import collate

__all__ = ["COCOSegmentation", "ConfoundedScenes", "SceneOptions", "SegmentationFolder", "VOCSegmentation",
           "collate"]
