"""The baseline WSSS pipeline end to end (CONTA's round 0), on the embedded benchmark or VOC/COCO.

train classifier -> CAMs -> seed mIoU (fixed threshold; best threshold chosen on val) -> pseudo-masks
-> pseudo-mask mIoU -> train segmenter -> segmentation mIoU on val, with boundary F and context leakage
at every stage. Everything lands in the run folder: checkpoints under ``checkpoints/``, pseudo-masks in
``artifacts/pseudo_masks.pt`` and the numbers in ``metrics.json[baseline]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .cam import compute_cams
from .config import RunCfg, resolve_device
from .data import COCOSegmentation, ConfoundedScenes, VOCSegmentation, collate
from .data.scenes import scene_splits
from .io import Run, atomic_torch_save
from .metrics import BoundaryFScore, ConfusionMatrix, ContextLeakage, multilabel_map
from .models import build_classifier, build_segmenter
from .pseudo import cams_to_labels, cams_to_pseudo_masks
from .train import TrainCfg, fit, multilabel_loss, segmentation_loss

log = logging.getLogger(__name__)


class Resize:
    """Joint transform: image bilinear, mask nearest, to ``size`` x ``size`` (for batching real photos)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        s = (self.size, self.size)
        item = dict(item)
        item["image"] = F.interpolate(item["image"][None], size=s, mode="bilinear", align_corners=False)[0]
        item["mask"] = F.interpolate(item["mask"][None, None].float(), size=s, mode="nearest")[0, 0].long()
        return item


class WithMasks(Dataset):
    """``dataset`` with its ``mask`` replaced by ``masks[i]`` (e.g. pseudo-masks); the original is kept as
    ``gt_mask``."""

    def __init__(self, dataset: Dataset, masks: torch.Tensor) -> None:
        if len(masks) != len(dataset):
            raise ValueError(f"{len(masks)} masks for {len(dataset)} images")
        self.dataset, self.masks = dataset, masks

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        item["gt_mask"], item["mask"] = item["mask"], self.masks[i].long()
        return item


def load_splits(cfg: RunCfg) -> dict[str, Dataset]:
    """train/val (+ shifted/ood for the benchmark) for the configured data source."""
    if cfg.data_source == "scenes":
        return scene_splits(cfg.data, seed=cfg.seed)
    cls = VOCSegmentation if cfg.data_source == "voc" else COCOSegmentation
    t = Resize(cfg.data.image_size)
    return {"train": cls(cfg.data_root, "train", transform=t), "val": cls(cfg.data_root, "val", transform=t)}


def random_flip(batch: dict[str, Any]) -> dict[str, Any]:
    """Flip a random half of the batch horizontally (image and every (B, H, W) map), torch RNG."""
    flip = torch.rand(batch["image"].shape[0], device=batch["image"].device) < 0.5
    out = dict(batch)
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 3:
            out[k] = torch.where(flip.view(-1, *([1] * (v.dim() - 1))), v.flip(-1), v)
    return out


def _batches(dataset: Dataset, batch_size: int, device: torch.device, desc: str,
             progress: bool) -> Iterator[dict[str, Any]]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate_cams(model: torch.nn.Module, dataset: Dataset, cfg: RunCfg, thresholds: tuple[float, ...],
                  device: torch.device, paired: tuple[int, ...] | None, progress: bool = True,
                  keep_pseudo: bool = False) -> dict[str, Any]:
    """Seed mIoU for every threshold, CAM leakage, classification scores and (optionally) pseudo-masks."""
    b = cfg.baseline
    n_labels = dataset.num_classes + 1
    cms = {t: ConfusionMatrix(n_labels) for t in thresholds}
    bf = {t: BoundaryFScore(n_labels) for t in thresholds}
    leak = ContextLeakage(paired) if paired is not None else None
    pseudo_cm, pseudo_cm_lab = ConfusionMatrix(n_labels), ConfusionMatrix(n_labels)
    pseudo, scores, targets, covered, total = [], [], [], 0, 0
    for batch in _batches(dataset, b.eval_batch_size, device, "CAMs", progress):
        scores.append(torch.sigmoid(model(batch["image"]).float()).cpu())
        targets.append(batch["labels"].cpu())
        cams = compute_cams(model, batch["image"], batch["labels"], scales=b.cam_scales, flip=b.cam_flip)
        for t in thresholds:
            pred = cams_to_labels(cams, batch["labels"], t)
            cms[t].update(pred, batch["mask"])
            bf[t].update(pred, batch["mask"])
        if leak is not None:
            leak.update_cams(cams, batch["labels"], batch["context_mask"])
        if keep_pseudo:
            pm = cams_to_pseudo_masks(cams, batch["labels"], conf_fg=b.conf_fg, conf_bg=b.conf_bg)
            labelled = pm != 255
            pseudo_cm.update(pm.masked_fill(~labelled, 0), batch["mask"])  # IRNet's convention: 255 -> 0
            pseudo_cm_lab.update(pm[labelled], batch["mask"][labelled])
            covered, total = covered + int(labelled.sum()), total + pm.numel()
            if leak is not None:
                leak.update_masks(pm.masked_fill(~labelled, 0), batch["labels"], batch["context_mask"])
            pseudo.append(pm.to(torch.uint8).cpu())
    out: dict[str, Any] = {
        "by_threshold": {str(t): {"miou": cms[t].compute()["miou"], "bf": bf[t].compute()["bf"]} for t in thresholds},
        "scores": torch.cat(scores), "targets": torch.cat(targets), "cms": cms, "bf": bf,
    }
    if leak is not None:
        out["leakage"] = leak.compute()
    if keep_pseudo:
        out["pseudo"] = torch.cat(pseudo)
        out["pseudo_metrics"] = {**pseudo_cm.compute(), "miou_labelled_only": pseudo_cm_lab.compute()["miou"],
                                 "coverage": covered / max(total, 1),
                                 **({"mask_leakage": out["leakage"]["mask_leakage"]} if leak is not None else {})}
    return out


