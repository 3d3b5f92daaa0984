"""Shared, seeded, offline fixtures."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import write_voc
from PIL import Image  # noqa: F401

os.environ.setdefault("MPLBACKEND", "Agg")  # unit tests only; papermill runs get their own kernel
# amp="auto" is bf16 on a CPU with bf16 units: the suite's exact comparisons (resume, DDP, CAM paths) must not
# depend on the machine it runs on, so "auto" means fp32 here (kernels and subprocesses inherit this); the
# bf16 path is tested by name and with this variable set to 1 (tests/test_precision.py).
os.environ["CONTA_KIT_CPU_BF16"] = "0"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# A terminated test run (a CI time limit, a user's kill) ends as an interrupted one, so the tests' finally blocks
# and fixtures still stop what they started in sessions of their own (JupyterLab, its kernels, worker pools).
signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    """Three 20x24 images with masks: classes {1}, {1, 15}, {7} and an ignore border."""
    rng = np.random.default_rng(0)
    items = {}
    for i, classes in enumerate([(1,), (1, 15), (7,)]):
        img = rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
        mask = np.zeros((20, 24), np.uint8)
        for j, c in enumerate(classes):
            mask[2 + 8 * j : 8 + 8 * j, 3:10] = c
        mask[0, :] = 255
        items[f"2007_00000{i}"] = (img, mask)
    return write_voc(tmp_path / "VOC2012", items)
