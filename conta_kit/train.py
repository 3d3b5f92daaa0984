"""The one training loop: ``fit(model, loader, loss_fn, cfg)`` serves classifier, segmenter, CONTA and W-OoD.

* Optimiser: SGD with keyword arguments (momentum, weight decay, Nesterov off) and a poly schedule
  ``lr_t = lr * lr_mult * (1 - t / T) ** power`` per step, or AdamW. IRNet's ``PolyOptimizer`` passes the
  weight decay positionally into SGD's momentum slot (effective momentum 1e-4) and uses its momentum
  attribute as the poly power; the kit does not reproduce that.
* Seeded: the data order and any randomness of epoch ``e`` come from ``seed`` and ``e`` only, so
  ``resume=True`` after a stop continues to the same result as an uninterrupted run.
* A checkpoint ``<ckpt_dir>/last.pt`` (model, optimiser, schedule, epoch, history) is written atomically
  after every epoch; a NaN or infinite loss stops with an error and leaves it intact.
* Automatic mixed precision (bfloat16 autocast) on CUDA when ``amp="auto"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .io import atomic_torch_save

log = logging.getLogger(__name__)
LossFn = Callable[[nn.Module, dict[str, Any]], torch.Tensor]


@dataclass(frozen=True)
class TrainCfg:
    """Optimisation settings for :func:`fit`.

    Attributes:
        epochs, batch_size, lr: as usual; ``lr`` is scaled by each param group's ``lr_mult``.
        optimizer: "sgd" (momentum, poly schedule) or "adamw" (poly schedule too).
        momentum, weight_decay, poly_power: SGD momentum, decoupled/L2 weight decay, poly exponent.
        amp: "auto" (bf16 autocast on CUDA), "off", "bf16" or "fp16".
        seed: seeds data order and randomness per epoch.
        num_workers: DataLoader workers.
    """

    epochs: int = 5
    batch_size: int = 16
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    amp: str = "auto"
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be 'auto', 'off', 'bf16' or 'fp16', got {self.amp!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """``base_lr * (1 - step / total_steps) ** power`` (0 at and after the last step)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    return base_lr * max(0.0, 1.0 - step / total_steps) ** power


def make_optimizer(model: nn.Module, cfg: TrainCfg) -> torch.optim.Optimizer:
    """Optimiser over ``model.param_groups()`` when the model has it (each group keeps its ``lr_mult``)."""
    groups = model.param_groups() if hasattr(model, "param_groups") else [
        {"params": [p for p in model.parameters() if p.requires_grad], "lr_mult": 1.0}]
    groups = [dict(g, lr=cfg.lr * g.get("lr_mult", 1.0)) for g in groups if g["params"]]
    for g in groups:
        g.setdefault("lr_mult", 1.0)
        g["initial_lr"] = g["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _set_lr(opt: torch.optim.Optimizer, step: int, total: int, power: float) -> None:
    for g in opt.param_groups:
        g["lr"] = poly_lr(g["initial_lr"], step, total, power)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _autocast(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "off":
        return torch.autocast(device_type="cpu", enabled=False)
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda", dtype=dtype)


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    **extra: Any) -> Path:
    """Atomically write ``{"model": state_dict, "optimizer": ..., **extra}`` (loadable with weights_only)."""
    state = {"model": model.state_dict(), **extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return atomic_torch_save(path, state)


def fit(model: nn.Module, dataset: Dataset, loss_fn: LossFn, cfg: TrainCfg, *, device: str | torch.device = "cpu",
        collate_fn: Callable | None = None, ckpt_dir: str | Path | None = None, resume: bool = False,
        val_fn: Callable[[nn.Module, int], dict[str, float]] | None = None, progress: bool = True,
        desc: str = "train") -> list[dict[str, Any]]:
    """Train ``model`` in place and return the per-epoch history.

    Args:
        model: any module; ``param_groups()`` is used when present.
        dataset: map-style dataset of item dicts.
        loss_fn: ``loss_fn(model, batch) -> scalar`` (batch on ``device``, under autocast).
        cfg: :class:`TrainCfg`.
        ckpt_dir: where ``last.pt`` is written after every epoch (None: no checkpoint).
        resume: continue from ``ckpt_dir/last.pt`` when it exists.
        val_fn: ``val_fn(model, epoch) -> dict`` run after each epoch (model in eval mode); logged.

    Raises:
        FloatingPointError: on a NaN/inf loss (the last checkpoint is left as it was).
    """
    device = torch.device(device)
    model.to(device)
    opt = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(dataset) / cfg.batch_size)
    if steps_per_epoch == 0:
        raise ValueError("cannot train on an empty dataset")
    total = cfg.epochs * steps_per_epoch
    history: list[dict[str, Any]] = []
    start = 0
    ckpt = Path(ckpt_dir) / "last.pt" if ckpt_dir is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["epoch"]) + 1, list(state.get("history", []))
        log.info("resumed %s from %s at epoch %d", desc, ckpt, start)
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=False,
                            collate_fn=collate_fn, num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
        model.train()
        running, n = 0.0, 0
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for i, batch in enumerate(bar):
            _set_lr(opt, epoch * steps_per_epoch + i, total, cfg.poly_power)
            batch = _to(batch, device)
            with _autocast(device, cfg.amp):
                loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss is {float(loss.detach())} at epoch {epoch + 1}, step {i + 1}; "
                                         f"stopped, last good checkpoint: {ckpt if ckpt and ckpt.exists() else 'none'}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            size = len(next(v for v in batch.values() if isinstance(v, torch.Tensor)))
            running += float(loss.detach()) * size
            n += size
            bar.set_postfix(loss=f"{running / n:.4f}")
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": running / max(n, 1), "lr_end": opt.param_groups[0]["lr"]}
        if val_fn is not None:
            model.eval()
            record.update(val_fn(model, epoch))
        history.append(record)
        log.info("%s epoch %d: %s", desc, epoch + 1, record)
        if ckpt is not None:
            save_checkpoint(ckpt, model, opt, epoch=epoch, history=history)
    model.eval()
    return history


def multilabel_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Multi-label soft-margin loss (= BCE-with-logits averaged over classes) on ``image`` / ``labels``
    (and ``x_m``, the mask a CONTA classifier takes, when the batch has one)."""
    logits = model(batch["image"], batch["x_m"]) if "x_m" in batch else model(batch["image"])
    if logits.shape != batch["labels"].shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(batch['labels'].shape)}")
    return nn.functional.multilabel_soft_margin_loss(logits.float(), batch["labels"])


def segmentation_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Cross-entropy on ``mask`` (ignore 255) — the batch's mask is the pseudo-mask when training on them."""
    return nn.functional.cross_entropy(model(batch["image"]).float(), batch["mask"], ignore_index=255)