@torch.no_grad()
def evaluate_segmenter(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                       paired: tuple[int, ...] | None, progress: bool = True) -> dict[str, Any]:
    """Segmentation mIoU, per-class IoU/precision/recall, boundary F and mask leakage on ``dataset``."""
    n_labels = dataset.num_classes + 1
    cm, bf = ConfusionMatrix(n_labels), BoundaryFScore(n_labels)
    leak = ContextLeakage(paired) if paired is not None else None
    model.eval()
    for batch in _batches(dataset, batch_size, device, "segment", progress):
        pred = model(batch["image"]).argmax(1)
        cm.update(pred, batch["mask"])
        bf.update(pred, batch["mask"])
        if leak is not None:
            leak.update_masks(pred, batch["labels"], batch["context_mask"])
    out = {**cm.compute(), "bf": bf.compute()["bf"]}
    if leak is not None:
        out["mask_leakage"] = leak.compute()["mask_leakage"]
    return out


def run_baseline(cfg: RunCfg, run: Run, *, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Run round 0 end to end into ``run`` and return (and log) ``metrics["baseline"]``."""
    b, device = cfg.baseline, torch.device(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg)
    train, val = splits["train"], splits["val"]
    paired = tuple(train.paired_context) if isinstance(train, ConfoundedScenes) else None
    timing: dict[str, float] = {}
    t0 = time.perf_counter()

    clf = build_classifier(b.backbone, train.num_classes, pretrained=b.pretrained)
    ccfg = TrainCfg(epochs=b.cls_epochs, batch_size=b.cls_batch_size, lr=b.cls_lr, optimizer=b.cls_optimizer,
                    seed=cfg.seed)
    hist = fit(clf, train, lambda m, batch: multilabel_loss(m, random_flip(batch)), ccfg, device=device,
               collate_fn=collate, ckpt_dir=run.path / "checkpoints" / "classifier", resume=resume,
               progress=progress, desc="classifier")
    timing["classifier_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    val_eval = evaluate_cams(clf, val, cfg, b.threshold_grid, device, paired, progress)
    best_t = max(b.threshold_grid, key=lambda t: val_eval["by_threshold"][str(t)]["miou"])
    thresholds = tuple(sorted({b.bg_threshold, best_t}))
    tr = evaluate_cams(clf, train, cfg, thresholds, device, paired, progress, keep_pseudo=True)
    timing["cams_s"] = time.perf_counter() - t1
    cls_scores = {"val_map": multilabel_map(val_eval["scores"], val_eval["targets"])["map"],
                  "train_map": multilabel_map(tr["scores"], tr["targets"])["map"]}
    if "shifted" in splits:
        sh, sh_t = [], []
        with torch.no_grad():
            for bt in _batches(splits["shifted"], b.eval_batch_size, device, "shifted", False):
                sh.append(torch.sigmoid(clf(bt["image"]).float()).cpu())
                sh_t.append(bt["labels"].cpu())
        cls_scores["shifted_map"] = multilabel_map(torch.cat(sh), torch.cat(sh_t))["map"]
        cls_scores["context_reliance"] = cls_scores["val_map"] - cls_scores["shifted_map"]
    seed = {
        "fixed_threshold": b.bg_threshold, "miou_fixed": tr["cms"][b.bg_threshold].compute()["miou"],
        "best_threshold_on_val": best_t, "miou_best": tr["cms"][best_t].compute()["miou"],
        "bf_fixed": tr["bf"][b.bg_threshold].compute()["bf"], "bf_best": tr["bf"][best_t].compute()["bf"],
        "val_sweep": val_eval["by_threshold"], "per_class_iou_fixed": tr["cms"][b.bg_threshold].compute()["iou"],
    }
    if paired is not None:
        seed["cam_leakage"] = tr["leakage"]["cam_leakage"]
        seed["cam_leakage_per_class"] = tr["leakage"]["cam_leakage_per_class"]
    atomic_torch_save(run.path / "artifacts" / "pseudo_masks.pt", tr["pseudo"])

    t2 = time.perf_counter()
    seg = build_segmenter(b.segmenter, train.num_classes)
    scfg = TrainCfg(epochs=b.seg_epochs, batch_size=b.seg_batch_size, lr=b.seg_lr, optimizer=b.seg_optimizer,
                    seed=cfg.seed)
    seg_hist = fit(seg, WithMasks(train, tr["pseudo"]), lambda m, batch: segmentation_loss(m, random_flip(batch)),
                   scfg, device=device, collate_fn=collate, ckpt_dir=run.path / "checkpoints" / "segmenter",
                   resume=resume, progress=progress, desc="segmenter")
    timing["segmenter_s"] = time.perf_counter() - t2
    seg_val = evaluate_segmenter(seg, val, b.eval_batch_size, device, paired, progress)
    timing["total_s"] = time.perf_counter() - t0

    metrics = {
        "classifier": {**cls_scores, "history": hist},
        "seed": seed,
        "pseudo": {k: v for k, v in tr["pseudo_metrics"].items() if k not in ("precision", "recall")},
        "segmentation": {**seg_val, "history": seg_hist},
        "timing": timing, "device": str(device), "num_train": len(train), "num_val": len(val),
    }
    run.log_metrics("baseline", metrics)
    log.info("baseline: seed %.3f (best %.3f) pseudo %.3f seg %.3f in %.0f s", seed["miou_fixed"], seed["miou_best"],
             metrics["pseudo"]["miou"], seg_val["miou"], timing["total_s"])
    return metrics
