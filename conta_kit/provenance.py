"""Where a result came from: library versions, Python, platform, git commit, seed and device (``env.json``)."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

_TRACKED = ("torch", "torchvision", "numpy", "captum", "papermill", "matplotlib", "seaborn", "pillow", "conta_kit")


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit (with ``-dirty`` when the tree has changes), or None outside a repository."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(seed: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Library versions, Python, platform, seed, device and git commit, as a JSON-ready dict."""
    versions = {}
    for name in _TRACKED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "versions": versions, "seed": seed, "device": device, "git_commit": git_commit()}
    from .data.scenes import SCENES_VERSION

    info["scenes_version"] = SCENES_VERSION  # what layout "prior" means in this run (see data/scenes.py)
    if device is not None:  # what "auto" became on this machine, beside what was asked for
        try:
            from .config import resolve_device

            info["device_requested"], info["device"] = device, resolve_device(device)
        except (ImportError, ValueError):
            pass
    try:
        import torch  # as above: recorded when installed

        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
        from .precision import cpu_bf16_fast, cpu_bf16_units

        # what amp="auto" does on this CPU: bf16 where it has bf16 matrix units (CONTA_KIT_CPU_BF16 overrides)
        info["cpu_bf16"] = {**cpu_bf16_units(), "auto_uses_bf16": cpu_bf16_fast()}
    except ImportError:  # pragma: no cover
        pass
    return info
