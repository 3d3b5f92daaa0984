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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .cam import compute_cams, eval_mode, fold_batchnorm
from .config import RunCfg, resolve_device
from .conta import ConfounderSet, ContaClassifier, attention_statistics, build_adjustment, build_confounder_set
from .data import COCOSegmentation, ConfoundedScenes, VOCSegmentation, collate
from .data.scenes import scene_splits
from .io import Run, atomic_torch_save
from .metrics import BoundaryFScore, ConfusionMatrix, ContextLeakage, multilabel_map
from .models import build_classifier, build_segmenter
from .pseudo import cams_to_pseudo_masks, foreground_argmax
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


class WithXm(Dataset):
    """``dataset`` items plus ``x_m`` (H, W) float in [0, 1], from ``x_m[i]`` stored as uint8 (0..255)."""

    def __init__(self, dataset: Dataset, x_m: torch.Tensor) -> None:
        if len(x_m) != len(dataset):
            raise ValueError(f"{len(x_m)} x_m maps for {len(dataset)} images")
        self.dataset, self.x_m = dataset, x_m

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # num_classes, paired_context, ... of the wrapped dataset
        if name in ("dataset", "x_m"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], "x_m": self.x_m[i].float() / 255.0}


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


def random_flip(batch: dict[str, Any]) -> dict[str, Any]:
    """Flip a random half of the batch horizontally (image and every (B, H, W) map), torch RNG."""
    flip = torch.rand(batch["image"].shape[0], device=batch["image"].device) < 0.5
    out = dict(batch)
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 3:
            out[k] = torch.where(flip.view(-1, *([1] * (v.dim() - 1))), v.flip(-1), v)
    return out


_FILL = {"mask": 255, "gt_mask": 255, "context_mask": -1}  # padding values; everything else (image, x_m) 0


def joint_augment(batch: dict[str, Any], *, flip: bool = True, scale: tuple[float, float] = (1.0, 1.0),
                  crop: int | None = None) -> dict[str, Any]:
    """The same random geometry for the image and every (B, H, W) map of the batch (masks, x_m, ...).

    Horizontal flip per image; one random rescale per batch (float maps bilinear, integer maps nearest);
    a random ``crop`` x ``crop`` window per image, padding first where the image is smaller (image and
    x_m with 0, masks with 255, context with -1). Uses the torch RNG.
    """
    out = random_flip(batch) if flip else dict(batch)
    lo, hi = scale
    if not 0 < lo <= hi:
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
    keys = [k for k, v in out.items() if isinstance(v, torch.Tensor) and v.dim() >= 3]
    s = lo + (hi - lo) * float(torch.rand(())) if hi > lo else lo
    if s != 1.0:
        h, w = out["image"].shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        for k in keys:
            v = out[k]
            x = v if v.dim() == 4 else v[:, None]
            if v.is_floating_point():
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            else:
                x = F.interpolate(x.float(), size=size, mode="nearest").to(v.dtype)
            out[k] = x if v.dim() == 4 else x[:, 0]
    if crop is not None:
        h, w = out["image"].shape[-2:]
        ph, pw = max(0, crop - h), max(0, crop - w)
        if ph or pw:
            for k in keys:
                out[k] = F.pad(out[k], (0, pw, 0, ph), value=_FILL.get(k, 0))
        h, w = out["image"].shape[-2:]
        ys = torch.randint(0, h - crop + 1, (out["image"].shape[0],)).tolist()
        xs = torch.randint(0, w - crop + 1, (out["image"].shape[0],)).tolist()
        for k in keys:
            out[k] = torch.stack([v[..., y:y + crop, x:x + crop] for v, y, x in zip(out[k], ys, xs)])
    return out


