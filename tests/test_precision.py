"""amp="auto": bf16 on a CPU with bf16 matrix units, fp32 elsewhere; one rule for training and CAMs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conta_kit import precision
from conta_kit.cam import cam_precision, compute_cams
from conta_kit.config import RunCfg
from conta_kit.models import build_classifier
from conta_kit.train import TrainCfg, fit


@pytest.mark.parametrize("flag, auto", [("0", "fp32"), ("1", "bf16")])
def test_resolve_follows_the_cpu_detection_only_for_auto(monkeypatch, flag, auto):
    monkeypatch.setenv("CONTA_KIT_CPU_BF16", flag)
    assert precision.cpu_bf16_fast() is (flag == "1")
    cpu = torch.device("cpu")
    assert precision.resolve(cpu, "auto") == auto == cam_precision(cpu, "auto")
    assert precision.resolve(cpu, "off") == "fp32" and precision.resolve(cpu, "fp16") == "fp32"
    assert precision.resolve(cpu, "bf16") == "bf16"
    assert precision.resolve("cuda", "auto") == "bf16" and precision.resolve("cuda", "fp16") == "fp16"
    assert precision.resolve("cuda", "off") == "fp32"


def test_detection_without_override_reads_the_cpu(monkeypatch):
    monkeypatch.delenv("CONTA_KIT_CPU_BF16")
    units = precision.cpu_bf16_units()
    assert set(units) == {"amx", "avx512_bf16"} and all(isinstance(v, bool) for v in units.values())
    assert precision.cpu_bf16_fast() is any(units.values())
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: {"amx": True, "avx512_bf16": False})
    assert precision.resolve("cpu", "auto") == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: {"amx": False, "avx512_bf16": False})
    assert precision.resolve("cpu", "auto") == "fp32"


def test_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("CONTA_KIT_CPU_BF16", "yes")
    with pytest.raises(ValueError, match="CONTA_KIT_CPU_BF16 must be 0 or 1"):
        precision.cpu_bf16_fast()
    with pytest.raises(ValueError, match="amp must be one of"):
        precision.resolve("cpu", "int8")
    with pytest.raises(ValueError, match="amp must be one of"):
        RunCfg.from_params("smoke", amp="int8")
    assert RunCfg.from_params("smoke", amp="off").baseline.amp == "off"
    assert RunCfg.from_params("smoke").baseline.amp == "auto"


class _Probe(nn.Module):
    """A conv classifier that records the dtype its convolution produced."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.seen.append(y.dtype)
        return self.head(y.mean((2, 3)))


class _Data(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, 8, 8, generator=g), "labels": torch.tensor([i % 2, 1 - i % 2]).float()}


def _loss(m: nn.Module, batch: dict) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(m(batch["image"]).float(), batch["labels"])


@pytest.mark.parametrize("flag, amp, dtype", [("1", "auto", torch.bfloat16), ("0", "auto", torch.float32),
                                               ("1", "off", torch.float32), ("0", "bf16", torch.bfloat16)])
def test_fit_trains_in_the_resolved_precision(monkeypatch, flag, amp, dtype):
    monkeypatch.setenv("CONTA_KIT_CPU_BF16", flag)
    torch.manual_seed(0)
    model = _Probe()
    hist = fit(model, _Data(), _loss, TrainCfg(epochs=1, batch_size=4, lr=0.1, amp=amp), progress=False)
    assert set(model.seen) == {dtype} and all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(torch.tensor(hist[-1]["loss"]))


def test_cams_under_auto_are_the_bf16_cams_where_the_cpu_has_bf16_units(monkeypatch):
    torch.manual_seed(0)
    model = build_classifier("tiny", 3).eval()
    x, lab = torch.rand(2, 3, 32, 32), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    fp32 = compute_cams(model, x, lab, scales=(1.0, 0.5), amp="off")
    bf16 = compute_cams(model, x, lab, scales=(1.0, 0.5), amp="bf16")
    monkeypatch.setenv("CONTA_KIT_CPU_BF16", "1")
    assert torch.equal(compute_cams(model, x, lab, scales=(1.0, 0.5), amp="auto"), bf16)
    monkeypatch.setenv("CONTA_KIT_CPU_BF16", "0")
    assert torch.equal(compute_cams(model, x, lab, scales=(1.0, 0.5), amp="auto"), fp32)
    assert not torch.equal(bf16, fp32)
