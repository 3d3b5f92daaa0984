"""One round of the pipeline, as named steps: data -> classifier (-> fine-tuning) -> CAMs -> pseudo-masks ->
segmenter -> next round's confounders.

Round 0 is the baseline (CONTA's round 0, IRNet-style): classifier -> multi-scale, flip-averaged CAMs -> seed
mIoU (fixed threshold; best threshold chosen on val) -> confident pseudo-masks -> segmenter -> segmentation
mIoU on val, with boundary F and context leakage at every stage. Rounds >= 1 train a
:class:`~conta_kit.methods.conta.ContaClassifier` over the previous round's C and x_m. Everything lands in
the round's folder (:class:`~conta_kit.io.RoundLayout`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from ..config import RunCfg, resolve_device
from ..data import ConfoundedScenes, collate
from ..data.splits import load_splits
from ..data.transforms import WithMasks, WithXm, joint_augment, random_flip
from ..infer import classifier_scores
from ..io import RoundLayout, Run, atomic_torch_save
from ..methods.conta import ConfounderSet
from ..methods.conta.steps import (
    build_next_round,
    build_round_classifier,
    feature_grid,
    m_statistics,
    start_from_previous,
)
from ..methods.wood import finetune_classifier
from ..metrics import multilabel_map
from ..models import build_segmenter
from ..train import TrainCfg, checkpoint_progress, classifier_train_cfg, fit, multilabel_loss, segmentation_loss
from .evaluate import evaluate_cams, evaluate_segmenter

log = logging.getLogger(__name__)


def _augment(cfg: RunCfg) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The classifier's training augmentation (flip, rescale, crop, shift; x_m and masks move with the image)."""
    b = cfg.baseline
    return lambda batch: joint_augment(batch, scale=b.aug_scale, crop=b.aug_crop, shift=b.aug_shift)


def train_classifier(cfg: RunCfg, rnd: RoundLayout, data: dict[str, Dataset], device: torch.device, *,
                     confounders: ConfounderSet | None, previous: RoundLayout | None, round_index: int,
                     progress: bool, resume: bool) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """The round's classifier, seeded the same in every round, trained on ``data["train"]`` (resumable;
    ``data["classifier_train"]`` instead where given: more images of the generator, or the oracle's)."""
    b = cfg.baseline
    torch.manual_seed(cfg.seed)  # every round's classifier starts from the same initialisation
    train = data.get("classifier_train", data["train"])
    model = build_round_classifier(cfg, train.num_classes, confounders)
    if confounders is not None and cfg.conta.init == "previous" and previous is not None \
            and previous.final_classifier.exists():
        start_from_previous(model, previous, round_index)
    tcfg = classifier_train_cfg(b, cfg.seed)
    augment = _augment(cfg)
    hist = fit(model, train, lambda m, batch: multilabel_loss(m, augment(batch)), tcfg, device=device,
               collate_fn=collate, ckpt_dir=rnd.checkpoint_dir("classifier"), resume=resume, progress=progress,
               desc=f"classifier r{round_index}")
    return model, hist


