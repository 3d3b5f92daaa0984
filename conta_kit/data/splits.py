"""The splits a run reads, for its data source: train and val; for the embedded benchmark also shifted, ood
and W-OoD's pool."""

from __future__ import annotations

from torch.utils.data import Dataset

from ..config import RunCfg
from .folder import COCOSegmentation, VOCSegmentation
from .scenes import ConfoundedScenes, scene_splits
from .transforms import Resize


def load_splits(cfg: RunCfg) -> dict[str, Dataset]:
    """train/val (+ shifted/ood for the benchmark) for the configured data source."""
    if cfg.data_source == "scenes":
        splits: dict[str, Dataset] = dict(scene_splits(cfg.data, seed=cfg.seed))
        w = cfg.wood
        if w.finetune == "wood":  # W-OoD's training pool: background-only images, disjoint from split "ood"
            splits["wood_pool"] = ConfoundedScenes("ood", num_images=w.num_pool, image_size=cfg.data.image_size,
                                                   cooccurrence=cfg.data.cooccurrence, seed=cfg.seed,
                                                   ood_kind="hard" if w.pool == "hard" else "random", stream=1,
                                                   rider_rate=cfg.data.rider_rate)
        return splits
    cls = VOCSegmentation if cfg.data_source == "voc" else COCOSegmentation
    t = Resize(cfg.data.image_size)
    return {"train": cls(cfg.data_root, "train", transform=t), "val": cls(cfg.data_root, "val", transform=t)}
