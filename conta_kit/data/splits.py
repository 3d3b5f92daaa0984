"""The splits a run reads, for its data source: train and val; for the embedded benchmark also shifted, ood
and W-OoD's pool."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from ..config import DataCfg, RunCfg
from .folder import COCOSegmentation, VOCSegmentation
from .scenes import SPLITS, ConfoundedScenes
from .transforms import Resize


def load_splits(cfg: RunCfg) -> dict[str, Dataset]:
    """train/val (+ shifted/ood for the benchmark) for the configured data source."""
    if cfg.data_source == "scenes":
        splits: dict[str, Dataset] = dict(scene_splits(cfg.data, seed=cfg.seed))
        d = cfg.data
        if (stream := classifier_stream(cfg)) is not None:
            splits["classifier_train"] = stream
        w = cfg.wood
        if w.finetune == "wood":  # W-OoD's training pool: background-only images, disjoint from split "ood"
            splits["wood_pool"] = ConfoundedScenes("ood", num_images=w.num_pool, seed=cfg.seed,
                                                   ood_kind="hard" if w.pool == "hard" else "random", stream=1,
                                                   **scene_kwargs(d))
        return splits
    cls = VOCSegmentation if cfg.data_source == "voc" else COCOSegmentation
    t = Resize(cfg.data.image_size)
    return {"train": cls(cfg.data_root, "train", transform=t), "val": cls(cfg.data_root, "val", transform=t)}


def scene_kwargs(d: DataCfg) -> dict[str, Any]:
    """The generator's arguments a :class:`~conta_kit.config.DataCfg` sets (all but split, size and seed)."""
    return dict(image_size=d.image_size, cooccurrence=d.cooccurrence, rider_rate=d.rider_rate, layout=d.layout,
                object_texture=d.object_texture, pattern_strength=d.pattern_strength, object_scale=d.object_scale,
                train_windows=d.train_windows)


def classifier_stream(cfg: RunCfg) -> ConfoundedScenes | None:
    """The classifier's training images where ``data.classifier_images`` asks for more than the train split (a
    superset of train: images 0..classifier_images - 1 of the train stream), else None (it trains on train)."""
    d = cfg.data
    if d.classifier_images is None or d.classifier_images <= d.num_train:
        return None
    return ConfoundedScenes("train", num_images=d.classifier_images, seed=cfg.seed, **scene_kwargs(d))


def oracle_train(cfg: RunCfg) -> ConfoundedScenes:
    """The oracle's training images: the train split's images and layouts with the contexts drawn at chance
    (rho = 1 / number of contexts), i.e. the generator's intervention do(X)."""
    d = cfg.data
    train = ConfoundedScenes("train", num_images=0, layout=d.layout)
    return ConfoundedScenes("train", num_images=d.classifier_images or d.num_train, seed=cfg.seed,
                            **{**scene_kwargs(d), "cooccurrence": 1.0 / train.num_contexts})


def scene_splits(data_cfg: DataCfg, seed: int = 0, splits: tuple[str, ...] = SPLITS) -> dict[str, ConfoundedScenes]:
    """The benchmark's splits for a :class:`~conta_kit.config.DataCfg` (``ood`` is the hard kind;
    ``ood_random`` is added when "ood" is asked for)."""
    out: dict[str, ConfoundedScenes] = {}
    for split in splits:
        n = getattr(data_cfg, f"num_{split}")
        kw = dict(num_images=n, seed=seed, **scene_kwargs(data_cfg))
        out[split] = ConfoundedScenes(split, **kw)
        if split == "ood":
            out["ood_random"] = ConfoundedScenes(split, ood_kind="random", **kw)
    return out
