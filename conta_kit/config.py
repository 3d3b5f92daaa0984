"""Typed, frozen run configuration. Notebook ``parameters`` cells hold flat literals mapped here once.

``RunCfg.from_params(preset="default", **flat)`` starts from a preset and overrides fields by their flat
names (``cooccurrence=0.75``, ``num_train=500``); an unknown name is an error, never silently ignored.

Longer than 350 lines because every option is documented beside its field and checked in its dataclass; the
four sections and the presets are one table a user reads top to bottom.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .precision import check_amp

PRESETS = ("smoke", "default", "bench", "gpu", "voc")
#: the embedded benchmark's layouts and object textures (:mod:`conta_kit.data.scenes`); here, without torch, so that
#: a run configuration and the generator check them with one function (:func:`check_scene_choices`)
LAYOUTS = ("prior", "prior_strip", "prior_class_surround", "uniform")
OBJECT_TEXTURES = ("plain", "pattern")
TRAIN_WINDOWS = ("open", "glass")
#: the "tiny" backbone's convolution borders (``BaselineCfg.cls_padding``)
PADDING_MODES = ("zeros", "reflect", "replicate")
#: how a classifier pools its class scores into logits (``BaselineCfg.cls_pooling``)
POOLINGS = ("gap", "max", "lse")
#: each classifier backbone's output strides, its default first (:mod:`conta_kit.models.backbones`)
OUTPUT_STRIDES: dict[str, tuple[int, ...]] = {"tiny": (8, 4), "resnet18": (16, 8, 32), "resnet50": (16, 8, 32),
                                              "resnet101": (16, 8, 32), "efficientnet_lite0": (16, 8, 32)}


def check_scene_choices(*, layout: str | None = None, object_texture: str | None = None,
                        object_scale: float | None = None, train_windows: str | None = None) -> None:
    """ValueError naming the parameter unless each given layout, object texture, object scale and kind of train
    windows is one the generator knows (None: not checked here; the generator checks its layout argument and
    its options apart)."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if object_texture is not None and object_texture not in OBJECT_TEXTURES:
        raise ValueError(f"object_texture must be one of {OBJECT_TEXTURES}, got {object_texture!r}")
    if object_scale is not None and not 0.25 <= object_scale <= 3.0:
        raise ValueError(f"object_scale must be in [0.25, 3], got {object_scale}")
    if train_windows is not None and train_windows not in TRAIN_WINDOWS:
        raise ValueError(f"train_windows must be one of {TRAIN_WINDOWS}, got {train_windows!r}")


