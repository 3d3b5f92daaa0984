"""Dataset statistics measured from the rendered masks (not from the generator's bookkeeping)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..progress import tqdm
from .scenes import ConfoundedScenes
from .transforms import collate


def _ring(obj: torch.Tensor, width: int) -> torch.Tensor:
    """(B, C, H, W) bool: pixels within ``width`` of each class region but outside it."""
    grown = F.max_pool2d(obj.float(), 2 * width + 1, stride=1, padding=width) > 0.5
    return grown & ~obj


def scene_statistics(dataset: ConfoundedScenes, max_images: int | None = None, batch_size: int = 64,
                     ring: int = 2, progress: bool = True) -> dict[str, Any]:
    """Label, context-pairing and rider statistics of a :class:`ConfoundedScenes` split.

    The pairing rate is measured from ``context_mask``: for every (image, class present) the context
    pixels in a ``ring``-pixel band around the class's region vote, and the object counts as *on its
    paired context* when the majority context is the paired one.

    Returns:
        dict with ``num_images``, ``class_frequency`` (C,), ``cooccurrence`` (C, C) = P(j present | i present),
        ``paired_rate`` (overall) and ``paired_rate_per_class`` (C,), ``objects_per_image``,
        ``object_pixel_share``, ``context_pixel_share``, ``ignore_pixel_share`` and ``rider_rate`` (share of
        images with a horse where a person touches it; NaN without horse/person classes).
    """
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    c = dataset.num_classes
    present_counts = torch.zeros(c, dtype=torch.float64)
    joint = torch.zeros(c, c, dtype=torch.float64)
    votes = torch.zeros(c, 2, dtype=torch.float64)  # [paired, judged]
    pix = torch.zeros(3, dtype=torch.float64)  # object, context, ignore
    horse_imgs = rider_imgs = 0.0
    names = dataset.class_names
    horse = names.index("horse") if "horse" in names else None
    person = names.index("person") if "person" in names else None
    paired = torch.as_tensor(dataset.paired_context)
    ids = torch.arange(1, c + 1)
    for start in tqdm(range(0, n, batch_size), desc=f"stats {dataset.split}", disable=not progress):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, n))])
        labels, mask, ctx = batch["labels"].double(), batch["mask"], batch["context_mask"]
        present_counts += labels.sum(0)
        joint += labels.T @ labels
        obj = mask[:, None] == ids[None, :, None, None]  # (B, C, H, W)
        band = _ring(obj, ring)
        for k in range(c):
            ctx_k = torch.where(band[:, k], ctx, torch.full_like(ctx, -1))  # (B, H, W)
            hist = F.one_hot((ctx_k + 1).flatten(1), dataset.num_contexts + 1).sum(1)[:, 1:]  # (B, K)
            judged = (hist.sum(1) > 0) & (labels[:, k] > 0)
            majority = hist.argmax(1)
            votes[k, 0] += (judged & (majority == paired[k])).sum()
            votes[k, 1] += judged.sum()
        pix += torch.stack([((mask > 0) & (mask != 255)).sum(), (ctx >= 0).sum(), (mask == 255).sum()]).double()
        if horse is not None and person is not None:
            has_horse = labels[:, horse] > 0
            touch = (_ring(obj[:, horse : horse + 1], 1)[:, 0] & obj[:, person]).any(dim=(1, 2))
            horse_imgs += float(has_horse.sum())
            rider_imgs += float((has_horse & touch).sum())
    freq = present_counts / max(n, 1)
    cooc = joint / present_counts.clamp_min(1)[:, None]
    total_pix = n * dataset.image_size**2
    return {
        "split": dataset.split,
        "num_images": n,
        "rho": dataset.rho,
        "class_names": list(names),
        "context_names": list(dataset.context_names),
        "class_frequency": freq.tolist(),
        "cooccurrence": cooc.tolist(),
        "objects_per_image": float(present_counts.sum() / max(n, 1)),
        "paired_rate": float(votes[:, 0].sum() / votes[:, 1].sum()) if votes[:, 1].sum() else float("nan"),
        "paired_rate_per_class": torch.where(votes[:, 1] > 0, votes[:, 0] / votes[:, 1].clamp_min(1),
                                             float("nan")).tolist(),
        "object_pixel_share": float(pix[0] / total_pix),
        "context_pixel_share": float(pix[1] / total_pix),
        "ignore_pixel_share": float(pix[2] / total_pix),
        "rider_rate": rider_imgs / horse_imgs if horse_imgs else float("nan"),
    }


def pairing_curve(rhos: list[float], num_images: int = 300, image_size: int = 96, seed: int = 0,
                  progress: bool = True) -> list[float]:
    """Measured paired-context rate (from context masks, riders off) for each configured rho."""
    out = []
    for rho in tqdm(rhos, desc="pairing vs rho", disable=not progress):
        ds = ConfoundedScenes("train", num_images=num_images, image_size=image_size, cooccurrence=rho, seed=seed,
                              rider_rate=0.0)
        out.append(scene_statistics(ds, progress=False)["paired_rate"])
    return out


def label_statistics(dataset: Any, max_images: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Image-label statistics of any dataset with ``labels`` (VOC, COCO, the benchmark): ``class_frequency``
    (C,) and ``cooccurrence`` (C, C) = P(j present | i present)."""
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    c = dataset.num_classes
    counts = torch.zeros(c, dtype=torch.float64)
    joint = torch.zeros(c, c, dtype=torch.float64)
    for i in tqdm(range(n), desc="labels", disable=not progress):
        y = dataset[i]["labels"].double()
        counts += y
        joint += torch.outer(y, y)
    return {"num_images": n, "class_names": list(dataset.class_names), "class_frequency": (counts / max(n, 1)).tolist(),
            "cooccurrence": (joint / counts.clamp_min(1)[:, None]).tolist(),
            "objects_per_image": float(counts.sum() / max(n, 1))}