def score_seeds(cfg: RunCfg, model: torch.nn.Module, data: dict[str, Dataset], device: torch.device, *,
                adjusted: bool, paired: tuple[int, ...] | None, progress: bool) -> tuple[dict[str, Any], dict]:
    """CAMs on val choose the threshold; CAMs on train give the seed scores and the pseudo-masks.

    Beside the seed scores: the resolution ceiling (ground truth pooled to the feature grid, its threshold
    chosen on val the same way), where CAM mass and peaks fall, and the surround leakage by pairing.
    Returns the round's ``seed`` metrics and the train evaluation (``pseudo``, ``pseudo_metrics``, scores).
    """
    b = cfg.baseline
    m_term = "both" if adjusted else True
    grid = feature_grid(model, cfg)
    val = evaluate_cams(model, data["val"], cfg, b.threshold_grid, device, paired, progress, m_term=m_term,
                        grid=grid)
    best_t = max(b.threshold_grid, key=lambda t: val["by_threshold"][str(t)]["miou"])
    best_ceiling = max(b.threshold_grid, key=lambda t: val["ceiling_cms"][t].compute()["miou"])
    thresholds = tuple(sorted({b.bg_threshold, best_t, best_ceiling}))
    tr = evaluate_cams(model, data["train"], cfg, thresholds, device, paired, progress, keep_pseudo=True,
                       bf_thresholds=tuple(sorted({b.bg_threshold, best_t})), m_term=m_term, grid=grid)
    tr["val"] = val
    fixed = tr["cms"][b.bg_threshold].compute()
    seed = {
        "fixed_threshold": b.bg_threshold, "miou_fixed": fixed["miou"],
        "best_threshold_on_val": best_t, "miou_best": tr["cms"][best_t].compute()["miou"],
        "bf_fixed": tr["bf"][b.bg_threshold].compute()["bf"], "bf_best": tr["bf"][best_t].compute()["bf"],
        "val_sweep": val["by_threshold"], "per_class_iou_fixed": fixed["iou"],
        "per_class_precision_fixed": fixed["precision"], "per_class_recall_fixed": fixed["recall"],
        "mean_precision_fixed": fixed["mean_precision"], "mean_recall_fixed": fixed["mean_recall"],
        "best_at_grid_edge": best_t in (min(b.threshold_grid), max(b.threshold_grid)),
        "ceiling": {"grid": list(grid), "miou_fixed": tr["ceiling_cms"][b.bg_threshold].compute()["miou"],
                    "miou_best": tr["ceiling_cms"][best_ceiling].compute()["miou"],
                    "best_threshold_on_val": best_ceiling,
                    "val_sweep": {str(t): val["ceiling_cms"][t].compute()["miou"] for t in b.threshold_grid}},
        "localisation": tr["localisation"],
    }
    seed["share_of_ceiling"] = seed["miou_best"] / seed["ceiling"]["miou_best"] if seed["ceiling"]["miou_best"] \
        else math.nan
    if (said := empty_cams_warning(seed["localisation"])) is not None:
        log.warning(said)
    if best_t in (min(b.threshold_grid), max(b.threshold_grid)):
        log.warning("the best seed threshold on val, %s, is at the edge of threshold_grid %s: extend the grid",
                    best_t, b.threshold_grid)
    if "surround" in tr:
        seed["surround"] = tr["surround"]
    if paired is not None:
        seed["cam_leakage"] = tr["leakage"]["cam_leakage"]
        seed["cam_leakage_per_class"] = tr["leakage"]["cam_leakage_per_class"]
    if adjusted:  # the diagnostic: the same CAMs with M = 0
        best_off = max(b.threshold_grid, key=lambda t: val["cms_without_m"][t].compute()["miou"])
        seed["without_m"] = {"miou_fixed": tr["cms_without_m"][b.bg_threshold].compute()["miou"],
                             "miou_at_best_threshold": tr["cms_without_m"][best_t].compute()["miou"],
                             "best_threshold_on_val": best_off,
                             **({"cam_leakage": tr["leakage_without_m"]["cam_leakage"]} if paired else {})}
    return seed, tr


def empty_cams_warning(localisation: dict[str, Any], most: float = 0.1) -> str | None:
    """What to tell a user when over ``most`` of the CAMs of present classes are empty (no positive evidence
    anywhere: a collapsed training), else None."""
    empty = localisation.get("cam_empty_share", 0.0)  # absent from runs recorded before it was measured
    if not empty > most:
        return None
    return (f"{100 * empty:.0f} % of the CAMs of present classes on train are empty (no positive evidence "
            f"anywhere): the classifier's training collapsed for them (try a lower cls_lr); its localisation "
            f"scores count only the others")


