"""Inference passes that several stages share: batches of a dataset on a device, a segmenter's masks, a
classifier's class probabilities. Every classifier is called as ``model(images, x_m)`` (x_m None for the
baseline)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .data import collate
from .models.inference import eval_mode
from .progress import tqdm


def batches(dataset: Dataset, batch_size: int, device: torch.device, desc: str = "batches",
            progress: bool = False) -> Iterator[dict[str, Any]]:
    """``dataset`` in order, collated, every tensor on ``device`` (a progress bar when ``progress``)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def predict_masks(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                  progress: bool = True, desc: str = "predict") -> Iterator[tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]]:
    """Stream a segmenter's predictions: (label map (B, H, W) long, fg probability 1 - P(bg) (B, H, W), labels)."""
    model.eval()
    for batch in batches(dataset, batch_size, device, desc, progress):
        prob = torch.softmax(model(batch["image"]).float(), dim=1)
        yield prob.argmax(1).cpu(), (1.0 - prob[:, 0]).cpu(), batch["labels"].cpu()


def classifier_scores(model: torch.nn.Module, dataset: Dataset, batch_size: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, C) of ``model`` in eval mode and the labels (N, C), both on the CPU."""
    sc, tg = [], []
    with torch.no_grad(), eval_mode(model):
        for bt in batches(dataset, batch_size, device, "scores", False):
            logits = model(bt["image"], bt.get("x_m"))
            sc.append(torch.sigmoid(logits.float()).cpu())
            tg.append(bt["labels"].cpu())
    return torch.cat(sc), torch.cat(tg)