def _batches(dataset: Dataset, batch_size: int, device: torch.device, desc: str,
             progress: bool) -> Iterator[dict[str, Any]]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate_cams(model: torch.nn.Module, dataset: Dataset, cfg: RunCfg, thresholds: tuple[float, ...],
                  device: torch.device, paired: tuple[int, ...] | None, progress: bool = True,
                  keep_pseudo: bool = False, bf_thresholds: tuple[float, ...] = (), m_term: bool | str = True
                  ) -> dict[str, Any]:
    """Seed mIoU for every threshold, CAM leakage, classification scores and (optionally) pseudo-masks.

    Boundary F is computed at ``bf_thresholds`` only. Items with ``x_m`` feed a CONTA classifier;
    ``m_term="both"`` also scores the CAMs without the M term (``cms_without_m``, ``leakage_without_m``).
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
    fast = fold_batchnorm(model)  # inference copy: batch norm folded into the convolutions, NHWC, AMP on CUDA
    for batch in _batches(dataset, b.eval_batch_size, device, "CAMs", progress):
        x_m = batch.get("x_m")
        logits = fast(batch["image"], x_m) if x_m is not None else fast(batch["image"])
        scores.append(torch.sigmoid(logits.float()).cpu())
        targets.append(batch["labels"].cpu())
        out = compute_cams(fast, batch["image"], batch["labels"], scales=b.cam_scales, flip=b.cam_flip, x_m=x_m,
                           m_term=m_term, channels_last=True, amp="auto")
        cams, cams_off = out if both else (out, None)
        for runs, c in ((cms, cams), (cms_off, cams_off)):
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
    }
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
    for batch in _batches(dataset, batch_size, device, "segment", progress):
        pred = model(batch["image"]).argmax(1)
        cm.update(pred, batch["mask"])
        bf.update(pred, batch["mask"])
        if leak is not None:
            leak.update_masks(pred, batch["labels"], batch["context_mask"])
    out = {**cm.compute(), "bf": bf.compute()["bf"], "confusion": cm.mat.tolist()}
    if leak is not None:
        out["mask_leakage"] = leak.compute()["mask_leakage"]
    return out


@torch.no_grad()
def predict_masks(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                  progress: bool = True, desc: str = "predict") -> Iterator[tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]]:
    """Stream a segmenter's predictions: (label map (B, H, W) long, fg probability 1 - P(bg) (B, H, W), labels)."""
    model.eval()
    for batch in _batches(dataset, batch_size, device, desc, progress):
        prob = torch.softmax(model(batch["image"]).float(), dim=1)
        yield prob.argmax(1).cpu(), (1.0 - prob[:, 0]).cpu(), batch["labels"].cpu()


