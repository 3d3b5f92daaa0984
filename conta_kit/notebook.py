"""One call that sets a notebook up: its configuration, its run folder, the CONTA loop trained (or read
back) and the data, so that every notebook's code is the story it tells.

    nb = ck.notebook_setup("02_cams", preset=preset, smoke=smoke, ..., run_dir=run_dir)
    nb.history[0]["seed"]["miou_fixed"], nb.seed.round(1).confounders, nb.splits["val"], nb.names
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .config import RunCfg
from .data.splits import load_splits
from .io import Run, RunLayout, open_run
from .pipeline.rounds import run_conta, seed_run
from .progress import quiet


@dataclass
class Notebook:
    """What a notebook works with.

    Attributes:
        cfg: the resolved configuration. run: the run folder the notebook writes into.
        seed: the layout of the seed folder the CONTA loop writes (``run/seed_<s>/``); None when not trained.
        splits: the datasets by split name. names: the class names.
        history: every round's metrics (round 0 = the baseline); empty when the loop was not run.
        arms: the metrics of the extra arms that ran beside the rounds (``"oracle"``, ``"conta_gt"``).
    """

    cfg: RunCfg
    run: Run
    seed: RunLayout | None
    splits: dict[str, Dataset]
    names: list[str]
    history: list[dict[str, Any]]
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def last(self) -> int:
        """The index of the last round."""
        return len(self.history) - 1

    def rounds_line(self) -> list[str]:
        """One short line per round: its seed mIoU at the fixed threshold."""
        return [f"round {m['round']}: seed mIoU {m['seed']['miou_fixed']:.3f}" for m in self.history]


def headless() -> bool:
    """True where nobody can see a widget or a live progress bar: outside IPython, in a terminal IPython, or in a
    kernel driven by a headless executor (papermill, nbclient, nbconvert send their execute requests with
    ``allow_stdin=False``; JupyterLab, Notebook and VS Code allow stdin), or when ipywidgets is missing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return True
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None or not getattr(kernel, "_allow_stdin", False):
        return True
    try:
        import ipywidgets  # noqa: F401 - only whether it is there
    except ImportError:
        return True
    return False


def _log_to_output() -> None:
    """In a headless run: the kit's INFO log (epochs, rounds) into the cell output, as plain text that reads the
    same in the executed notebook and streams to the terminal of ``conta-kit run``."""
    kit = logging.getLogger("conta_kit")
    if not any(getattr(h, "_kit", False) for h in kit.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._kit = True  # type: ignore[attr-defined]
        kit.addHandler(handler)
        kit.setLevel(logging.INFO)


def notebook_setup(name: str, *, preset: str = "default", smoke: bool = False, overrides: dict[str, Any] | None = None,
                   run_dir: str | Path | None = None, runs_root: str | Path = "runs", train: bool = True,
                   progress: bool | None = None, **params: Any) -> Notebook:
    """Resolve the configuration (``params``, then ``overrides``: what ``conta-kit run -p`` passes, last),
    open ``run_dir`` or make a new run folder ``<runs_root>/<stamp>_<name>``, train the CONTA loop into its
    seed folder on first use (``train=False``: skip it) and load the splits.

    Args:
        name: the run name when a new folder is made (e.g. ``"02_cams"``).
        preset, smoke: the preset (``smoke=True`` means ``"smoke"``).
        overrides: any RunCfg field by its flat name; wins over ``params``.
        progress: live progress bars (None: where a person is looking, see :func:`headless`; a headless run
            logs epochs and rounds as plain text instead).
        **params: the notebook's own parameters (``seed``, ``device``, ``rounds``, ...); None keeps the preset's.
    """
    if progress is None:
        progress = not headless()
    if not progress:
        _log_to_output()
        quiet()
    cfg = RunCfg.from_params(preset="smoke" if smoke else preset, **(params | dict(overrides or {})))
    run = open_run(run_dir, name, root=runs_root, params=cfg.to_dict(), seed=cfg.seed, device=cfg.device)
    seed, history, arms = None, [], {}
    if train:
        seed_dir = seed_run(run, cfg)
        history = run_conta(cfg, seed_dir, progress=progress)
        seed = seed_dir.layout
        conta = seed_dir.metrics.get("conta", {})
        arms = {k: conta[k] for k in ("oracle", "conta_gt") if conta.get(k)}
    splits = load_splits(cfg)
    return Notebook(cfg, run, seed, splits, list(splits["train"].class_names), history, arms)
