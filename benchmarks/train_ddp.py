"""Train the CAM classifier on the confounded scenes with fit() under torchrun; rank 0 prints JSON.

    torchrun --nproc_per_node=2 benchmarks/train_ddp.py [--epochs 2] [--images 512] [--batch 32]
        [--backbone tiny] [--device cpu|cuda] [--ckpt-dir DIR] [--resume] [--out results.json]
    .venv/bin/python benchmarks/train_ddp.py ...        # the same run in one process

``fit`` joins the process group torchrun describes (gloo on a CPU, NCCL with ``--device cuda``, one GPU
per process), splits each global batch of ``--batch`` images over the processes and lets rank 0 alone
write ``--ckpt-dir/last.pt``. Multi-node: ``torchrun --nnodes=M --nproc_per_node=N --rdzv-backend=c10d
--rdzv-endpoint=HOST:PORT benchmarks/train_ddp.py ...`` with ``--ckpt-dir`` on a shared filesystem.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import emit, environment

from conta_kit import distributed
from conta_kit.data import ConfoundedScenes, collate
from conta_kit.models import build_classifier
from conta_kit.train import TrainCfg, fit, multilabel_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="global batch size, split over the processes")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--ckpt-dir", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", default=None, help="also write the JSON here (rank 0)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = ConfoundedScenes("train", num_images=a.images, image_size=a.size)
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_classifier(a.backbone, data.num_classes)
    cfg = TrainCfg(epochs=a.epochs, batch_size=a.batch, lr=0.1, amp=a.amp, channels_last=a.channels_last)
    try:
        t0 = time.perf_counter()
        history = fit(model, data, multilabel_loss, cfg, device=a.device, collate_fn=collate, ckpt_dir=a.ckpt_dir,
                      resume=a.resume, desc="classifier")
        seconds = time.perf_counter() - t0
        if distributed.rank() == 0:
            emit({"benchmark": "ddp_training", **environment(distributed.rank_device(a.device)),
                  "world_size": distributed.world_size(), "images": a.images, "image_size": a.size,
                  "global_batch": a.batch, "epochs": a.epochs, "seconds": round(seconds, 3),
                  "images_per_s": round(a.images * a.epochs / seconds, 2),
                  "loss_by_epoch": [h["loss"] for h in history]}, a.out)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