def _classifier_scores(model: torch.nn.Module, dataset: Dataset, batch_size: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    sc, tg = [], []
    with torch.no_grad(), eval_mode(model):
        for bt in _batches(dataset, batch_size, device, "scores", False):
            logits = model(bt["image"], bt["x_m"]) if "x_m" in bt else model(bt["image"])
            sc.append(torch.sigmoid(logits.float()).cpu())
            tg.append(bt["labels"].cpu())
    return torch.cat(sc), torch.cat(tg)


@torch.no_grad()
def _m_statistics(model: ContaClassifier, dataset: Dataset, batch_size: int, device: torch.device,
                  class_ids: torch.Tensor | None) -> dict[str, Any]:
    """How big M is next to the features, and how much of each logit comes from it (fusion="last")."""
    alphas, labels, m_mean, m_max, f_mean, share, n = [], [], 0.0, 0.0, 0.0, 0.0, 0
    with eval_mode(model):
        for bt in _batches(dataset, batch_size, device, "M", False):
            m, alpha = model.adjust(bt["x_m"])
            m_mean += float(m.mean()) * len(m)
            m_max += float(m.flatten(1).amax(1).sum())
            if model.fusion == "last":
                f = model.features(bt["image"], bt["x_m"]).mean(dim=(2, 3))  # (B, D + 1) pooled [F ; M]
                w = model.head.weight.flatten(1)
                from_m = (f[:, -1:] * w[:, -1][None]).abs()  # (B, C)
                from_f = (f[:, :-1] @ w[:, :-1].t()).abs()
                share += float((from_m / (from_m + from_f).clamp_min(1e-12)).mean()) * len(m)
                f_mean += float(f[:, :-1].mean()) * len(m)
            if alpha is not None:
                alphas.append(alpha.cpu())
                labels.append(bt["labels"].cpu())
            n += len(m)
    out: dict[str, Any] = {"m_mean": m_mean / n, "m_max_mean": m_max / n}
    if model.fusion == "last":
        out.update(feature_mean=f_mean / n, logit_share_from_m=share / n,
                   head_m_weight_abs_mean=float(model.head.m_weight.abs().mean()),
                   head_f_weight_abs_mean=float(model.head.base.weight.abs().mean()))
    if alphas:
        out["attention"] = attention_statistics(torch.cat(alphas), torch.cat(labels), class_ids)
        out["alpha"] = torch.cat(alphas)
    return out


def build_round_classifier(cfg: RunCfg, num_classes: int, confounders: ConfounderSet | None = None, *,
                           load_pretrained: bool = True) -> torch.nn.Module:
    """The classifier of a round: the baseline's for round 0 (``confounders=None``), else a
    :class:`~conta_kit.conta.ContaClassifier` with ``cfg.conta``'s adjustment and fusion point.
    ``load_pretrained=False`` skips ``cfg.baseline.pretrained`` (when a checkpoint is loaded next)."""
    b, c = cfg.baseline, cfg.conta
    model: torch.nn.Module = build_classifier(b.backbone, num_classes,
                                              pretrained=b.pretrained if load_pretrained else None)
    if confounders is not None:
        kw = {"temperature": c.temperature, "m_scale": c.m_scale} if c.adjustment == "backdoor" else {}
        model = ContaClassifier(model, build_adjustment(c.adjustment, confounders, **kw), fusion=c.fusion)
    return model


def run_round(cfg: RunCfg, root: Path, splits: dict[str, Dataset], *, progress: bool = True, resume: bool = False,
              confounders: ConfounderSet | None = None, x_m: dict[str, torch.Tensor] | None = None,
              next_round: bool = False, round_index: int = 0) -> dict[str, Any]:
    """One round into ``root``: classifier -> CAMs -> pseudo-masks -> segmenter (-> x_m and C for the next).

    Round 0 (``confounders=None``) is the baseline. With a confounder set and ``x_m`` (split -> (N, H, W)
    uint8 masks from the previous segmenter) the classifier is a :class:`~conta_kit.conta.ContaClassifier`.
    ``next_round=True`` predicts masks on every split with the new segmenter and saves
    ``root/x_m.pt`` and ``root/confounders.pt``. Returns the round's metrics.
    """
    b, c, device = cfg.baseline, cfg.conta, torch.device(resolve_device(cfg.device))
    train = splits["train"]
    paired = tuple(train.paired_context) if isinstance(train, ConfoundedScenes) else None
    adjusted = confounders is not None
    if adjusted and (x_m is None or any(k not in x_m for k in splits)):
        raise ValueError(f"an adjusted round needs x_m for every split {sorted(splits)}, got "
                         f"{sorted(x_m or {})}")
    data = {k: WithXm(v, x_m[k]) if adjusted else v for k, v in splits.items()}
    timing: dict[str, float] = {}
    t0 = time.perf_counter()

    torch.manual_seed(cfg.seed)  # every round's classifier starts from the same initialisation
    model = build_round_classifier(cfg, train.num_classes, confounders)
    if adjusted:
        prev = classifier_checkpoint(root.parent / f"round_{round_index - 1}")
        if c.init == "previous" and prev.exists():
            state = torch.load(prev, map_location="cpu", weights_only=True)["model"]
            if not any(k.startswith("base.") for k in state):  # round 0 saved a plain Classifier
                state = {f"base.{k}": v for k, v in state.items()}
            state = {k: v for k, v in state.items() if not k.startswith("adjustment.")}  # C is this round's
            missing = model.load_state_dict(state, strict=False)
            log.info("round %d classifier starts from %s (new: %s)", round_index, prev, missing.missing_keys)
    ccfg = TrainCfg(epochs=b.cls_epochs, batch_size=b.cls_batch_size, lr=b.cls_lr, optimizer=b.cls_optimizer,
                    seed=cfg.seed, num_workers=b.num_workers)
    def cls_loss(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return multilabel_loss(m, joint_augment(batch, scale=b.aug_scale, crop=b.aug_crop))

    hist = fit(model, data["train"], cls_loss, ccfg, device=device,
               collate_fn=collate, ckpt_dir=root / "checkpoints" / "classifier", resume=resume, progress=progress,
               desc=f"classifier r{round_index}")
    timing["classifier_s"] = time.perf_counter() - t0
    extra: dict[str, Any] = {}
    if cfg.wood.finetune != "off":  # W-OoD, or the same extra epochs without it (the fair baseline)
        from .wood import finetune_classifier

        tf = time.perf_counter()
        extra["finetune"] = finetune_classifier(
            cfg, model, data, root, device, lambda bt: joint_augment(bt, scale=b.aug_scale, crop=b.aug_crop),
            progress=progress, resume=resume, round_index=round_index)
        timing["finetune_s"] = time.perf_counter() - tf

    t1 = time.perf_counter()
    m_term = "both" if adjusted else True
    val_eval = evaluate_cams(model, data["val"], cfg, b.threshold_grid, device, paired, progress, m_term=m_term)
    best_t = max(b.threshold_grid, key=lambda t: val_eval["by_threshold"][str(t)]["miou"])
    thresholds = tuple(sorted({b.bg_threshold, best_t}))
    tr = evaluate_cams(model, data["train"], cfg, thresholds, device, paired, progress, keep_pseudo=True,
                       bf_thresholds=thresholds, m_term=m_term)
    timing["cams_s"] = time.perf_counter() - t1
    cls_scores = {"val_map": multilabel_map(val_eval["scores"], val_eval["targets"])["map"],
                  "train_map": multilabel_map(tr["scores"], tr["targets"])["map"]}
    if "shifted" in data:
        sh, sh_t = _classifier_scores(model, data["shifted"], b.eval_batch_size, device)
        cls_scores["shifted_map"] = multilabel_map(sh, sh_t)["map"]
        cls_scores["context_reliance"] = cls_scores["val_map"] - cls_scores["shifted_map"]
    for split, kind in (("ood", "hard"), ("ood_random", "random")):  # held-out background-only images
        if split in data and len(data[split]):
            sc, _ = _classifier_scores(model, data[split], b.eval_batch_size, device)
            top = sc.max(1).values
            extra.setdefault("ood", {})[kind] = {"fp_rate": float((top > 0.5).float().mean()),
                                                 "mean_max_prob": float(top.mean()), "num_images": len(top)}
    fixed = tr["cms"][b.bg_threshold].compute()
    seed = {
        "fixed_threshold": b.bg_threshold, "miou_fixed": fixed["miou"],
        "best_threshold_on_val": best_t, "miou_best": tr["cms"][best_t].compute()["miou"],
        "bf_fixed": tr["bf"][b.bg_threshold].compute()["bf"], "bf_best": tr["bf"][best_t].compute()["bf"],
        "val_sweep": val_eval["by_threshold"], "per_class_iou_fixed": fixed["iou"],
        "per_class_precision_fixed": fixed["precision"], "per_class_recall_fixed": fixed["recall"],
        "mean_precision_fixed": fixed["mean_precision"], "mean_recall_fixed": fixed["mean_recall"],
    }
    if paired is not None:
        seed["cam_leakage"] = tr["leakage"]["cam_leakage"]
        seed["cam_leakage_per_class"] = tr["leakage"]["cam_leakage_per_class"]
    if adjusted:  # the diagnostic: the same CAMs with M = 0
        best_off = max(b.threshold_grid, key=lambda t: val_eval["cms_without_m"][t].compute()["miou"])
        seed["without_m"] = {"miou_fixed": tr["cms_without_m"][b.bg_threshold].compute()["miou"],
                             "miou_at_best_threshold": tr["cms_without_m"][best_t].compute()["miou"],
                             "best_threshold_on_val": best_off,
                             **({"cam_leakage": tr["leakage_without_m"]["cam_leakage"]} if paired else {})}
    atomic_torch_save(root / "artifacts" / "pseudo_masks.pt", tr["pseudo"])
    if adjusted:
        st = _m_statistics(model, data["train"], b.eval_batch_size, device, confounders.class_ids)
        if "alpha" in st:
            atomic_torch_save(root / "artifacts" / "attention.pt", st.pop("alpha"))
        extra["m"] = st

    t2 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    seg = build_segmenter(b.segmenter, train.num_classes)
    scfg = TrainCfg(epochs=b.seg_epochs, batch_size=b.seg_batch_size, lr=b.seg_lr, optimizer=b.seg_optimizer,
                    seed=cfg.seed, num_workers=b.num_workers)
    seg_hist = fit(seg, WithMasks(splits["train"], tr["pseudo"]),
                   lambda m, batch: segmentation_loss(m, random_flip(batch)), scfg, device=device, collate_fn=collate,
                   ckpt_dir=root / "checkpoints" / "segmenter", resume=resume, progress=progress,
                   desc=f"segmenter r{round_index}")
    timing["segmenter_s"] = time.perf_counter() - t2
    seg_val = evaluate_segmenter(seg, splits["val"], b.eval_batch_size, device, paired, progress)
    if next_round:
        t3 = time.perf_counter()
        build_next_round(cfg, seg, splits, root, device, progress, grid=feature_grid(model, cfg))
        timing["next_round_s"] = time.perf_counter() - t3
    timing["total_s"] = time.perf_counter() - t0
    metrics = {
        "round": round_index, "adjusted": adjusted,
        "classifier": {**cls_scores, "history": hist},
        "seed": seed,
        "pseudo": {k: v for k, v in tr["pseudo_metrics"].items() if k not in ("precision", "recall")},
        "segmentation": {**seg_val, "history": seg_hist},
        **extra,
        "timing": timing, "device": str(device), "num_train": len(train), "num_val": len(splits["val"]),
    }
    log.info("round %d: seed %.3f (best %.3f) pseudo %.3f seg %.3f in %.0f s", round_index, seed["miou_fixed"],
             seed["miou_best"], metrics["pseudo"]["miou"], seg_val["miou"], timing["total_s"])
    return metrics


def classifier_checkpoint(round_dir: str | Path) -> Path:
    """The final classifier of a round: the fine-tuned one (``classifier_ft``) when the round has it."""
    ck = Path(round_dir) / "checkpoints"
    ft = ck / "classifier_ft" / "last.pt"
    return ft if ft.exists() else ck / "classifier" / "last.pt"


def feature_grid(model: torch.nn.Module, cfg: RunCfg) -> tuple[int, int]:
    """The canonical grid: ``cfg.conta.grid`` or the classifier's feature-map size at the image size."""
    if cfg.conta.grid is not None:
        return (cfg.conta.grid, cfg.conta.grid)
    base = model.base if isinstance(model, ContaClassifier) else model
    s = cfg.data.image_size
    with torch.no_grad(), eval_mode(base):
        p = next(base.parameters())
        return tuple(base.features(torch.zeros(1, 3, s, s, device=p.device)).shape[-2:])


def build_next_round(cfg: RunCfg, segmenter: torch.nn.Module, splits: dict[str, Dataset], root: Path,
                     device: torch.device, progress: bool, grid: tuple[int, int]) -> None:
    """Predict masks with ``segmenter`` on every split: x_m (uint8) for each, C from the train split."""
    c = cfg.conta
    x_m: dict[str, torch.Tensor] = {}
    conf = None
    for name, ds in splits.items():
        preds, maps = [], []
        for pred, fg, labels in predict_masks(segmenter, ds, cfg.baseline.eval_batch_size, device, progress,
                                              desc=f"x_m {name}"):
            xm = fg if c.xm == "fg_prob" else (pred > 0).float()
            maps.append((xm * 255).round().to(torch.uint8))
            if name == "train":
                preds.append((pred, labels if c.present == "label" else None))
        x_m[name] = torch.cat(maps)
        if name == "train":
            conf = build_confounder_set(preds, ds.num_classes, grid, prior=c.prior, include_bg=c.include_bg)
    atomic_torch_save(root / "x_m.pt", x_m)
    conf.save(root / "confounders.pt")


def run_baseline(cfg: RunCfg, run: Run, *, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Run round 0 end to end into ``run`` and return (and log) ``metrics["baseline"]``."""
    torch.manual_seed(cfg.seed)
    metrics = run_round(cfg, run.path, load_splits(cfg), progress=progress, resume=resume)
    run.log_metrics("baseline", metrics)
    return metrics