def score_classifier(cfg: RunCfg, model: torch.nn.Module, data: dict[str, Dataset], device: torch.device,
                     cams: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """mAP on train/val (from the CAM passes' scores) and shifted (context reliance = val - shifted), and the
    false-positive rate on held-out background-only images (``ood`` hard, ``ood_random``)."""
    bs = cfg.baseline.eval_batch_size
    scores = {"val_map": multilabel_map(cams["val"]["scores"], cams["val"]["targets"])["map"],
              "train_map": multilabel_map(cams["scores"], cams["targets"])["map"]}
    if "shifted" in data:
        scores["shifted_map"] = multilabel_map(*classifier_scores(model, data["shifted"], bs, device))["map"]
        scores["context_reliance"] = scores["val_map"] - scores["shifted_map"]
    ood: dict[str, Any] = {}
    for split, kind in (("ood", "hard"), ("ood_random", "random")):
        if split in data and len(data[split]):
            top = classifier_scores(model, data[split], bs, device)[0].max(1).values
            ood[kind] = {"fp_rate": float((top > 0.5).float().mean()), "mean_max_prob": float(top.mean()),
                         "num_images": len(top)}
    return scores, ood


def train_segmenter(cfg: RunCfg, rnd: RoundLayout, train: Dataset, pseudo: torch.Tensor, device: torch.device, *,
                    round_index: int, progress: bool, resume: bool) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """The segmenter, seeded, trained on the pseudo-masks with random flips (resumable)."""
    b = cfg.baseline
    torch.manual_seed(cfg.seed)
    seg = build_segmenter(b.segmenter, train.num_classes)
    tcfg = TrainCfg(epochs=b.seg_epochs, batch_size=b.seg_batch_size, lr=b.seg_lr, optimizer=b.seg_optimizer,
                    seed=cfg.seed, num_workers=b.num_workers, amp=b.amp)
    hist = fit(seg, WithMasks(train, pseudo), lambda m, batch: segmentation_loss(m, random_flip(batch)), tcfg,
               device=device, collate_fn=collate, ckpt_dir=rnd.checkpoint_dir("segmenter"), resume=resume,
               progress=progress, desc=f"segmenter r{round_index}")
    return seg, hist


def run_round(cfg: RunCfg, rnd: RoundLayout, splits: dict[str, Dataset], *, progress: bool = True,
              resume: bool = False, confounders: ConfounderSet | None = None,
              x_m: dict[str, torch.Tensor] | None = None, previous: RoundLayout | None = None,
              next_round: bool = False, round_index: int = 0, classifier_train: Dataset | None = None
              ) -> dict[str, Any]:
    """One round into ``rnd``: classifier -> CAMs -> pseudo-masks -> segmenter (-> x_m and C for the next).

    Round 0 (``confounders=None``) is the baseline. With a confounder set and ``x_m`` (split -> (N, H, W)
    uint8 masks from ``previous``'s segmenter) the classifier is a ContaClassifier. ``next_round=True``
    predicts masks on every split with the new segmenter and saves ``rnd.x_m`` and ``rnd.confounders``.
    ``classifier_train``: the images the classifier (and its fine-tuning) trains on, when they are not the
    scored train split (the oracle's, at rho = chance). Returns the round's metrics.
    """
    device = torch.device(resolve_device(cfg.device))
    train = splits["train"]
    paired = tuple(train.paired_context) if isinstance(train, ConfoundedScenes) else None
    adjusted = confounders is not None
    if adjusted and (x_m is None or any(k not in x_m for k in splits)):
        raise ValueError(f"an adjusted round needs x_m for every split {sorted(splits)}, got {sorted(x_m or {})}")
    data = {k: WithXm(v, x_m[k]) if adjusted else v for k, v in splits.items()}
    if classifier_train is not None:
        if adjusted:
            raise ValueError("classifier_train is for round 0 recipes (the oracle), not adjusted rounds")
        data["classifier_train"] = classifier_train
    timing: dict[str, Any] = {}
    # a resumed round: the epochs trained before the stop are timed from their checkpoints, not lost
    earlier = {stage: checkpoint_progress(rnd.checkpoint_dir(stage))[1] if resume else 0.0
               for stage in ("classifier", "classifier_ft", "segmenter")}
    clock = time.perf_counter()
    t0 = clock

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timing[name], clock = now - clock, now

    model, hist = train_classifier(cfg, rnd, data, device, confounders=confounders, previous=previous,
                                   round_index=round_index, progress=progress, resume=resume)
    lap("classifier_s")
    extra: dict[str, Any] = {}
    if cfg.wood.finetune != "off":  # W-OoD, or the same extra epochs without it (the fair baseline)
        ft_data = {**data, "train": data.get("classifier_train", data["train"])}
        extra["finetune"] = finetune_classifier(cfg, model, ft_data, rnd, device, _augment(cfg), progress=progress,
                                                resume=resume, round_index=round_index)
        lap("finetune_s")
    seed, cams = score_seeds(cfg, model, data, device, adjusted=adjusted, paired=paired, progress=progress)
    lap("cams_s")
    cls_scores, ood = score_classifier(cfg, model, data, device, cams)
    if ood:
        extra["ood"] = ood
    atomic_torch_save(rnd.artifact("pseudo_masks.pt"), cams["pseudo"])
    if adjusted:
        st = m_statistics(model, data["train"], cfg.baseline.eval_batch_size, device, confounders.class_ids)
        if "alpha" in st:
            atomic_torch_save(rnd.artifact("attention.pt"), st.pop("alpha"))
        extra["m"] = st
    clock = time.perf_counter()
    seg, seg_hist = train_segmenter(cfg, rnd, train, cams["pseudo"], device, round_index=round_index,
                                    progress=progress, resume=resume)
    lap("segmenter_s")
    seg_val = evaluate_segmenter(seg, splits["val"], cfg.baseline.eval_batch_size, device, paired, progress)
    if next_round:
        clock = time.perf_counter()
        build_next_round(cfg, seg, splits, rnd, device, progress, grid=feature_grid(model, cfg))
        lap("next_round_s")
    timing["total_s"] = time.perf_counter() - t0
    if any(earlier.values()):
        timing["earlier_s"] = {k: round(v, 3) for k, v in earlier.items() if v}
        timing["total_with_earlier_s"] = timing["total_s"] + sum(earlier.values())
        log.warning("resumed round %d: total_s (%.0f s) covers this run only; with the epochs trained before the "
                    "stop: %.0f s (timing.total_with_earlier_s)", round_index, timing["total_s"],
                    timing["total_with_earlier_s"])
    metrics = {
        "round": round_index, "adjusted": adjusted,
        "classifier": {**cls_scores, "history": hist},
        "seed": seed,
        "pseudo": {k: v for k, v in cams["pseudo_metrics"].items() if k not in ("precision", "recall")},
        "segmentation": {**seg_val, "history": seg_hist},
        **extra,
        "timing": timing, "device": str(device), "num_train": len(train), "num_val": len(splits["val"]),
    }
    arm = rnd.path.name if rnd.path.name in ("oracle", "conta_gt") else f"round {round_index}"
    log.info("%s: seed %.3f (best %.3f) pseudo %.3f seg %.3f in %.0f s", arm, seed["miou_fixed"],
             seed["miou_best"], metrics["pseudo"]["miou"], seg_val["miou"], timing["total_s"])
    return metrics


def run_baseline(cfg: RunCfg, run: Run, *, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Run round 0 end to end into ``run`` (the run folder is the round's folder) and return (and log)
    ``metrics["baseline"]``."""
    torch.manual_seed(cfg.seed)
    metrics = run_round(cfg, RoundLayout(run.path), load_splits(cfg), progress=progress, resume=resume)
    run.log_metrics("baseline", metrics)
    return metrics
