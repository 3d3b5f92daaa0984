""":class:`ContaClassifier`: the baseline classifier with M fused as one extra channel, ``logits = f(X, M)``,
at the last block (the head gets an M column), at the input, or after any backbone stage."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models.classifier import Classifier, pool_logits
from ...models.inference import eval_mode

log = logging.getLogger(__name__)


FUSION_INITS = ("zero", "normal")


class _ExtraChannelConv(nn.Module):
    """``conv`` that accepts one more input channel: conv(x[:, :D]) + extra(x[:, D:]); ``extra`` starts at zero
    (``init="zero"``) or drawn like the conv's own weights (``"normal"``: N(0, std of conv.weight))."""

    def __init__(self, conv: nn.Conv2d, init: str = "zero") -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError("cannot widen a grouped convolution")
        self.conv = conv
        self.extra = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                               bias=False)
        if init == "zero":
            nn.init.zeros_(self.extra.weight)
        else:
            with torch.no_grad():
                nn.init.normal_(self.extra.weight, std=float(conv.weight.std()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.conv.in_channels
        return self.conv(x[:, :d]) + self.extra(x[:, d:])


def _widen_entry(stage: nn.Module, init: str = "zero") -> list[nn.Module]:
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
        wide = _ExtraChannelConv(getattr(parent, name), init)
        setattr(parent, name, wide)
        new.append(wide.extra)
    return new


class _FusedHead(nn.Module):
    """1x1 head over [F ; M]: the base head's weights plus a column for M (zero, or N(0, 0.01) as the official
    module's output layer with ``init="normal"``)."""

    def __init__(self, base_head: nn.Conv2d, init: str = "zero") -> None:
        super().__init__()
        self.base = base_head
        self.m_weight = nn.Parameter(torch.zeros(base_head.out_channels, 1, 1, 1))
        if init == "normal":
            nn.init.normal_(self.m_weight, std=0.01)

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
        fusion: "last" (concatenate M to the last block's features; the head gets an M column, the paper's
            "block 5"), "input" (a fourth input channel), a backbone stage name (M concatenated to that
            stage's output, the next stage's entry convs get an extra input channel), or "penultimate" (the
            stage before the last: M still passes the last stage's conv + BN + ReLU).
        fusion_init: "zero" (the new weights start at zero: the model computes exactly the base classifier's
            logits until it trains) or "normal" (drawn like their neighbours; see :class:`_ExtraChannelConv`).

    With ``fusion="last"`` the logits see M only through GAP(M), nearly one number for every image: the
    attention gets (almost) no gradient. The other fusion points pass M through a spatial nonlinearity.
    CAMs: ``features(x, x_m)`` returns [F ; M] for ``fusion="last"`` (so ``head.weight`` gives
    CAM_k = ReLU(w_k F + w_kM M)), else the last features.
    """

    def __init__(self, base: Classifier, adjustment: nn.Module, fusion: str = "last",
                 fusion_init: str = "zero") -> None:
        super().__init__()
        stages = base.backbone.stages
        if fusion not in ("last", "input", "penultimate", *stages):
            raise ValueError(f"fusion must be 'last', 'input', 'penultimate' or one of {stages}, got {fusion!r}")
        if fusion_init not in FUSION_INITS:
            raise ValueError(f"fusion_init must be one of {FUSION_INITS}, got {fusion_init!r}")
        if fusion == "penultimate":
            fusion = stages[-2]
        if fusion == stages[-1]:
            fusion = "last"
        self.base, self.adjustment, self.fusion, self.fusion_init = base, adjustment, fusion, fusion_init
        self.num_classes = base.num_classes
        if fusion == "last":
            self.head: nn.Module = _FusedHead(base.head, fusion_init)
            self._new = [self.head.m_weight]
        else:
            self.head = base.head
            nxt = stages[0] if fusion == "input" else stages[stages.index(fusion) + 1]
            self._new = [p for m in _widen_entry(getattr(base.backbone, nxt), fusion_init) for p in m.parameters()]
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

    def features(self, x: torch.Tensor, x_m: torch.Tensor | None = None, m_term: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] and masks x_m (B, H', W') -> (B, D[+1], h, w).

        ``m_term=False`` puts M = 0 (the diagnostic "CAM without the M term"). The stages run through the base
        classifier's :meth:`~conta_kit.models.Classifier.trunk`, with M concatenated after ``fusion``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
        if x_m is None:
            raise ValueError("a ContaClassifier needs x_m (B, H, W), the masks its M is built from")
        if x_m.dim() != 3 or x_m.shape[0] != x.shape[0]:
            raise ValueError(f"x_m must be (B, H, W) with B = {x.shape[0]}, got {tuple(x_m.shape)}")
        m, _ = self.adjust(x_m)
        if not m_term:
            m = torch.zeros_like(m)
        return self.features_at(x, m)

    def features_at(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The features with a given M (B, 1, h, w) (the exact backdoor sum evaluates f at each stratum)."""

        def cat(t: torch.Tensor) -> torch.Tensor:
            mm = F.interpolate(m, size=t.shape[-2:], mode="bilinear", align_corners=False)
            return torch.cat([t, mm.to(t.dtype)], 1)

        h = self.base.normalize(x)
        if self.fusion == "input":
            h = cat(h)
        h = self.base.trunk(h, after=lambda name, t: cat(t) if name == self.fusion else t)
        return cat(h) if self.fusion == "last" else h

    def forward(self, x: torch.Tensor, x_m: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W), (B, H', W') -> logits (B, C)."""
        return pool_logits(self.head, self.features(x, x_m), self.base.pooling, self.base.lse_r)

    def logits_at(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Logits with a given M (B, 1, h, w)."""
        return pool_logits(self.head, self.features_at(x, m), self.base.pooling, self.base.lse_r)

    def param_groups(self, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """Backbone x1; the head, M's weights and the adjustment (W1, W2) x ``head_lr_mult`` (new layers)."""
        new_ids = {id(p) for p in self._new}
        back = [p for p in self.base.backbone.parameters() if p.requires_grad and id(p) not in new_ids]
        head = [p for p in self.base.head.parameters()] + list(self._new) + list(self.adjustment.parameters())
        return [{"params": back, "lr_mult": 1.0}, {"params": head, "lr_mult": head_lr_mult}]