def _mutual_information(table: torch.Tensor) -> float:
    """Mutual information (bits) of the two variables of a contingency table of counts."""
    joint = table / table.sum().clamp_min(1)
    pc, pk = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    ratio = torch.where(joint > 0, joint / (pc * pk).clamp_min(1e-12), torch.ones_like(joint))
    return float((joint * ratio.log2()).sum())


def patch_shape_information(dataset: ConfoundedScenes, max_images: int | None = 2000) -> dict[str, Any]:
    """How much the *kind* of an object's context patch tells about its class: the mutual information (bits)
    between class and patch kind ("around", "below", "behind", as the generator placed it) over the objects
    that stand on a context, and P(kind | class). At rho = chance it is ~0 in the ``"prior"`` and
    ``"prior_strip"`` layouts (the kind is drawn with the context) and stays high in
    ``"prior_class_surround"`` (one shape per class): a class cue there that no intervention on the context
    removes.

    ``extent_information_bits``: the same with the patch's kind *and* the quarter of the image its top edge
    lies in: where the patch's extent follows the object's box (``"prior"``), a ground band starting at a
    flyer's height still tells the class at chance; in ``"prior_strip"`` it does not."""
    from ._layout import CLASS_PRIORS, CONTEXT_KINDS, KINDS

    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    table = torch.zeros(dataset.num_classes, len(KINDS), dtype=torch.float64)
    extent = torch.zeros(dataset.num_classes, len(KINDS) * 4, dtype=torch.float64)
    s = dataset.image_size
    for i in range(n):
        for o in dataset.render(i)[3]:
            if o["rider"] or o["context"] < 0:
                continue
            if dataset.layout in ("prior", "prior_strip"):
                kind = CONTEXT_KINDS[dataset.context_names[o["context"]]]
            else:  # the class's shape ("prior_class_surround"); the uniform layout's rectangle is "around"
                kind = CLASS_PRIORS[dataset.class_names[o["class"]]][2] if dataset.layout != "uniform" else "around"
            table[o["class"], KINDS.index(kind)] += 1
            quarter = min(4 * o["surround"][0] // s, 3)
            extent[o["class"], 4 * KINDS.index(kind) + quarter] += 1
    return {"mutual_information_bits": _mutual_information(table), "kinds": list(KINDS),
            "extent_information_bits": _mutual_information(extent), "num_objects": int(table.sum()),
            "kind_given_class": (table / table.sum(1, keepdim=True).clamp_min(1)).tolist(), "rho": dataset.rho}
