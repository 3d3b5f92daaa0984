r"""CONTA: context adjustment by backdoor intervention (Zhang et al., NeurIPS 2020).

The confounder C is a set of class prototypes (average masks). The intervention

.. math:: P(Y \mid do(X)) = \sum_i P(Y \mid X, M = f(X, c_i))\, P(c_i)

is approximated (normalised weighted geometric mean: the expectation moves inside the sigmoid, exact for a
last layer that is linear in M) by one forward pass with

.. math:: M = \sum_i \alpha_i\, P(c_i)\, c_i,\qquad
          \alpha = \mathrm{softmax}_i\big((W_1 x_m)^\top (W_2 c_i) / \tau\big),\ \tau = \sqrt{n},

where x_m is the image's mask predicted by the previous round's segmenter. M (1 x h x w) is fused into
the classifier as one extra channel. Code map: :func:`build_confounder_set` (C, P(c)),
:class:`BackdoorAdjustment` (alpha, M), :class:`ContaClassifier` (f(X, M) and the CAM).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cam import eval_mode
from .io import atomic_torch_save
from .models import Classifier

log = logging.getLogger(__name__)
IGNORE_INDEX = 255
PRIORS = ("uniform", "freq")
M_SCALES = ("paper", "convex", "max")


@dataclass
class ConfounderSet:
    """The confounder set C: K prototypes on a canonical h x w grid, their prior and provenance.

    Attributes:
        prototypes: (K, h, w) float32 in [0, 1]; row k is the average mask of label ``class_ids[k]``.
        prior: (K,) float32, sums to one (P(c)).
        counts: (K,) int64, images averaged into each prototype.
        class_ids: (K,) int64 label ids (0 = background, k + 1 = class index k).
    """

    prototypes: torch.Tensor
    prior: torch.Tensor
    counts: torch.Tensor
    class_ids: torch.Tensor

    def __post_init__(self) -> None:
        k = self.prototypes.shape[0]
        if self.prototypes.dim() != 3:
            raise ValueError(f"prototypes must be (K, h, w), got shape {tuple(self.prototypes.shape)}")
        for name in ("prior", "counts", "class_ids"):
            if getattr(self, name).shape != (k,):
                raise ValueError(f"{name} must be ({k},), got shape {tuple(getattr(self, name).shape)}")

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.prototypes.shape[1:])

    def __len__(self) -> int:
        return self.prototypes.shape[0]

    def save(self, path: str | Path) -> Path:
        """Atomic ``torch.save`` of plain tensors (loadable with ``weights_only=True``)."""
        return atomic_torch_save(path, {"prototypes": self.prototypes, "prior": self.prior, "counts": self.counts,
                                        "class_ids": self.class_ids})

    @classmethod
    def load(cls, path: str | Path, *, num_prototypes: int | None = None,
             grid: tuple[int, int] | None = None) -> ConfounderSet:
        """Load a saved set; ``num_prototypes``/``grid`` are checked when given (errors name the file)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"confounder set {path} not found")
        d = torch.load(path, map_location="cpu", weights_only=True)
        try:
            cs = cls(d["prototypes"], d["prior"], d["counts"], d["class_ids"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a confounder set: {e}") from e
        if num_prototypes is not None and len(cs) != num_prototypes:
            raise ValueError(f"{path} holds {len(cs)} prototypes, expected {num_prototypes}")
        if grid is not None and cs.grid != tuple(grid):
            raise ValueError(f"{path} has grid {cs.grid}, expected {tuple(grid)}")
        return cs


def to_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize (B, H, W) or (B, K, H, W) float maps to the grid: the average over each cell when shrinking
    (exact block means for integer factors), bilinear otherwise. Both commute with horizontal flips."""
    x = maps[:, None] if maps.dim() == 3 else maps
    size = tuple(int(g) for g in grid)
    if tuple(x.shape[-2:]) == size:
        out = x.float()
    elif x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        out = F.adaptive_avg_pool2d(x.float(), size)
    else:
        out = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    return out[:, 0] if maps.dim() == 3 else out


_CHUNK = 32  # images whose (1 + C, H, W) one-hot planes build_confounder_set holds at once


@torch.no_grad()
def build_confounder_set(batches: Iterable[Any], num_classes: int, grid: tuple[int, int], *,
                         prior: str = "uniform", include_bg: bool = False) -> ConfounderSet:
    """Class prototypes c_i = average mask of class i over the images that contain it, streamed.

    Args:
        batches: iterable of ``masks`` or ``(masks, labels)``. ``masks`` is (B, H, W) long label ids
            (0 background, k + 1 class index k, 255 ignore) or (B, 1 + C, H, W) float probabilities
            (soft prototypes). ``labels`` (B, C) multi-hot decides which images contain class k; without
            labels an image contains k when its mask has any mass of k. Images of any size are resized to
            ``grid`` before averaging; memory does not grow with the number of images.
        num_classes: C foreground classes. grid: (h, w), the size of the feature map M is fused into.
        prior: "uniform" (P(c) = 1/K, the paper's) or "freq" (share of images containing the class).
        include_bg: add the background prototype (label 0, averaged over all images) as row 0.

    Returns:
        :class:`ConfounderSet` with K = C (+1 with ``include_bg``) prototypes (K, h, w).
    """
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"grid must be (h, w) with h, w >= 1, got {grid}")
    grid = (int(grid[0]), int(grid[1]))
    sums = torch.zeros(num_classes + 1, *grid, dtype=torch.float64)
    counts = torch.zeros(num_classes + 1, dtype=torch.int64)
    for item in batches:
        masks, labels = (item if isinstance(item, tuple | list) else (item, None))
        ids = masks.dim() == 3 and not masks.is_floating_point()
        if ids:
            valid = masks != IGNORE_INDEX
            if bool(((masks < 0) | (masks > num_classes))[valid].any()):
                raise ValueError(f"mask ids must be in 0..{num_classes} or {IGNORE_INDEX}, got "
                                 f"{sorted(masks[valid].unique().tolist())[:10]}")
        elif not (masks.dim() == 4 and masks.shape[1] == num_classes + 1):
            raise ValueError(f"masks must be (B, H, W) label ids or (B, {num_classes + 1}, H, W) probabilities, "
                             f"got shape {tuple(masks.shape)} ({masks.dtype})")
        if labels is not None and labels.shape != (masks.shape[0], num_classes):
            raise ValueError(f"labels must be ({masks.shape[0]}, {num_classes}), got {tuple(labels.shape)}")
        for i in range(0, masks.shape[0], _CHUNK):  # one-hot planes of at most _CHUNK images at a time
            m = masks[i:i + _CHUNK]
            if ids:
                v = valid[i:i + _CHUNK]
                probs = torch.zeros(m.shape[0], num_classes + 1, *m.shape[1:], device=m.device)
                probs.scatter_(1, m.masked_fill(~v, 0).long()[:, None], v[:, None].float())
            else:
                probs = m.float()
            on_grid = to_grid(probs, grid).double().cpu()  # (b, 1 + C, h, w)
            if labels is not None:
                lab = labels[i:i + _CHUNK]
                present = torch.cat([torch.ones_like(lab[:, :1], dtype=torch.bool), lab > 0], 1).cpu()
            else:
                present = probs.flatten(2).amax(2).cpu() > 0
            sums += (on_grid * present[:, :, None, None]).sum(0)
            counts += present.sum(0)
    rows = torch.arange(0 if include_bg else 1, num_classes + 1)
    protos = (sums[rows] / counts[rows].clamp_min(1)[:, None, None]).float()
    empty = [int(r) for r in rows if counts[r] == 0]
    if empty:
        log.warning("no image contains label ids %s: their prototypes are zero", empty)
    cnt = counts[rows]
    if prior == "uniform":
        p = torch.full((len(rows),), 1.0 / len(rows))
    else:
        if cnt.sum() == 0:
            raise ValueError("prior='freq' needs at least one image with a class")
        p = (cnt.double() / cnt.sum()).float()
    return ConfounderSet(protos, p, cnt, rows)


class BackdoorAdjustment(nn.Module):
    r"""M = sum_i alpha_i P(c_i) c_i with alpha = softmax((W1 x_m)^T (W2 c_i) / tau) over the prototypes.

    Args:
        confounders: the set C (prototypes and prior become buffers, saved in the state dict).
        embed_dim: d, the projected size (the paper's n = number of classes; default: number of prototypes).
        temperature: tau (default sqrt(d), the paper's sqrt(n)).
        m_scale: "paper" (M as defined: at most max P(c), 1/n for the uniform prior), "convex" (divide by
            sum_i alpha_i P(c_i): a convex mixture of prototypes, values in [0, 1]) or "max" (divide each
            image's M by its maximum). Anything but "paper" is a deviation from the paper.
    """

    def __init__(self, confounders: ConfounderSet, *, embed_dim: int | None = None,
                 temperature: float | None = None, m_scale: str = "paper") -> None:
        super().__init__()
        if m_scale not in M_SCALES:
            raise ValueError(f"m_scale must be one of {M_SCALES}, got {m_scale!r}")
        k, (h, w) = len(confounders), confounders.grid
        d = embed_dim or k
        self.grid, self.m_scale = (h, w), m_scale
        self.temperature = float(temperature) if temperature is not None else math.sqrt(d)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.register_buffer("prototypes", confounders.prototypes.reshape(k, h * w).float().clone())
        self.register_buffer("prior", confounders.prior.float().clone())
        self.w1, self.w2 = nn.Linear(h * w, d), nn.Linear(h * w, d)
        for lin in (self.w1, self.w2):  # the official module's initialisation
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def _flat(self, x_m: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        if x_m.dim() == 3 and tuple(x_m.shape[1:]) != (h, w):
            x_m = to_grid(x_m, (h, w))
        if x_m.dim() == 3:
            x_m = x_m.flatten(1)
        if x_m.dim() != 2 or x_m.shape[1] != h * w:
            raise ValueError(f"x_m must be (B, H, W) or (B, {h * w}) (grid {h}x{w}), got {tuple(x_m.shape)}")
        return x_m.float()

    def attention(self, x_m: torch.Tensor) -> torch.Tensor:
        """(B, H, W) or (B, hw) mask -> alpha (B, K), rows sum to one."""
        q = self.w1(self._flat(x_m))  # (B, d)
        k = self.w2(self.prototypes)  # (K, d)
        return torch.softmax(q @ k.t() / self.temperature, dim=1)

    def forward(self, x_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_m (B, H, W) -> M (B, 1, h, w) and alpha (B, K)."""
        alpha = self.attention(x_m)
        weights = alpha * self.prior  # (B, K)
        m = weights @ self.prototypes  # (B, hw)
        if self.m_scale == "convex":
            m = m / weights.sum(1, keepdim=True).clamp_min(1e-12)
        elif self.m_scale == "max":
            m = m / m.amax(1, keepdim=True).clamp_min(1e-6)
        return m.view(-1, 1, *self.grid), alpha


class RawMaskFusion(nn.Module):
    """Reviewer 1's baseline: fuse the predicted mask x_m itself (on the grid), no prototypes, no attention."""

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = tuple(grid)

    def forward(self, x_m: torch.Tensor) -> tuple[torch.Tensor, None]:
        if x_m.dim() != 3:
            raise ValueError(f"x_m must be (B, H, W), got {tuple(x_m.shape)}")
        return to_grid(x_m, self.grid)[:, None], None


class _ExtraChannelConv(nn.Module):
    """``conv`` that accepts one more input channel: conv(x[:, :D]) + extra(x[:, D:]), extra zero-initialised."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError("cannot widen a grouped convolution")
        self.conv = conv
        self.extra = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                               bias=False)
        nn.init.zeros_(self.extra.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.conv.in_channels
        return self.conv(x[:, :d]) + self.extra(x[:, d:])


def _widen_entry(stage: nn.Module) -> list[nn.Module]:
    """Replace the convs that read a stage's input with :class:`_ExtraChannelConv`s; return the new modules."""
    first = next((m for m in stage.modules() if isinstance(m, nn.Conv2d | _ExtraChannelConv)), None)
    if first is None:
        raise ValueError(f"stage {type(stage).__name__} has no convolution to fuse M into")
    block = stage[0] if isinstance(stage, nn.Sequential) else stage
    targets: list[tuple[nn.Module, str]] = []
    if hasattr(block, "conv1") and isinstance(block.conv1, nn.Conv2d):  # torchvision ResNet block
        targets.append((block, "conv1"))
        if getattr(block, "downsample", None) is not None:
            targets.append((block.downsample, "0"))
        else:
            raise ValueError("M cannot be fused before a residual block without a projection shortcut")
    else:  # first conv in module order (tiny backbone, ResNet stem)
        for parent in stage.modules():
            hit = next(((n, c) for n, c in parent.named_children() if isinstance(c, nn.Conv2d)), None)
            if hit is not None:
                targets.append((parent, hit[0]))
                break
    new = []
    for parent, name in targets:
        wide = _ExtraChannelConv(getattr(parent, name))
        setattr(parent, name, wide)
        new.append(wide.extra)
    return new


class _FusedHead(nn.Module):
    """1x1 head over [F ; M]: the base head's weights plus a zero-initialised column for M."""

    def __init__(self, base_head: nn.Conv2d) -> None:
        super().__init__()
        self.base = base_head
        self.m_weight = nn.Parameter(torch.zeros(base_head.out_channels, 1, 1, 1))

    @property
    def weight(self) -> torch.Tensor:
        """(C, D + 1, 1, 1): the CAM weights over [F ; M]."""
        return torch.cat([self.base.weight, self.m_weight], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.base.in_channels
        return self.base(x[:, :d]) + F.conv2d(x[:, d:], self.m_weight)


class ContaClassifier(nn.Module):
    """The baseline classifier with M fused as one extra channel: ``logits = f(X, M)``.

    Args:
        base: a :class:`~conta_kit.models.Classifier` (its weights are used as they are).
        adjustment: :class:`BackdoorAdjustment` (CONTA) or :class:`RawMaskFusion` (reviewer's baseline).
        fusion: "last" (concatenate M to the last block's features; the head gets a zero-initialised M
            column, the paper's "block 5"), "input" (a fourth input channel), or a backbone stage name
            (M concatenated to that stage's output, the next stage's entry convs get a zero-initialised
            extra input channel).

    With the zero initialisation the model computes exactly the base classifier's logits until it trains.
    CAMs: ``features(x, x_m)`` returns [F ; M] for ``fusion="last"`` (so ``head.weight`` gives
    CAM_k = ReLU(w_k F + w_kM M)), else the last features.
    """

    def __init__(self, base: Classifier, adjustment: nn.Module, fusion: str = "last") -> None:
        super().__init__()
        stages = base.backbone.stages
        if fusion not in ("last", "input", *stages):
            raise ValueError(f"fusion must be 'last', 'input' or one of {stages}, got {fusion!r}")
        if fusion == stages[-1]:
            fusion = "last"
        self.base, self.adjustment, self.fusion = base, adjustment, fusion
        self.num_classes = base.num_classes
        if fusion == "last":
            self.head: nn.Module = _FusedHead(base.head)
            self._new = [self.head.m_weight]
        else:
            self.head = base.head
            nxt = stages[0] if fusion == "input" else stages[stages.index(fusion) + 1]
            self._new = [p for m in _widen_entry(getattr(base.backbone, nxt)) for p in m.parameters()]
            pos = -1 if fusion == "input" else stages.index(fusion)
            if base.detach_until is not None and pos <= stages.index(base.detach_until):
                log.warning("fusion=%r sits before the detached stage %r: the detach is removed so M can learn",
                            fusion, base.detach_until)
                base.detach_until = None
        try:
            with torch.no_grad(), eval_mode(self):  # eval: the check must not touch batch-norm statistics
                self.features(torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, 32))
        except RuntimeError as e:
            raise ValueError(f"fusion={fusion!r} does not fit this backbone: {str(e).splitlines()[0]}") from e

    def adjust(self, x_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x_m (B, H, W) in [0, 1] -> M (B, 1, h, w) on the grid and alpha (B, K) (None for raw masks)."""
        return self.adjustment(x_m)

    def features(self, x: torch.Tensor, x_m: torch.Tensor, m_term: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] and masks x_m (B, H', W') -> (B, D[+1], h, w).

        ``m_term=False`` puts M = 0 (the diagnostic "CAM without the M term")."""
        b = self.base
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
        if x_m.dim() != 3 or x_m.shape[0] != x.shape[0]:
            raise ValueError(f"x_m must be (B, H, W) with B = {x.shape[0]}, got {tuple(x_m.shape)}")
        m, _ = self.adjust(x_m)
        if not m_term:
            m = torch.zeros_like(m)
        h = (x - b.mean) / b.std

        def cat(t: torch.Tensor) -> torch.Tensor:
            mm = F.interpolate(m, size=t.shape[-2:], mode="bilinear", align_corners=False)
            return torch.cat([t, mm.to(t.dtype)], 1)

        if self.fusion == "input":
            h = cat(h)
        for name in b.backbone.stages:
            h = getattr(b.backbone, name)(h)
            if name == b.detach_until:
                h = h.detach()
            if name == self.fusion:
                h = cat(h)
        return cat(h) if self.fusion == "last" else h

    def forward(self, x: torch.Tensor, x_m: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, H', W') -> logits (B, C)."""
        return self.head(self.features(x, x_m).mean(dim=(2, 3), keepdim=True)).flatten(1)

    def param_groups(self, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """Backbone x1; the head, M's weights and the adjustment (W1, W2) x ``head_lr_mult`` (new layers)."""
        new_ids = {id(p) for p in self._new}
        back = [p for p in self.base.backbone.parameters() if p.requires_grad and id(p) not in new_ids]
        head = [p for p in self.base.head.parameters()] + list(self._new) + list(self.adjustment.parameters())
        return [{"params": back, "lr_mult": 1.0}, {"params": head, "lr_mult": head_lr_mult}]


def build_adjustment(kind: str, confounders: ConfounderSet, **kwargs: Any) -> nn.Module:
    """"backdoor" -> :class:`BackdoorAdjustment`; "raw_mask" -> :class:`RawMaskFusion` (on the set's grid)."""
    if kind == "backdoor":
        return BackdoorAdjustment(confounders, **kwargs)
    if kind == "raw_mask":
        return RawMaskFusion(confounders.grid)
    raise ValueError(f"adjustment must be 'backdoor' or 'raw_mask', got {kind!r}")


@torch.no_grad()
def attention_statistics(alpha: torch.Tensor, labels: torch.Tensor, class_ids: torch.Tensor) -> dict[str, Any]:
    """Summaries of alpha (N, K) over images with labels (N, C): mean weight per prototype, normalised
    entropy (1 = uniform), and the share of images whose top prototype is one of their classes."""
    if alpha.dim() != 2 or alpha.shape[0] != labels.shape[0] or alpha.shape[1] != len(class_ids):
        raise ValueError(f"alpha must be (N, {len(class_ids)}) with N = {labels.shape[0]}, got {tuple(alpha.shape)}")
    a = alpha.double()
    ent = -(a * a.clamp_min(1e-12).log()).sum(1) / math.log(max(a.shape[1], 2))
    top = class_ids[a.argmax(1)]  # label id of the top prototype
    hit = torch.zeros(len(top), dtype=torch.bool)
    fg = top > 0
    hit[fg] = labels[fg, top[fg] - 1] > 0
    return {"mean_alpha": a.mean(0).tolist(), "entropy": float(ent.mean()), "top_is_present_class": float(
        hit.double().mean()), "max_alpha": float(a.max(1).values.mean())}


@torch.no_grad()
def prototype_quality(confounders: ConfounderSet, reference: ConfounderSet) -> dict[str, Any]:
    """Compare a confounder set with a reference one (e.g. built from ground-truth masks): per prototype
    the cosine similarity and the mean absolute difference of the maps, and the same two numbers averaged.
    Also how distinct the prototypes are: mean pairwise cosine similarity within each set (1 = all alike,
    which leaves the attention nothing to choose between)."""
    if confounders.prototypes.shape != reference.prototypes.shape or not torch.equal(confounders.class_ids,
                                                                                     reference.class_ids):
        raise ValueError(f"sets differ: {tuple(confounders.prototypes.shape)} ids {confounders.class_ids.tolist()} "
                         f"vs {tuple(reference.prototypes.shape)} ids {reference.class_ids.tolist()}")
    a = confounders.prototypes.flatten(1).double()
    b = reference.prototypes.flatten(1).double()
    cos = F.cosine_similarity(a, b, dim=1, eps=1e-12)
    l1 = (a - b).abs().mean(1)

    def within(x: torch.Tensor) -> float:
        n = F.normalize(x, dim=1, eps=1e-12)
        sim = n @ n.t()
        k = x.shape[0]
        return float((sim.sum() - sim.diagonal().sum()) / max(k * (k - 1), 1))

    return {"cosine": cos.tolist(), "mean_cosine": float(cos.mean()), "abs_diff": l1.tolist(),
            "mean_abs_diff": float(l1.mean()), "within_cosine": within(a), "within_cosine_reference": within(b)}
