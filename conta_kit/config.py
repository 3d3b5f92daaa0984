"""Typed, frozen run configuration. Notebook ``parameters`` cells hold flat literals mapped here once.

``RunCfg.from_params(preset="default", **flat)`` starts from a preset and overrides fields by their flat
names (``cooccurrence=0.75``, ``num_train=500``); an unknown name is an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

PRESETS = ("smoke", "default", "gpu", "voc")


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
class BaselineCfg:
    """Round 0 of CONTA: the CAM -> pseudo-mask -> segmentation pipeline (IRNet-style, without IRN).

    Attributes:
        backbone: classifier backbone ("tiny" on CPU; "resnet50" for VOC/COCO on a GPU).
        pretrained: None, "imagenet" or a path to a torchvision ResNet state dict.
        cls_epochs, cls_batch_size, cls_lr, cls_optimizer: classifier training (SGD-poly by default).
        aug_scale, aug_crop: classifier augmentation besides the flip: random rescale range and crop size
            (IRNet: long side 320-640, crop 512); x_m gets exactly the same geometry. Off on the benchmark.
        cam_scales, cam_flip: CAM inference (IRNet: scales 1.0, 0.5, 1.5, 2.0 with flips; the CPU default
            drops 2.0, which alone costs more than the other three together).
        bg_threshold: fixed background threshold for seed mIoU (IRNet's cam_eval_thres 0.15).
        threshold_grid: thresholds swept on val to choose the best one (never on the scored split).
        conf_fg, conf_bg: IRNet's confident fore/background thresholds for the pseudo-masks (0.30 / 0.05).
        segmenter, seg_epochs, seg_batch_size, seg_lr, seg_optimizer: segmentation model training.
        eval_batch_size: batch size for CAM and mask inference.
        num_workers: DataLoader worker processes for training (0 on the CPU benchmark).
    """

    backbone: str = "tiny"
    pretrained: str | None = None
    cls_epochs: int = 6
    cls_batch_size: int = 32
    cls_lr: float = 0.05
    cls_optimizer: str = "sgd"
    aug_scale: tuple[float, float] = (1.0, 1.0)
    aug_crop: int | None = None
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5)  # CPU preset; IRNet adds 2.0 (4x the pixels of 1.0)
    cam_flip: bool = True
    bg_threshold: float = 0.15
    threshold_grid: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 16))
    conf_fg: float = 0.30
    conf_bg: float = 0.05
    segmenter: str = "tiny"
    seg_epochs: int = 6
    seg_batch_size: int = 32
    seg_lr: float = 0.05
    seg_optimizer: str = "sgd"
    eval_batch_size: int = 64
    num_workers: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.pretrained, str) and self.pretrained.lower() == "none":  # "-p pretrained none"
            object.__setattr__(self, "pretrained", None)


@dataclass(frozen=True)
class ContaCfg:
    """CONTA's rounds (round 0 is the baseline) and its [KIT] decisions, each a named option.

    Attributes:
        rounds: T, the last round (0 = the baseline only).
        adjustment: "backdoor" (CONTA's M) or "raw_mask" (reviewer's baseline: fuse x_m itself).
        fusion: where M is concatenated: "last" (last block, the paper's choice), "input", or a stage name.
        grid: side of the canonical grid of prototypes and W1/W2; None = the classifier's feature-map size.
        prior: P(c): "uniform" (paper) or "freq" (share of training images with the class).
        include_bg: add a background prototype (the official loader drops it).
        temperature: attention temperature tau; None = sqrt(n).
        m_scale: "paper" (M <= 1/n), "convex" (divide by sum alpha_i P(c_i)) or "max" (per-image max).
        xm: the image's mask x_m from the previous segmenter: "fg_prob" (1 - P(background)) or "fg_binary".
        present: which images average into c_i: "label" (image label has the class) or "pred" (predicted).
        init: each round's classifier starts from "scratch" (same seed as round 0) or the "previous" round's.
    """

    rounds: int = 3
    adjustment: str = "backdoor"
    fusion: str = "last"
    grid: int | None = None
    prior: str = "uniform"
    include_bg: bool = False
    temperature: float | None = None
    m_scale: str = "paper"
    xm: str = "fg_prob"
    present: str = "label"
    init: str = "scratch"

    def __post_init__(self) -> None:
        choices = {"adjustment": ("backdoor", "raw_mask"), "prior": ("uniform", "freq"),
                   "m_scale": ("paper", "convex", "max"), "xm": ("fg_prob", "fg_binary"),
                   "present": ("label", "pred"), "init": ("scratch", "previous")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")
        if self.grid is not None and self.grid < 1:
            raise ValueError(f"grid must be >= 1 or None, got {self.grid}")


@dataclass(frozen=True)
class RunCfg:
    """Everything one run of the kit needs.

    Attributes:
        preset: "smoke" (seconds, for tests) or "default" (the CPU benchmark).
        seed: the run's seed (datasets and, later, training).
        device: "auto" (CUDA when available), "cpu" or "cuda[:i]".
        data_source: "scenes" (embedded benchmark), "voc" or "coco" (from ``data_root``).
        data_root: dataset folder for "voc"/"coco".
        data: :class:`DataCfg`. baseline: :class:`BaselineCfg`. conta: :class:`ContaCfg`.
    """

    preset: str = "default"
    seed: int = 0
    device: str = "auto"
    data_source: str = "scenes"
    data_root: str | None = None
    data: DataCfg = field(default_factory=DataCfg)
    baseline: BaselineCfg = field(default_factory=BaselineCfg)
    conta: ContaCfg = field(default_factory=ContaCfg)

    def __post_init__(self) -> None:
        if self.data_source not in ("scenes", "voc", "coco"):
            raise ValueError(f"data_source must be 'scenes', 'voc' or 'coco', got {self.data_source!r}")
        if self.data_source != "scenes" and not self.data_root:
            raise ValueError(f"data_source={self.data_source!r} needs data_root (the dataset folder)")

    @property
    def smoke(self) -> bool:
        return self.preset == "smoke"

    @classmethod
    def preset_cfg(cls, preset: str) -> RunCfg:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        if preset == "smoke":
            return cls(preset="smoke", data=DataCfg(image_size=64, num_train=96, num_val=48, num_shifted=48,
                                                    num_ood=48),
                       baseline=BaselineCfg(cls_epochs=3, cls_lr=0.1, seg_epochs=2, seg_lr=0.1, cam_scales=(1.0, 0.5),
                                            cls_batch_size=16, seg_batch_size=16, threshold_grid=(0.1, 0.2, 0.3)),
                       conta=ContaCfg(rounds=1))
        if preset == "gpu":  # the embedded benchmark, larger, with ResNet-50 / DeepLabV3 (untested without a GPU)
            return cls(preset="gpu", data=DataCfg(image_size=160, num_train=10000, num_val=1000, num_shifted=1000,
                                                  num_ood=1000),
                       baseline=BaselineCfg(backbone="resnet50", segmenter="deeplabv3_resnet50", cls_epochs=8,
                                            cls_batch_size=64, cls_lr=0.05, seg_epochs=10, seg_batch_size=32,
                                            seg_lr=0.01, cam_scales=(1.0, 0.5, 1.5, 2.0), eval_batch_size=64,
                                            num_workers=8))
        if preset == "voc":  # PASCAL VOC 2012 from data_root at IRNet's settings (needs -p data_root ...)
            return cls(preset="voc", data=DataCfg(image_size=320),
                       baseline=BaselineCfg(backbone="resnet50", pretrained="imagenet", segmenter="deeplabv3_resnet50",
                                            cls_epochs=5, cls_batch_size=16, cls_lr=0.1, seg_epochs=15,
                                            seg_batch_size=16, seg_lr=0.01, cam_scales=(1.0, 0.5, 1.5, 2.0),
                                            eval_batch_size=16, num_workers=8))
        return cls()

    @classmethod
    def from_params(cls, preset: str = "default", **params: Any) -> RunCfg:
        """Build from a preset and flat overrides; ``None`` values keep the preset's value."""
        cfg = cls.preset_cfg(preset)
        subs = {f.name: {g.name for g in fields(getattr(cfg, f.name))} for f in fields(cls)
                if dataclasses.is_dataclass(getattr(cfg, f.name))}
        top = {f.name for f in fields(cls)} - set(subs)
        kw: dict[str, dict[str, Any]] = {name: {} for name in subs}
        top_kw = {}
        for k, v in params.items():
            if v is None:
                continue
            if isinstance(v, list):
                v = tuple(v)
            owner = next((name for name, names in subs.items() if k in names), None)
            if k in top:
                top_kw[k] = v
            elif owner is not None:
                kw[owner][k] = v
            else:
                known = sorted(top.union(*subs.values()))
                raise ValueError(f"unknown parameter {k!r}; known: {known}")
        if preset == "voc":
            top_kw.setdefault("data_source", "voc")
        return replace(cfg, **{name: replace(getattr(cfg, name), **kw[name]) for name in subs}, **top_kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunCfg:
        """Inverse of :meth:`to_dict` (e.g. ``params.json["resolved"]``; JSON lists become tuples)."""
        def tup(v: Any) -> Any:
            return tuple(v) if isinstance(v, list) else v

        subs = {"data": DataCfg, "baseline": BaselineCfg, "conta": ContaCfg}
        kw = {k: (subs[k](**{f: tup(x) for f, x in v.items()}) if k in subs else v) for k, v in d.items()}
        return cls(**kw)


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
