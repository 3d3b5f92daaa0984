"""Multi-process training through torchrun: process-group helpers and the per-rank batch plan of :func:`fit`.

Launch ``torchrun --nproc_per_node=N script.py`` (or ``--nnodes``/``--rdzv-endpoint`` for several machines);
:func:`conta_kit.train.fit` joins the group torchrun describes (:func:`init_from_env`: NCCL for CUDA
devices, gloo otherwise), wraps the loss in DistributedDataParallel and splits every global batch of
``batch_size`` images over the ranks (:func:`rank_batches`), so W processes follow the single-process run's
sample order and, for losses that are means over images, its gradients. Only rank 0 writes checkpoints.
See ``docs/speed.md``.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the group (0 outside one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 outside one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(device: str | torch.device) -> torch.device:
    """``device``, with a bare ``"cuda"`` turned into ``cuda:<local rank>`` inside a process group."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def init_from_env(device: str | torch.device = "cpu", *, timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``), unless one is initialised already or ``WORLD_SIZE`` is unset or 1.

    Args:
        device: "cuda..." selects the NCCL backend (and ``cuda:<LOCAL_RANK>`` as this process's GPU),
            anything else gloo.
        timeout_s: how long a collective waits for the other ranks before failing.

    Returns:
        Whether this process now trains with others (:func:`is_distributed`).
    """
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    world = os.environ.get("WORLD_SIZE", "1")
    if not world.isdigit():
        raise ValueError(f"WORLD_SIZE must be a positive integer, got {world!r}")
    if int(world) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://",
                            timeout=_dt.timedelta(seconds=timeout_s))
    return is_distributed()


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], device: str | torch.device = "cpu") -> list[float]:
    """Element-wise sum of ``values`` over the ranks, in float64 (the values themselves outside a group).

    ``device`` must be a CUDA device under NCCL."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def rank_batches(order: Sequence[int], batch_size: int, rank: int = 0,
                 world: int = 1) -> list[tuple[list[int], int, float]]:
    """This rank's share of every global batch of ``order``: ``(indices, count, loss_weight)`` per step.

    Global batch ``i`` is ``order[i * batch_size : (i + 1) * batch_size]`` (the last may be shorter); rank
    ``r`` takes its items ``r, r + world, ...``. DistributedDataParallel averages gradients over ranks, so
    each rank's mean loss is weighted by ``world * count / len(global batch)``: the average of the weighted
    rank gradients is then the gradient of the mean over the whole global batch, also for an uneven last
    batch. A rank left without items (a last batch shorter than ``world``) gets the batch's first item with
    count 0 and weight 0, so it still takes part in the step.

    Args:
        order: the epoch's sample order (the same on every rank).
        batch_size: the global batch size. rank, world: this process and the number of processes.

    Raises:
        ValueError: on ``batch_size < world`` (a rank would idle every step) or a rank outside 0..world-1.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in 0..{world - 1} for world = {world}, got rank {rank}")
    if batch_size < world:
        raise ValueError(f"batch_size ({batch_size}) is the global batch size and must be >= the number of "
                         f"processes ({world})")
    plan = []
    for start in range(0, len(order), batch_size):
        group = list(order[start : start + batch_size])
        mine = group[rank::world]
        plan.append((mine, len(mine), world * len(mine) / len(group)) if mine else (group[:1], 0, 0.0))
    return plan


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (``obj`` itself outside a process group), e.g. the run folder that
    rank 0 alone creates."""
    if not is_distributed():
        return obj
    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
