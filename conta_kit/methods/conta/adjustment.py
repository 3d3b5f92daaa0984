"""The backdoor adjustment (Eq. 3 of the paper): attention alpha over the prototypes and M = sum_i alpha_i
P(c_i) c_i; and the reviewer's raw-mask baseline. Registry: :data:`ADJUSTMENTS`."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .confounders import ConfounderSet, to_grid

M_SCALES = ("paper", "convex", "max")
ATTN_INITS = ("official", "scaled", "match")


class BackdoorAdjustment(nn.Module):
    r"""M = sum_i alpha_i P(c_i) c_i with alpha = softmax((W1 x_m)^T (W2 c_i) / tau) over the prototypes.

    Args:
        confounders: the set C (prototypes and prior become buffers, saved in the state dict).
        embed_dim: d, the projected size (the paper's n = number of classes; default: number of prototypes).
        temperature: tau (default sqrt(d), the paper's sqrt(n)).
        m_scale: "paper" (M as defined: at most max P(c), 1/n for the uniform prior), "convex" (divide by
            sum_i alpha_i P(c_i): a convex mixture of prototypes, values in [0, 1]) or "max" (divide each
            image's M by its maximum: O(1) next to the features). Anything but "paper" is a deviation from
            the paper.
        attn_init: "official" (W1, W2 ~ N(0, 0.02), the official module's) or "scaled" (W2's std 1 / sqrt(mean
            ||c_i||^2) and W1's 1 / sqrt(mean sum c_i), a binary mask's energy being its area: W1 x_m and W2 c_i
            are O(1) for masks in [0, 1] and the attention logits have unit scale) or "match" (the same scales,
            with the rows of W1 and W2 the unit-norm prototypes themselves, so alpha starts as the softmax of the
            mask's overlap with each prototype, x_m^T C^T C c_i: an image's attention starts on the prototypes
            its mask covers; needs ``embed_dim`` = K). Anything but "official" deviates from the official
            code.

    ``strata(x_m)`` gives the maps of the exact backdoor sum, M_i = s alpha_i c_i with s the image's scale,
    so that sum_i P(c_i) M_i = M (the NWGM approximation evaluates f once at M instead).
    """

    def __init__(self, confounders: ConfounderSet, *, embed_dim: int | None = None,
                 temperature: float | None = None, m_scale: str = "paper", attn_init: str = "official") -> None:
        super().__init__()
        if m_scale not in M_SCALES:
            raise ValueError(f"m_scale must be one of {M_SCALES}, got {m_scale!r}")
        if attn_init not in ATTN_INITS:
            raise ValueError(f"attn_init must be one of {ATTN_INITS}, got {attn_init!r}")
        k, (h, w) = len(confounders), confounders.grid
        d = embed_dim or k
        self.grid, self.m_scale = (h, w), m_scale
        self.temperature = float(temperature) if temperature is not None else math.sqrt(d)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.register_buffer("prototypes", confounders.prototypes.reshape(k, h * w).float().clone())
        self.register_buffer("prior", confounders.prior.float().clone())
        self.register_buffer("class_ids", confounders.class_ids.clone(), persistent=False)
        self.w1, self.w2 = nn.Linear(h * w, d), nn.Linear(h * w, d)
        self.attn_init = attn_init
        if attn_init == "official":
            std1 = std2 = 0.02
        else:  # O(1) projections: x_m (near binary) has the energy of its area, a prototype its own energy
            std1 = 1.0 / math.sqrt(max(float(self.prototypes.sum(1).mean()), 1e-6))
            std2 = 1.0 / math.sqrt(max(float(self.prototypes.pow(2).sum(1).mean()), 1e-6))
        for lin, std in ((self.w1, std1), (self.w2, std2)):
            nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(lin.bias)
        if attn_init == "match":
            if d != k:
                raise ValueError(f"attn_init='match' needs embed_dim = number of prototypes ({k}), got {d}")
            unit = self.prototypes / self.prototypes.norm(dim=1, keepdim=True).clamp_min(1e-6)
            with torch.no_grad():  # unit rows carry a mask's area and a prototype's energy; rescale like "scaled"
                self.w1.weight.copy_(unit * std1 * math.sqrt(h * w / k))
                self.w2.weight.copy_(unit * std2 * math.sqrt(h * w / k))

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

    def _scaled(self, x_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """alpha (B, K), the unscaled M (B, hw) and the image's scale s (B, 1) of ``m_scale``."""
        alpha = self.attention(x_m)
        weights = alpha * self.prior  # (B, K)
        m = weights @ self.prototypes  # (B, hw)
        if self.m_scale == "convex":
            s = 1.0 / weights.sum(1, keepdim=True).clamp_min(1e-12)
        elif self.m_scale == "max":
            s = 1.0 / m.amax(1, keepdim=True).clamp_min(1e-6)
        else:
            s = torch.ones_like(m[:, :1])
        return alpha, m, s

    def forward(self, x_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_m (B, H, W) -> M (B, 1, h, w) and alpha (B, K)."""
        alpha, m, s = self._scaled(x_m)
        return (m * s).view(-1, 1, *self.grid), alpha

    def strata(self, x_m: torch.Tensor) -> torch.Tensor:
        """x_m (B, H, W) -> (K, B, 1, h, w): M_i = s alpha_i c_i, whose P(c)-weighted sum is M."""
        alpha, _, s = self._scaled(x_m)
        maps = (s * alpha)[:, :, None] * self.prototypes[None]  # (B, K, hw)
        return maps.transpose(0, 1).reshape(len(self.prototypes), -1, 1, *self.grid)


class RawMaskFusion(nn.Module):
    """Reviewer 1's baseline: fuse the predicted mask x_m itself (on the grid), no prototypes, no attention."""

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = tuple(grid)

    def forward(self, x_m: torch.Tensor) -> tuple[torch.Tensor, None]:
        if x_m.dim() != 3:
            raise ValueError(f"x_m must be (B, H, W), got {tuple(x_m.shape)}")
        return to_grid(x_m, self.grid)[:, None], None


class ZeroFusion(RawMaskFusion):
    """The retrain control: M = 0 for every image. The adjusted classifier keeps its fused architecture and its
    training; only what M carries is gone, so a round with it measures what retraining alone moves."""

    def forward(self, x_m: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(super().forward(x_m)[0]), None


def build_adjustment(kind: str, confounders: ConfounderSet, **kwargs: Any) -> nn.Module:
    """"backdoor" -> :class:`BackdoorAdjustment`; "raw_mask" -> :class:`RawMaskFusion` (on the set's grid);
    "zero" -> :class:`ZeroFusion` (M = 0: the retrain control)."""
    if kind == "backdoor":
        return BackdoorAdjustment(confounders, **kwargs)
    if kind == "raw_mask":
        return RawMaskFusion(confounders.grid)
    if kind == "zero":
        return ZeroFusion(confounders.grid)
    raise ValueError(f"adjustment must be 'backdoor', 'raw_mask' or 'zero', got {kind!r}")


@torch.no_grad()
def attention_statistics(alpha: torch.Tensor, labels: torch.Tensor, class_ids: torch.Tensor) -> dict[str, Any]:
    """Summaries of alpha (N, K) over images with labels (N, C): mean weight per prototype, normalised
    entropy (1 = uniform), the share of images whose top prototype is one of their classes, and that share's
    chance level (mean classes per image / K)."""
    if alpha.dim() != 2 or alpha.shape[0] != labels.shape[0] or alpha.shape[1] != len(class_ids):
        raise ValueError(f"alpha must be (N, {len(class_ids)}) with N = {labels.shape[0]}, got {tuple(alpha.shape)}")
    a = alpha.double()
    ent = -(a * a.clamp_min(1e-12).log()).sum(1) / math.log(max(a.shape[1], 2))
    top = class_ids[a.argmax(1)]  # label id of the top prototype
    hit = torch.zeros(len(top), dtype=torch.bool)
    fg = top > 0
    hit[fg] = labels[fg, top[fg] - 1] > 0
    return {"mean_alpha": a.mean(0).tolist(), "entropy": float(ent.mean()), "top_is_present_class": float(
        hit.double().mean()), "max_alpha": float(a.max(1).values.mean()),
        "chance": float(labels.double().sum(1).mean()) / a.shape[1]}
