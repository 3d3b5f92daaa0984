"""The backdoor adjustment (Eq. 3 of the paper): attention alpha over the prototypes and M = sum_i alpha_i
P(c_i) c_i; and the reviewer's raw-mask baseline. Registry: :data:`ADJUSTMENTS`."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .confounders import ConfounderSet, to_grid

M_SCALES = ("paper", "convex", "max")


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
