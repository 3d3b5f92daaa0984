"""Which floating-point precision a forward pass runs in: one rule for training and CAM inference.

``amp`` is one of :data:`AMP_MODES`:

* ``"auto"``: bf16 autocast on CUDA; on a CPU bf16 autocast only where the CPU has bf16 matrix units
  (Intel AMX or AVX512-BF16, which PyTorch's oneDNN kernels use), fp32 elsewhere: on a CPU without them
  bf16 is emulated and several times slower than fp32 (measured in ``benchmarks/bench_amp.py``);
* ``"off"``: fp32 everywhere;
* ``"bf16"``: bf16 autocast on CUDA and on any CPU (slow where the CPU lacks bf16 units);
* ``"fp16"``: fp16 autocast (with a gradient scaler in training) on CUDA; fp32 on a CPU.

The environment variable ``CONTA_KIT_CPU_BF16`` (``1`` or ``0``) overrides the CPU detection for
``"auto"``; the test suite sets it to ``0`` so that its exact comparisons do not depend on the machine.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

import torch

AMP_MODES = ("auto", "off", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_bf16_units() -> dict[str, bool]:
    """What this CPU offers for bf16 matrix arithmetic, as PyTorch detects it."""
    cpu = torch.cpu
    probe = {"amx": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    return {name: bool(getattr(cpu, fn, lambda: False)()) for name, fn in probe.items()}


def cpu_bf16_fast() -> bool:
    """True where bf16 runs on this CPU's matrix units (``CONTA_KIT_CPU_BF16`` = 1/0 overrides)."""
    forced = os.environ.get("CONTA_KIT_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"CONTA_KIT_CPU_BF16 must be 0 or 1 (or unset), got {forced!r}")
    return any(cpu_bf16_units().values())


def check_amp(amp: str) -> None:
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")


def resolve(device: torch.device | str, amp: str, cpu_bf16: bool | None = None) -> str:
    """The precision ``amp`` gives on ``device``: "fp32", "bf16" or "fp16" (rules in the module docstring).
    ``cpu_bf16``: whether the CPU has bf16 units, where it is known from elsewhere (a run's env.json);
    default: this machine's (:func:`cpu_bf16_fast`)."""
    check_amp(amp)
    kind = torch.device(device).type
    if amp == "off":
        return "fp32"
    if kind == "cuda":
        return "fp16" if amp == "fp16" else "bf16"
    if kind == "cpu":
        if amp == "bf16" or (amp == "auto" and (cpu_bf16_fast() if cpu_bf16 is None else cpu_bf16)):
            return "bf16"
    return "fp32"


def autocast(device: torch.device | str, amp: str) -> AbstractContextManager:
    """The autocast context for ``amp`` on ``device`` (disabled where :func:`resolve` says fp32)."""
    precision = resolve(device, amp)
    kind = torch.device(device).type
    if precision == "fp32":
        return torch.autocast(device_type="cpu" if kind not in ("cpu", "cuda") else kind, enabled=False)
    return torch.autocast(device_type=kind, dtype=DTYPES[precision])
