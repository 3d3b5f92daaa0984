"""The one training loop: ``fit(model, loader, loss_fn, cfg)`` serves classifier, segmenter, CONTA and W-OoD.

* Optimiser: SGD with keyword arguments (momentum, weight decay, Nesterov off) and a poly schedule
  ``lr_t = lr * lr_mult * (1 - t / T) ** power`` per step, or AdamW. IRNet's ``PolyOptimizer`` passes the
  weight decay positionally into SGD's momentum slot (effective momentum 1e-4) and uses its momentum
  attribute as the poly power; the kit does not reproduce that.
* Seeded: the data order and any randomness of epoch ``e`` come from ``seed`` and ``e`` only, so
  ``resume=True`` after a stop continues to the same result as an uninterrupted run.
* A checkpoint ``<ckpt_dir>/last.pt`` (model, optimiser, schedule, epoch, history) is written atomically
  after every epoch; a NaN or infinite loss stops with an error and leaves it intact.
* Automatic mixed precision: bfloat16 autocast on CUDA, and on a CPU with bf16 matrix units (AMX, AVX512-BF16),
  when ``amp="auto"`` (:mod:`conta_kit.precision`); ``amp="fp16"`` adds a gradient scaler on CUDA.
  ``channels_last`` runs model and images in NHWC memory format, ``compile`` wraps the model's forward in
  ``torch.compile``.
* Under torchrun (or in an initialised process group) the same loop trains with DistributedDataParallel:
  ``batch_size`` stays the global batch, split over the ranks in the single-process order (see
  :mod:`conta_kit.distributed`); rank 0 writes the checkpoints.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .config import BaselineCfg
from .io import atomic_torch_save, load_torch
from .precision import AMP_MODES, autocast
from .progress import tqdm

log = logging.getLogger(__name__)
LossFn = Callable[[nn.Module, dict[str, Any]], torch.Tensor]


@dataclass(frozen=True)
class TrainCfg:
    """Optimisation settings for :func:`fit`.

    Attributes:
        epochs, batch_size, lr: as usual; ``lr`` is scaled by each param group's ``lr_mult``.
        optimizer: "sgd" (momentum, poly schedule) or "adamw" (poly schedule too).
        momentum, weight_decay, poly_power: SGD momentum, decoupled/L2 weight decay, poly exponent.
        head_lr_mult: the learning-rate factor of the new layers (the CAM head; CONTA's M and attention) of a
            model with ``param_groups(head_lr_mult)`` (IRNet: 10, for a new head on a pretrained trunk).
        amp: "auto" (bf16 autocast on CUDA and on a CPU with bf16 units, fp32 on other CPUs), "off", "bf16"
            (also on any CPU) or "fp16" (CUDA, with a gradient scaler); see :mod:`conta_kit.precision`.
        seed: seeds data order and randomness per epoch.
        num_workers: DataLoader workers (started per epoch, so their seeds too depend on ``seed`` and the
            epoch only; with CUDA, batches come through pinned memory).
        channels_last: model parameters and 4-D float batch tensors in channels-last (NHWC) memory format,
            on any device (same values up to float rounding; the model keeps that format after training).
        compile: ``torch.compile`` the model's forward in place (True: the default backend; a string names
            the backend, e.g. "eager" to debug). State-dict names do not change.
    """

    epochs: int = 5
    batch_size: int = 16
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    head_lr_mult: float = 10.0
    amp: str = "auto"
    seed: int = 0
    num_workers: int = 0
    channels_last: bool = False
    compile: bool | str = False

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be 'auto', 'off', 'bf16' or 'fp16', got {self.amp!r}")
        if not isinstance(self.compile, bool) and not (isinstance(self.compile, str) and self.compile):
            raise ValueError(f"compile must be True, False or a torch.compile backend name, got {self.compile!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        if not self.head_lr_mult > 0:
            raise ValueError(f"head_lr_mult must be > 0, got {self.head_lr_mult}")


def classifier_train_cfg(b: BaselineCfg, seed: int, **changes: Any) -> TrainCfg:
    """The classifier's optimisation settings from ``b`` (epochs, batch, lr, optimizer, head lr factor, weight decay,
    workers, precision), shared by every round's training and W-OoD's fine-tuning; ``changes`` replaces fields
    (the fine-tuning's own epochs and lr)."""
    return replace(TrainCfg(epochs=b.cls_epochs, batch_size=b.cls_batch_size, lr=b.cls_lr, optimizer=b.cls_optimizer,
                            head_lr_mult=b.cls_head_lr_mult, weight_decay=b.cls_weight_decay, seed=seed,
                            num_workers=b.num_workers, amp=b.amp), **changes)


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """``base_lr * (1 - step / total_steps) ** power`` (0 at and after the last step)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    return base_lr * max(0.0, 1.0 - step / total_steps) ** power


def make_optimizer(model: nn.Module, cfg: TrainCfg) -> torch.optim.Optimizer:
    """Optimiser over ``model.param_groups()`` when the model has it (each group keeps its ``lr_mult``)."""
    groups = model.param_groups(cfg.head_lr_mult) if hasattr(model, "param_groups") else [
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


def _to(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            nhwc = channels_last and v.dim() == 4 and v.is_floating_point()
            v = v.to(device, non_blocking=True, memory_format=torch.channels_last if nhwc else torch.preserve_format)
        out[k] = v
    return out


def epoch_order(n: int, seed: int) -> list[int]:
    """The sample order of one epoch, the same on every rank and for any number of workers.

    It is the order the kit's earlier loop drew with ``num_workers=0``, so those runs keep their results:
    a shuffling DataLoader with ``torch.Generator().manual_seed(seed)`` wrapped in ``tqdm.auto``, which
    creates one extra iterator; each iterator drew a base seed from the generator before the permutation.
    With ``num_workers > 0`` the earlier loop drew yet another order, so those runs change.
    """
    gen = torch.Generator().manual_seed(seed)
    for _ in range(2):
        torch.empty((), dtype=torch.int64).random_(generator=gen)
    return torch.randperm(n, generator=gen).tolist()


class _LossStep(nn.Module):
    """``loss_fn(model, batch)`` as a module, so DistributedDataParallel sees every forward the loss makes
    (``model(x)``, ``model.features(x)``, ...)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "loss_fn", loss_fn)  # a plain attribute: only the model is synchronised

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    **extra: Any) -> Path:
    """Atomically write ``{"model": state_dict, "optimizer": ..., **extra}`` (loadable with weights_only)."""
    state = {"model": model.state_dict(), **extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return atomic_torch_save(path, state)


def checkpoint_progress(ckpt_dir: str | Path | None) -> tuple[int, float]:
    """(epochs done, their recorded seconds) in ``ckpt_dir/last.pt``; (0, 0.0) when there is none."""
    ckpt = Path(ckpt_dir) / "last.pt" if ckpt_dir is not None else None
    if ckpt is None or not ckpt.exists():
        return 0, 0.0
    state = load_torch(ckpt)
    return int(state["epoch"]) + 1, float(sum(h.get("seconds", 0.0) for h in state.get("history", [])))


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
        device: under torchrun a bare "cuda" means this process's GPU, ``cuda:<LOCAL_RANK>``.
        ckpt_dir: where ``last.pt`` is written after every epoch (None: no checkpoint); by rank 0 only, on a
            folder every rank can read.
        resume: continue from ``ckpt_dir/last.pt`` when it exists.
        val_fn: ``val_fn(model, epoch) -> dict`` run after each epoch (model in eval mode, on every rank);
            logged.

    With several processes (a process group of more than one, or torchrun's ``WORLD_SIZE`` > 1, which
    :func:`~conta_kit.distributed.init_from_env` joins) each step splits the global batch of
    ``cfg.batch_size`` over the ranks (:func:`~conta_kit.distributed.rank_batches`), the logged loss is the
    mean over all ranks' images, and the history is the same on every rank. The run follows the
    single-process one when the loss is a mean over images and uses no per-process randomness (dropout,
    random augmentation) or batch statistics (batch norm in train mode computes them per rank).

    Raises:
        FloatingPointError: on a NaN/inf loss on any rank (the last checkpoint is left as it was).
    """
    multi = distributed.init_from_env(device)
    rank, world = distributed.rank(), distributed.world_size()
    device = distributed.rank_device(device)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(dataset) / cfg.batch_size)
    if steps_per_epoch == 0:
        raise ValueError("cannot train on an empty dataset")
    if cfg.batch_size < world:
        raise ValueError(f"batch_size ({cfg.batch_size}) is the global batch size and must be >= the number of "
                         f"processes ({world})")
    total = cfg.epochs * steps_per_epoch
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp == "fp16")
    history: list[dict[str, Any]] = []
    start = 0
    ckpt = Path(ckpt_dir) / "last.pt" if ckpt_dir is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state = load_torch(ckpt, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, history = int(state["epoch"]) + 1, list(state.get("history", []))
        if rank == 0:
            log.info("resumed %s from %s at epoch %d", desc, ckpt, start)
            if start < cfg.epochs:
                log.warning("%s: the timing this run records covers epochs %d-%d only; the %d earlier epochs took "
                            "%.0f s (kept in metrics.json as timing.earlier_s)", desc, start + 1, cfg.epochs, start,
                            sum(h.get("seconds", 0.0) for h in history))
    if cfg.compile:
        model.compile(**({} if cfg.compile is True else {"backend": cfg.compile}))
    step: nn.Module = _LossStep(model, loss_fn)
    if multi:  # find_unused_parameters: some parameters get no gradient (e.g. the stages before a detach)
        step = DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=True)
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        seed = cfg.seed * 1_000_003 + epoch
        plan = distributed.rank_batches(epoch_order(len(dataset), seed), cfg.batch_size, rank, world)
        loader = DataLoader(dataset, batch_sampler=[rows for rows, _, _ in plan], collate_fn=collate_fn,
                            num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(seed))  # the workers' base seed
        model.train()
        running, n, t_epoch = 0.0, 0, time.perf_counter()
        # a bar around the loader would create a second iterator (tqdm.auto does), with its own workers
        bar = tqdm(total=len(plan), desc=f"{desc} {epoch + 1}/{cfg.epochs}", disable=not progress or rank != 0,
                   leave=False)
        for i, (batch, (_, count, weight)) in enumerate(zip(loader, plan)):
            _set_lr(opt, epoch * steps_per_epoch + i, total, cfg.poly_power)
            batch = _to(batch, device, cfg.channels_last)
            with autocast(device, cfg.amp):
                loss = step(batch)
            finite = bool(torch.isfinite(loss))
            if multi:
                finite = distributed.all_reduce_sum([not finite], device)[0] == 0
            if not finite:
                raise FloatingPointError(f"{desc}: loss is {float(loss.detach())} at epoch {epoch + 1}, step {i + 1}"
                                         f"{f' (rank {rank})' if multi else ''}; stopped, last good checkpoint: "
                                         f"{ckpt if ckpt and ckpt.exists() else 'none'}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss * weight).backward()
            scaler.step(opt)
            scaler.update()
            running += float(loss.detach()) * count
            n += count
            bar.update()
            bar.set_postfix(loss=f"{running / max(n, 1):.4f}")
        bar.close()
        if multi:  # batch-norm statistics moved per rank: every rank takes rank 0's (the checkpointed ones)
            for buf in model.buffers():
                torch.distributed.broadcast(buf.data, src=0)
        running, n = distributed.all_reduce_sum([running, n], device)
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": running / max(n, 1), "lr_end": opt.param_groups[0]["lr"],
                                  "seconds": round(time.perf_counter() - t_epoch, 3)}
        if val_fn is not None:
            model.eval()
            record.update(val_fn(model, epoch))
        history.append(record)
        if rank == 0:
            log.info("%s epoch %d: %s", desc, epoch + 1, record)
            if ckpt is not None:
                extra = {"scaler": scaler.state_dict()} if scaler.is_enabled() else {}
                save_checkpoint(ckpt, model, opt, epoch=epoch, history=history, **extra)
        distributed.barrier()
    model.eval()
    return history


def multilabel_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Multi-label soft-margin loss (= BCE-with-logits averaged over classes) on ``image`` / ``labels``
    (and ``x_m``, the mask a CONTA classifier takes, when the batch has one)."""
    logits = model(batch["image"], batch.get("x_m"))
    if logits.shape != batch["labels"].shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(batch['labels'].shape)}")
    return nn.functional.multilabel_soft_margin_loss(logits.float(), batch["labels"])


def segmentation_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Cross-entropy on ``mask`` (ignore 255) — the batch's mask is the pseudo-mask when training on them."""
    return nn.functional.cross_entropy(model(batch["image"]).float(), batch["mask"], ignore_index=255)
