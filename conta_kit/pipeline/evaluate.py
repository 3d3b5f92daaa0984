"""Scoring a round's models: CAM seeds at every threshold, pseudo-masks and their scores, CAM leakage
(:func:`evaluate_cams`); a segmenter's masks on val (:func:`evaluate_segmenter`)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from ..cam import cams_to_pseudo_masks, compute_cams, foreground_argmax
from ..cam.diagnostics import CamLocalisation, SurroundLeakage, ceiling_cams
from ..config import RunCfg
from ..infer import batches
from ..metrics import BoundaryFScore, ConfusionMatrix, ContextLeakage
from ..models import fold_batchnorm


@torch.no_grad()
def evaluate_cams(model: torch.nn.Module, dataset: Dataset, cfg: RunCfg, thresholds: tuple[float, ...],
                  device: torch.device, paired: tuple[int, ...] | None, progress: bool = True,
                  keep_pseudo: bool = False, bf_thresholds: tuple[float, ...] = (), m_term: bool | str = True,
                  grid: tuple[int, int] | None = None, cell_origin: float | None = None) -> dict[str, Any]:
    """Seed mIoU for every threshold, CAM leakage, classification scores and (optionally) pseudo-masks.

    Boundary F is computed at ``bf_thresholds`` only. Items with ``x_m`` feed a CONTA classifier;
    ``m_term="both"`` also scores the CAMs without the M term (``cms_without_m``, ``leakage_without_m``).
    Diagnostics beside the scores (:mod:`conta_kit.cam.diagnostics`): where the CAM mass and peaks fall
    (``localisation``), with ``grid`` (the classifier's feature grid) the resolution ceiling's seed mIoU at
    every threshold (``ceiling_cms``), and on the benchmark the surround leakage split by paired / unpaired
    context (``surround``). ``cell_origin``: where the CAMs' cells are placed (:func:`~conta_kit.cam.compute_cams`;
    None: IRNet's placement, the pipeline's).
    """
    b = cfg.baseline
    n_labels = dataset.num_classes + 1
    both = m_term == "both"
    cms = {t: ConfusionMatrix(n_labels) for t in thresholds}
    cms_off = {t: ConfusionMatrix(n_labels) for t in thresholds} if both else {}
    bf = {t: BoundaryFScore(n_labels) for t in bf_thresholds}
    leak = ContextLeakage(paired) if paired is not None else None
    leak_off = ContextLeakage(paired) if paired is not None and both else None
    pseudo_cm, pseudo_cm_lab = ConfusionMatrix(n_labels), ConfusionMatrix(n_labels)
    pseudo, scores, targets, covered, total = [], [], [], 0, 0
    ceiling = {t: ConfusionMatrix(n_labels) for t in thresholds} if grid is not None else {}
    local = CamLocalisation(dataset.num_classes)
    surround = SurroundLeakage(dataset.num_classes) if paired is not None else None
    fast = fold_batchnorm(model)  # inference copy: batch norm folded into the convolutions, NHWC, in b.amp
    for batch in batches(dataset, b.eval_batch_size, device, "CAMs", progress):
        x_m = batch.get("x_m")
        logits = fast(batch["image"], x_m)
        scores.append(torch.sigmoid(logits.float()).cpu())
        targets.append(batch["labels"].cpu())
        out = compute_cams(fast, batch["image"], batch["labels"], scales=b.cam_scales, flip=b.cam_flip, x_m=x_m,
                           m_term=m_term, channels_last=True, amp=b.amp, cell_origin=cell_origin)
        cams, cams_off = out if both else (out, None)
        local.update(cams, batch["labels"], batch["mask"], batch.get("context_mask"), paired)
        if surround is not None and "surround" in batch:
            surround.update(cams, batch["surround"], batch["surround_paired"])
        ceiling_maps = ceiling_cams(batch["mask"], batch["labels"], grid) if ceiling else None
        for runs, c in ((cms, cams), (cms_off, cams_off), (ceiling, ceiling_maps)):
            if not runs:
                continue
            score, ids = foreground_argmax(c, batch["labels"])
            for t in thresholds:
                pred = torch.where(score > t, ids, torch.zeros_like(ids))
                runs[t].update(pred, batch["mask"])
                if t in bf and runs is cms:
                    bf[t].update(pred, batch["mask"])
        if leak is not None:
            leak.update_cams(cams, batch["labels"], batch["context_mask"])
            if leak_off is not None:
                leak_off.update_cams(cams_off, batch["labels"], batch["context_mask"])
        if keep_pseudo:
            pm = cams_to_pseudo_masks(cams, batch["labels"], conf_fg=b.conf_fg, conf_bg=b.conf_bg)
            labelled = pm != 255
            pseudo_cm.update(pm.masked_fill(~labelled, 0), batch["mask"])  # IRNet's convention: 255 -> 0
            pseudo_cm_lab.update(pm[labelled], batch["mask"][labelled])
            covered, total = covered + int(labelled.sum()), total + pm.numel()
            if leak is not None:
                leak.update_masks(pm.masked_fill(~labelled, 0), batch["labels"], batch["context_mask"])
            pseudo.append(pm.to(torch.uint8).cpu())
    res: dict[str, Any] = {
        "by_threshold": {str(t): {"miou": cms[t].compute()["miou"]} for t in thresholds},
        "scores": torch.cat(scores), "targets": torch.cat(targets), "cms": cms, "bf": bf, "cms_without_m": cms_off,
        "ceiling_cms": ceiling, "localisation": local.compute(),
    }
    if surround is not None:
        res["surround"] = surround.compute()
    if leak is not None:
        res["leakage"] = leak.compute()
        if leak_off is not None:
            res["leakage_without_m"] = leak_off.compute()
    if keep_pseudo:
        res["pseudo"] = torch.cat(pseudo)
        res["pseudo_metrics"] = {**pseudo_cm.compute(), "miou_labelled_only": pseudo_cm_lab.compute()["miou"],
                                 "coverage": covered / max(total, 1),
                                 **({"mask_leakage": res["leakage"]["mask_leakage"]} if leak is not None else {})}
    return res


@torch.no_grad()
def evaluate_segmenter(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                       paired: tuple[int, ...] | None, progress: bool = True) -> dict[str, Any]:
    """Segmentation mIoU, per-class IoU/precision/recall, boundary F and mask leakage on ``dataset``."""
    n_labels = dataset.num_classes + 1
    cm, bf = ConfusionMatrix(n_labels), BoundaryFScore(n_labels)
    leak = ContextLeakage(paired) if paired is not None else None
    model.eval()
    for batch in batches(dataset, batch_size, device, "segment", progress):
        pred = model(batch["image"]).argmax(1)
        cm.update(pred, batch["mask"])
        bf.update(pred, batch["mask"])
        if leak is not None:
            leak.update_masks(pred, batch["labels"], batch["context_mask"])
    out = {**cm.compute(), "bf": bf.compute()["bf"], "confusion": cm.mat.tolist()}
    if leak is not None:
        out["mask_leakage"] = leak.compute()["mask_leakage"]
    return out