@dataclass(frozen=True)
class DataCfg:
    """The embedded benchmark's size and confounding.

    Attributes:
        image_size: square image side S.
        cooccurrence: rho, the probability that an object stands on its paired context.
        num_train, num_val, num_shifted, num_ood: images per split.
        classifier_images: images the classifier trains on (None: ``num_train``). More than ``num_train`` streams
            fresh images of the generator: the classifier sees images 0..classifier_images - 1 of the train
            stream, of which the first ``num_train`` are the train split that gets CAMs, pseudo-masks and the
            segmenter (the generator is free; many epochs over few images are not).
        rider_rate: probability that a horse carries a rider.
        layout: "prior_strip" (the default: each class its own size, aspect and vertical band; each context where
            it lies in photos, filling the object's strip, grounds below a horizon drawn whatever the class, so
            at rho = chance neither its texture nor its extent says anything about the class), "prior" (the
            same objects, each context a patch whose extent follows the object's box: at chance a ground band
            starting at a flyer's height still tells the class; the default before),
            "prior_class_surround" (the same, the patch shaped by the object's class whatever context is drawn:
            a class cue the intervention does not remove; the default before that) or "uniform" (the first layout:
            one size range for all; the negative control for CONTA).
        object_texture: "pattern" (the default: a class-specific surface pattern inside each silhouette, a
            local cue as fur, paint and windows are in photos; see ``SceneOptions``) or "plain" (objects one
            shaded colour: the silhouette is the only class cue; the default before).
        pattern_strength: contrast of the ``"pattern"`` texture inside the objects (default 0.3: the shading
            varies by +-30 %; 0 leaves plain objects; ignored for ``"plain"``).
        object_scale: the class-prior layouts' object heights times this factor (default 1.0: the table's
            sizes; objects then cover about 4 % of the image each, VOC's far more). 1.4 was the default for a
            while: on val, over 3 seeds, it scored lower than 1.0 (the low classes pushed against the bottom
            edge), so it is an option (``benchmarks/recipe_health.py``, step ``+scale``; docs/benchmark_health.md).
        train_windows: "glass" (the default: dark panes inside the train's silhouette and mask, as VOC annotates a
            train's windows) or "open" (holes: the context shows through them and they are not in the train's mask;
            the default before). The same draws and layouts either way. On val at rho 0.5 (3 seeds, paired) glass
            raised the baseline's seed mIoU by 0.016 and its share of the resolution ceiling
            (``benchmarks/results/cpu_recipe_health_train_windows.json``; docs/benchmark_health.md).
        ``benchmarks/recipe_health.py`` scores each of these ingredients on val, baseline and oracle.
    """

    image_size: int = 96
    cooccurrence: float = 0.9
    num_train: int = 2000
    num_val: int = 500
    num_shifted: int = 500
    num_ood: int = 500
    classifier_images: int | None = None
    rider_rate: float = 0.3
    layout: str = "prior_strip"
    object_texture: str = "pattern"
    pattern_strength: float = 0.3
    object_scale: float = 1.0
    train_windows: str = "glass"

    def __post_init__(self) -> None:
        check_scene_choices(layout=self.layout, object_texture=self.object_texture, object_scale=self.object_scale,
                            train_windows=self.train_windows)
        if not 0.0 <= self.pattern_strength <= 1.0:
            raise ValueError(f"pattern_strength must be in [0, 1], got {self.pattern_strength}")
        if not 0.0 <= self.cooccurrence <= 1.0:
            raise ValueError(f"cooccurrence must be in [0, 1], got {self.cooccurrence}")
        for f in ("num_train", "num_val", "image_size"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        for f in ("num_shifted", "num_ood"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must be >= 0, got {getattr(self, f)}")
        if not 0.0 <= self.rider_rate <= 1.0:
            raise ValueError(f"rider_rate must be in [0, 1], got {self.rider_rate}")
        if self.classifier_images is not None and self.classifier_images < self.num_train:
            raise ValueError(f"classifier_images must be None or >= num_train ({self.num_train}), "
                             f"got {self.classifier_images}")


@dataclass(frozen=True)
class BaselineCfg:
    """Round 0 of CONTA: the CAM -> pseudo-mask -> segmentation pipeline (IRNet-style, without IRN).

    Attributes:
        backbone: classifier backbone ("tiny" on CPU; "resnet50" for VOC/COCO on a GPU).
        output_stride: the classifier's output stride (None: the backbone's default, 8 for "tiny", 16 for the
            ResNets as IRNet's; ``OUTPUT_STRIDES`` lists each backbone's choices). "tiny" at 4 gives a 24 x 24 CAM
            grid at 96 px (the resolution ceiling rises) for about 2.3x the multiply-adds.
        cls_width: channel width of the "tiny" backbone (its last stage has 4 x width channels).
        cls_padding: the "tiny" backbone's convolution border: "zeros" (as every torchvision CNN), "reflect" or
            "replicate" (a cell then learns less about its distance from the image's edges).
        cls_depth: the number of 3 x 3 convolutions in the "tiny" backbone's last stage, >= 1 (CONTA's default
            fusion feeds M into that stage): 2, a receptive field of 75 px at stride 8; each one adds 16 px.
        cls_pooling, cls_lse_r: how the class-score map becomes logits: "gap" (IRNet's and CONTA's: every cell
            counts alike), "max" (the highest cell) or "lse" (log-sum-exp with sharpness ``cls_lse_r``, between the
            two); the CAM is the same map under all three (:func:`conta_kit.models.classifier.pool_logits`).
            W-OoD's terms are defined on GAP features, so ``finetune="wood"`` needs "gap".
        pretrained: None, "imagenet" or a path to a torchvision ResNet state dict.
        cls_epochs, cls_batch_size, cls_lr, cls_optimizer: classifier training (SGD-poly by default).
        cls_head_lr_mult: the learning-rate factor of the classifier's CAM head (and of CONTA's new layers):
            IRNet's 10, meant for a new head on a pretrained trunk.
        cls_weight_decay: the classifier's weight decay (IRNet: 1e-4).
        aug_scale, aug_crop: classifier augmentation besides the flip: random rescale range and crop size
            (IRNet: long side 320-640, crop 512); x_m gets exactly the same geometry. Off on the benchmark.
        aug_shift: random translation of each training image by up to this many pixels each way (0 = off; the
            border filled with mid-grey, labels kept): the object's absolute position becomes a weaker cue that a
            classifier can read from the image border, which otherwise pulls CAMs off objects near the edges.
            The benchmark's presets use about 0.2 of the image side (20 px at 96); VOC's keeps IRNet's recipe.
        cam_scales, cam_flip: CAM inference (IRNet: scales 1.0, 0.5, 1.5, 2.0 with flips, for 500-px photos).
            The benchmark's default keeps 1.0 and 1.5: 2.0 alone costs more than the other three together and
            changes nothing beyond the spread, and at 96 px the 0.5 view is a 6 x 6 grid of 16-px cells, wider
            than an object (about 13 px); without it the baseline's val seed mIoU rose on every seed
            (``benchmarks/results/cpu_recipe_health_cam_scales.json``; docs/benchmark_health.md).
        bg_threshold: fixed background threshold for seed mIoU (IRNet's cam_eval_thres 0.15).
        threshold_grid: thresholds swept on val to choose the best one (never on the scored split).
        conf_fg, conf_bg: IRNet's confident fore/background thresholds for the pseudo-masks (0.30 / 0.05).
        segmenter, seg_epochs, seg_batch_size, seg_lr, seg_optimizer: segmentation model training.
        eval_batch_size: batch size for CAM and mask inference.
        num_workers: DataLoader worker processes for training (0 on the CPU benchmark).
        amp: precision of classifier, segmenter and W-OoD training and of CAM inference (:mod:`conta_kit.precision`):
            "auto" (bf16 autocast on CUDA and on a CPU with bf16 units such as AMX, fp32 elsewhere), "off"
            (fp32), "bf16" (also on a CPU without bf16 units, slowly) or "fp16" (CUDA). Segmenter predictions
            and every metric are computed in fp32.
    """

    backbone: str = "tiny"
    output_stride: int | None = None
    cls_width: int = 32
    cls_padding: str = "zeros"
    cls_depth: int = 2
    cls_pooling: str = "gap"
    cls_lse_r: float = 5.0
    pretrained: str | None = None
    cls_epochs: int = 6
    cls_batch_size: int = 32
    cls_lr: float = 0.05
    cls_optimizer: str = "sgd"
    cls_head_lr_mult: float = 10.0
    cls_weight_decay: float = 1e-4
    aug_scale: tuple[float, float] = (1.0, 1.0)
    aug_crop: int | None = None
    aug_shift: int = 0
    cam_scales: tuple[float, ...] = (1.0, 1.5)  # the benchmark at 96 px; IRNet's: 1.0, 0.5, 1.5, 2.0
    cam_flip: bool = True
    bg_threshold: float = 0.15
    threshold_grid: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95
    conf_fg: float = 0.30
    conf_bg: float = 0.05
    segmenter: str = "tiny"
    seg_epochs: int = 6
    seg_batch_size: int = 32
    seg_lr: float = 0.05
    seg_optimizer: str = "sgd"
    eval_batch_size: int = 64
    num_workers: int = 0
    amp: str = "auto"

    def __post_init__(self) -> None:
        check_amp(self.amp)
        if self.output_stride is not None and self.output_stride not in OUTPUT_STRIDES.get(self.backbone, ()):
            raise ValueError(f"output_stride must be None or one of {OUTPUT_STRIDES.get(self.backbone, ())} for "
                             f"backbone {self.backbone!r}, got {self.output_stride}")
        if self.cls_padding not in PADDING_MODES:
            raise ValueError(f"cls_padding must be 'zeros', 'reflect' or 'replicate', got {self.cls_padding!r}")
        if self.cls_padding != "zeros" and self.backbone != "tiny":
            raise ValueError(f"cls_padding {self.cls_padding!r} exists only for backbone 'tiny', not {self.backbone!r}")
        if self.cls_depth < 1 or (self.cls_depth != 2 and self.backbone != "tiny"):
            raise ValueError(f"cls_depth must be >= 1, and other than 2 only for backbone 'tiny', got {self.cls_depth} "
                             f"for {self.backbone!r}")
        if self.cls_pooling not in POOLINGS:
            raise ValueError(f"cls_pooling must be one of {POOLINGS}, got {self.cls_pooling!r}")
        if not self.cls_lse_r > 0:
            raise ValueError(f"cls_lse_r must be > 0, got {self.cls_lse_r}")
        if isinstance(self.pretrained, str) and self.pretrained.lower() == "none":  # "-p pretrained none"
            object.__setattr__(self, "pretrained", None)
        for name in ("cls_width", "cls_epochs", "cls_batch_size", "seg_epochs", "seg_batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cls_lr", "seg_lr", "cls_head_lr_mult"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.cls_weight_decay < 0:
            raise ValueError(f"cls_weight_decay must be >= 0, got {self.cls_weight_decay}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.aug_shift < 0:
            raise ValueError(f"aug_shift must be >= 0, got {self.aug_shift}")
        if not self.cam_scales or any(not v > 0 for v in self.cam_scales):
            raise ValueError(f"cam_scales must be one or more values > 0, got {self.cam_scales}")
        if not self.threshold_grid or any(not 0 < v < 1 for v in self.threshold_grid):
            raise ValueError(f"threshold_grid must be one or more values in (0, 1), got {self.threshold_grid}")
        for name in ("bg_threshold", "conf_fg", "conf_bg"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class ContaCfg:
    """CONTA's rounds (round 0 is the baseline) and its [KIT] decisions, each a named option.

    Attributes:
        rounds: T, the last round (0 = the baseline only).
        adjustment: "backdoor" (CONTA's M), "raw_mask" (reviewer's baseline: fuse x_m itself) or "zero" (M = 0:
            the retrain control, the adjusted classifier's architecture and training with nothing fused).
        fusion: where M is concatenated: "penultimate" (the stage before the last, so M passes a conv + BN +
            ReLU before the CAM head; the kit's default), "last" (concatenated before the bias-free 1x1 head
            and GAP, the paper's literal "block 5": the logits then see M only through GAP(M) and the
            attention gets no gradient, see docs/conta.md), "input", or a stage name.
        fusion_init: the new fusion weights start at "zero" (the round starts as the baseline) or "normal"
            (drawn like their neighbours, as the official module's N(0, 0.01) output layer; the default).
        attn_init: W1, W2 ~ N(0, 0.02) ("official"), "scaled" to the masks (W1 x_m, W2 c_i of order one), or
            "match" (the default: scaled, with the prototypes as W1's and W2's rows, so the attention starts as
            the mask's overlap with each prototype; see :class:`~conta_kit.methods.conta.BackdoorAdjustment`).
        grid: side of the canonical grid of prototypes and W1/W2; None = the classifier's feature-map size.
        prior: P(c): "uniform" (paper) or "freq" (share of training images with the class).
        include_bg: add a background prototype (the official loader drops it).
        temperature: attention temperature tau; None = sqrt(n).
        m_scale: "max" (M divided by its per-image maximum: O(1), the default), "paper" (M as defined, at
            most 1/n) or "convex" (divide by sum alpha_i P(c_i)).
        xm: the image's mask x_m from the previous segmenter: "fg_prob" (1 - P(background)) or "fg_binary".
        present: which images average into c_i: "label" (image label has the class) or "pred" (predicted).
        init: each round's classifier starts from "scratch" (same seed as round 0) or the "previous" round's.
        oracle: on the embedded benchmark, also run the interventional oracle: round 0's recipe, seeds and
            image layouts with the classifier trained at rho = chance (the generator's do(X)); every table
            reads methods against it (``gap_closed``).
        gt_arm: on the embedded benchmark, also run CONTA with ground-truth ingredients (C from the train
            split's true masks, x_m the true foreground of every image): the method's own ceiling, the best
            C and x_m any round could produce (``seed_<s>/conta_gt/``).
        shuffle_prototypes: negative control: every prototype's grid cells are permuted (its own seeded
            permutation), so C keeps its values but loses location and shape.
        parallel_arms: on a CPU with two or more cores, train the oracle and CONTA over true ingredients in a
            second process while the rounds train (the cores split between the two, one job per core), rather
            than after them with every core as intra-op threads (``benchmarks/bench_threads.py`` measured
            which is faster; the arms need no round). Each process then runs on fewer threads, which can
            change float rounding (not the arithmetic: the same run on one thread gives the same numbers).
    """

    rounds: int = 3
    adjustment: str = "backdoor"
    fusion: str = "penultimate"
    fusion_init: str = "normal"
    attn_init: str = "match"
    grid: int | None = None
    prior: str = "uniform"
    include_bg: bool = False
    temperature: float | None = None
    m_scale: str = "max"
    xm: str = "fg_prob"
    present: str = "label"
    init: str = "scratch"
    oracle: bool = True
    gt_arm: bool = True
    shuffle_prototypes: bool = False
    parallel_arms: bool = True

    def __post_init__(self) -> None:
        choices = {"adjustment": ("backdoor", "raw_mask", "zero"), "prior": ("uniform", "freq"),
                   "m_scale": ("paper", "convex", "max"), "xm": ("fg_prob", "fg_binary"),
                   "present": ("label", "pred"), "init": ("scratch", "previous"),
                   "fusion_init": ("zero", "normal"), "attn_init": ("official", "scaled", "match")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")
        for name in ("oracle", "gt_arm", "shuffle_prototypes"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.grid is not None and self.grid < 1:
            raise ValueError(f"grid must be >= 1 or None, got {self.grid}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 or None, got {self.temperature}")
        fusions = ("last", "input", "penultimate", "stem", "layer1", "layer2", "layer3", "layer4")
        if self.fusion not in fusions:  # the stage names of every backbone; the model checks its own
            raise ValueError(f"fusion must be one of {fusions}, got {self.fusion!r}")


@dataclass(frozen=True)
class WOoDConfig:
    """W-OoD (CVPR 2022): a trained round classifier is fine-tuned for ``ft_epochs`` more epochs.

    ``finetune`` is "off" (no extra stage: the CONTA run as before), "plain" (the extra epochs with the
    classification loss only: the fair baseline, same epochs and schedule) or "wood" (the extra epochs
    with W-OoD's metric and OoD terms). Defaults follow the official code (see docs/wood.md).

    Attributes:
        finetune: "off", "plain" or "wood".
        ft_epochs: extra epochs (paper: 5 on top of IRNet's classifier). ft_lr: their lr (None = cls_lr).
        pool: the OoD training images: "hard" (the paired contexts alone), "random" (other backgrounds)
            or "mined" (the starting classifier's false positives among random backgrounds).
        num_pool: images in the pool (for "mined": candidates scored). mine_thr, mine_top_n: a candidate
            is kept when its max class probability is >= mine_thr; then the top_n highest (None = all).
        ood_batch_size: OoD images per step (None = the classifier's batch size, as in the paper).
        lambda_metric, beta_ood: weights of the metric term (0.007) and the OoD classification term (0.25).
        k, kmeans_iters, kmeans_init: OoD centres Q_k: K-means with K = 50, 10 Lloyd iterations, seeded
            "kmeans++" initial centres ("first": the first K features, as in the official code).
        push_frac: share of the batch's (image, OoD centre) pairs that are pushed apart (the closest 20 %).
        ascent_eps: the one gradient-ascent step on OoD pixels that raises their max logit (0 = off).
        refresh_every: recompute P_c and Q_k every n epochs (0 = frozen at the start, the paper).
        margin: None (the paper's unbounded push) or m > 0: push only pairs closer than m, by m - e.
        exclude_class: None, or the class index whose top-scoring OoD images get no OoD loss (the
            official code's hard-coded index 4).
    """

    finetune: str = "off"
    ft_epochs: int = 3
    ft_lr: float | None = None
    pool: str = "hard"
    num_pool: int = 500
    mine_thr: float = 0.5
    mine_top_n: int | None = None
    ood_batch_size: int | None = None
    lambda_metric: float = 0.007
    beta_ood: float = 0.25
    k: int = 50
    kmeans_iters: int = 10
    kmeans_init: str = "kmeans++"
    push_frac: float = 0.2
    ascent_eps: float = 0.07
    refresh_every: int = 0
    margin: float | None = None
    exclude_class: int | None = None

    def __post_init__(self) -> None:
        choices = {"finetune": ("off", "plain", "wood"), "pool": ("hard", "random", "mined"),
                   "kmeans_init": ("kmeans++", "first")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.ft_epochs < 1 or self.num_pool < 1 or self.k < 1 or self.kmeans_iters < 1:
            raise ValueError("ft_epochs, num_pool, k and kmeans_iters must be >= 1")
        if not 0.0 < self.push_frac <= 1.0:
            raise ValueError(f"push_frac must be in (0, 1], got {self.push_frac}")
        if self.margin is not None and self.margin <= 0:
            raise ValueError(f"margin must be None or > 0, got {self.margin}")
        if self.lambda_metric < 0 or self.beta_ood < 0 or self.ascent_eps < 0 or self.refresh_every < 0:
            raise ValueError("lambda_metric, beta_ood, ascent_eps and refresh_every must be >= 0")


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
        wood: :class:`WOoDConfig` (the extra fine-tuning stage of every round; off by default).
    """

    preset: str = "default"
    seed: int = 0
    device: str = "auto"
    data_source: str = "scenes"
    data_root: str | None = None
    data: DataCfg = field(default_factory=DataCfg)
    baseline: BaselineCfg = field(default_factory=lambda: BaselineCfg(aug_shift=20))  # the default preset's
    conta: ContaCfg = field(default_factory=ContaCfg)
    wood: WOoDConfig = field(default_factory=WOoDConfig)

    def __post_init__(self) -> None:
        if self.data_source not in ("scenes", "voc", "coco"):
            raise ValueError(f"data_source must be 'scenes', 'voc' or 'coco', got {self.data_source!r}")
        if self.data_source != "scenes" and not self.data_root:
            raise ValueError(f"data_source={self.data_source!r} needs data_root (the dataset folder)")
        if self.baseline.aug_shift >= self.data.image_size:  # every image would leave the frame
            raise ValueError(f"aug_shift ({self.baseline.aug_shift}) must be smaller than image_size "
                             f"({self.data.image_size})")
        if self.wood.finetune == "wood" and self.baseline.cls_pooling != "gap":
            raise ValueError(f"finetune='wood' needs cls_pooling='gap' (its metric and OoD terms use the GAP features "
                             f"the head sees), got {self.baseline.cls_pooling!r}")
        if self.wood.finetune == "wood" and self.data_source != "scenes":
            raise ValueError(f"finetune='wood' needs background-only images, which only the embedded benchmark "
                             f"provides; data_source={self.data_source!r} supports finetune 'off' or 'plain'")

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
                                            cls_batch_size=16, seg_batch_size=16, aug_shift=13,
                                            threshold_grid=(0.15, 0.35, 0.55, 0.75, 0.95)),
                       conta=ContaCfg(rounds=1), wood=WOoDConfig(ft_epochs=1, num_pool=48, k=8))
        if preset == "bench":  # the confounding sweep on the CPU: every (rho, method, seed) in about a minute
            return cls(preset="bench", data=DataCfg(image_size=64, num_train=600, num_val=200, num_shifted=200,
                                                    num_ood=200),
                       baseline=BaselineCfg(cls_epochs=6, cls_lr=0.1, seg_epochs=4, seg_lr=0.1, cam_scales=(1.0, 0.5),
                                            aug_shift=13),
                       wood=WOoDConfig(ft_epochs=2, num_pool=300))
        if preset == "gpu":  # the embedded benchmark, larger, with ResNet-50 / DeepLabV3 (untested without a GPU)
            return cls(preset="gpu", data=DataCfg(image_size=160, num_train=10000, num_val=1000, num_shifted=1000,
                                                  num_ood=1000),
                       baseline=BaselineCfg(backbone="resnet50", segmenter="deeplabv3_resnet50", cls_epochs=8,
                                            cls_batch_size=64, cls_lr=0.05, seg_epochs=10, seg_batch_size=32,
                                            seg_lr=0.01, cam_scales=(1.0, 0.5, 1.5, 2.0), eval_batch_size=64,
                                            num_workers=8, aug_shift=33),
                       wood=WOoDConfig(ft_epochs=5, num_pool=2000))
        if preset == "voc":  # PASCAL VOC 2012 from data_root at IRNet's settings (needs -p data_root ...)
            return cls(preset="voc", data=DataCfg(image_size=320),
                       baseline=BaselineCfg(backbone="resnet50", pretrained="imagenet", segmenter="deeplabv3_resnet50",
                                            cls_epochs=5, cls_batch_size=16, cls_lr=0.1, seg_epochs=15,
                                            seg_batch_size=16, seg_lr=0.01, cam_scales=(1.0, 0.5, 1.5, 2.0),
                                            eval_batch_size=16, num_workers=8),
                       wood=WOoDConfig(ft_epochs=5))
        return cls()

    @classmethod
    def from_params(cls, preset: str = "default", **params: Any) -> RunCfg:
        """Build from a preset and flat overrides; ``None`` values keep the preset's value. Every value is
        checked against its field's declared type first (an error names the key, the value and the type)."""
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
            hints = typing.get_type_hints(type(getattr(cfg, owner)) if owner else cls)
            if k in hints:
                v = check_type(k, v, hints[k])
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
        """Inverse of :meth:`to_dict` (e.g. ``params.json["resolved"]``; JSON lists become tuples). A field that a
        recorded config lacks because the kit added it later takes the value that reproduces that run
        (:data:`ADDED_FIELDS`), not today's default."""
        def tup(v: Any) -> Any:
            return tuple(v) if isinstance(v, list) else v

        d = with_added_fields(d)
        subs = {"data": DataCfg, "baseline": BaselineCfg, "conta": ContaCfg, "wood": WOoDConfig}
        kw = {k: (subs[k](**{f: tup(x) for f, x in v.items()}) if k in subs else v) for k, v in d.items()}
        return cls(**kw)


#: Fields added to the kit after runs were recorded without them, with the value that reproduces such a run
#: (what the kit did before the field existed); today's default may differ.
ADDED_FIELDS: dict[str, dict[str, Any]] = {
    "data": {"object_texture": "plain", "object_scale": 1.0, "train_windows": "open"},
    "baseline": {"aug_shift": 0},
}


def with_added_fields(resolved: dict[str, Any]) -> dict[str, Any]:
    """A recorded ``resolved`` config with :data:`ADDED_FIELDS` filled in where it lacks them."""
    out = dict(resolved)
    for section, fields_ in ADDED_FIELDS.items():
        if isinstance(out.get(section), dict):
            out[section] = {**fields_, **out[section]}
    return out


def setting_differences(ours: dict[str, Any], theirs: dict[str, Any],
                        prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``[(path, theirs, ours)]`` where two settings dicts (``RunCfg.to_dict()`` as JSON) differ, nested sections
    as dotted paths ("data.layout"); a field ``theirs`` lacks (added to the kit since) is skipped."""
    out: list[tuple[str, Any, Any]] = []
    for k, v in ours.items():
        if k not in theirs:
            continue
        if isinstance(v, dict) and isinstance(theirs[k], dict):
            out += setting_differences(v, theirs[k], f"{prefix}{k}.")
        elif v != theirs[k]:
            out.append((f"{prefix}{k}", theirs[k], v))
    return out


def check_type(name: str, value: Any, hint: Any) -> Any:
    """``value`` if it fits the type ``hint`` (int, float, bool, str, tuples of floats, ``X | None``), else a
    ValueError naming ``name``; ints are accepted for floats and lists for tuples (returned converted)."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ValueError(f"{name} must not be None")
    if type(None) in args:
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        inner = typing.get_args(hint)
        if not isinstance(value, tuple | list) or (Ellipsis not in inner and len(value) != len(inner)):
            n = "one or more" if Ellipsis in inner else str(len(inner))
            raise ValueError(f"{name} must be a tuple of {n} numbers, e.g. (1.0, 0.5), got {value!r}")
        return tuple(check_type(name, v, inner[0]) for v in value)
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
          bool: isinstance(value, bool), str: isinstance(value, str)}.get(hint, True)
    if not ok:
        what = {int: "an integer", float: "a finite number", bool: "True or False", str: "a string"}[hint]
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value) if hint is float else value


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when available, else "cpu"; other values are checked and returned."""
    import torch  # config stays importable (and quick) without torch: only this check needs it

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}")
    return device
