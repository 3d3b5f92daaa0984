"""Run folders and atomic artifact writes.

A run lives in ``<root>/<YYYYmmdd-HHMMSS>_<name>/`` with ``params.json`` (the resolved parameters),
``env.json`` (library versions, seed, device, git commit), ``metrics.json`` and ``figures/``. A new run
never reuses an existing folder, and every file is written to a temporary sibling first and then renamed
into place, so a crash never leaves a half-written artifact.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

_TRACKED = ("torch", "torchvision", "numpy", "captum", "papermill", "matplotlib", "seaborn", "pillow", "conta_kit")


def _writer() -> bool:
    """False on ranks other than 0 of a process group (torchrun): rank 0 alone writes files."""
    dist = sys.modules.get("torch.distributed")
    return not (dist is not None and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def atomic_write_bytes(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename (on rank 0 only, inside a
    process group of several).

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if not _writer():
        return path
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_torch_save(path: str | Path, obj: Any, *, overwrite: bool = True) -> Path:
    """``torch.save`` through :func:`atomic_write_bytes` (checkpoints and tensor artifacts)."""
    import torch  # io serves torch-free tools too (the COCO converter, the CLI's notebook runner)

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, numpy values, paths and tuples to JSON types; NaN and inf become None."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # torch / numpy arrays and scalars
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any, *, overwrite: bool = False) -> Path:
    """Atomically write ``obj`` as strict JSON (see :func:`to_jsonable`)."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_text(path, text + "\n", overwrite=overwrite)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


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
    try:
        import torch  # as above: recorded when installed

        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return info


class RoundLayout:
    """The files of one round's folder (``round_<t>/``; the baseline command writes round 0 into the run
    folder itself)::

        metrics.json                          the round is done when it exists
        checkpoints/<stage>/last.pt           stage: classifier, classifier_ft (W-OoD or plain), segmenter
        artifacts/<name>                      pseudo_masks.pt, attention.pt, wood_prototypes.pt, mined_ood.csv
        x_m.pt  confounders.pt                the next round's masks (split -> (N, H, W) uint8) and C
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RoundLayout({str(self.path)!r})"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def done(self) -> bool:
        return self.metrics.exists()

    def checkpoint_dir(self, stage: str) -> Path:
        return self.path / "checkpoints" / stage

    def checkpoint(self, stage: str) -> Path:
        return self.checkpoint_dir(stage) / "last.pt"

    @property
    def final_classifier(self) -> Path:
        """The round's classifier after its last stage: the fine-tuned one when the round has it."""
        ft = self.checkpoint("classifier_ft")
        return ft if ft.exists() else self.checkpoint("classifier")

    def artifact(self, name: str) -> Path:
        return self.path / "artifacts" / name

    @property
    def x_m(self) -> Path:
        return self.path / "x_m.pt"

    @property
    def confounders(self) -> Path:
        return self.path / "confounders.pt"


def _indexed(path: Path, prefix: str, cast: Callable[[str], Any]) -> list[Any]:
    return sorted(cast(p.name[len(prefix):]) for p in path.glob(f"{prefix}*") if p.is_dir())


class RunLayout:
    """Every path of a run folder, named once::

        params.json  env.json  metrics.json  figures/<name>.png  index.html  index.json  report.md
        seed_<s>/                 a run folder of one seed (``conta-kit conta``, notebooks)
        round_<t>/                a round (:class:`RoundLayout`)
        oracle/                   the oracle's round (the baseline trained at rho = chance)
        conta_gt/                 CONTA with ground-truth ingredients (C and x_m from the true masks)
        rho_<rho>/<arm>/seed_<s>/ a cell of the confounding sweep
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunLayout({str(self.path)!r})"

    @property
    def params(self) -> Path:
        return self.path / "params.json"

    @property
    def env(self) -> Path:
        return self.path / "env.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def index_html(self) -> Path:
        return self.path / "index.html"

    @property
    def index_json(self) -> Path:
        return self.path / "index.json"

    @property
    def report(self) -> Path:
        """``report.md`` (notebook 06)."""
        return self.path / "report.md"

    @property
    def sweep_tables(self) -> Path:
        """``sweep_tables.md`` (notebook 07)."""
        return self.path / "sweep_tables.md"

    def figure(self, name: str) -> Path:
        return self.figures / f"{name}.png"

    def seed(self, seed: int) -> RunLayout:
        return RunLayout(self.path / f"seed_{seed}")

    def seeds(self) -> list[int]:
        """The seeds with a folder here, in order."""
        return _indexed(self.path, "seed_", int)

    def round(self, t: int) -> RoundLayout:
        return RoundLayout(self.path / f"round_{t}")

    @property
    def oracle(self) -> RoundLayout:
        """The interventional oracle: round 0's recipe with the classifier trained at rho = chance."""
        return RoundLayout(self.path / "oracle")

    @property
    def conta_gt(self) -> RoundLayout:
        """CONTA's ceiling arm: one adjusted round over ground-truth C and x_m."""
        return RoundLayout(self.path / "conta_gt")

    def rounds(self) -> list[int]:
        """The rounds with a folder here (finished or not), in order."""
        return _indexed(self.path, "round_", int)

    def sweep_arm(self, rho: float, arm: str) -> RunLayout:
        return RunLayout(self.path / f"rho_{float(rho):g}" / arm)

    def rhos(self) -> list[float]:
        """The rhos of a sweep folder, in order."""
        return _indexed(self.path, "rho_", float)



class Run:
    """A run folder. Create a new one with :meth:`create`, open an existing one with ``Run(path)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"run folder {self.path} does not exist")
        self.layout = RunLayout(self.path)
        self.figures = self.layout.figures

    @classmethod
    def create(cls, name: str, root: str | Path = "runs", *, params: dict[str, Any] | None = None,
               seed: int | None = None, device: str | None = None) -> Run:
        """Make ``<root>/<timestamp>_<name>/`` (a suffix is added rather than reuse a folder)."""
        if not name or any(c in name for c in "/\\") or name.startswith("."):
            raise ValueError(f"run name must be a plain folder name, got {name!r}")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            path = root / (f"{stamp}_{name}" + (f"-{n}" if n else ""))
            try:
                path.mkdir()  # exclusive: fails if the folder exists
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover
            raise RuntimeError(f"could not create a new run folder under {root}")
        run = cls(path)
        run.figures.mkdir()
        write_json(run.layout.params, params or {})
        write_json(run.layout.env, environment(seed=seed, device=device))
        write_json(run.layout.metrics, {})
        return run

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def params(self) -> dict[str, Any]:
        return read_json(self.layout.params)

    @property
    def metrics(self) -> dict[str, Any]:
        p = self.layout.metrics
        return read_json(p) if p.exists() else {}

    def log_metrics(self, section: str, values: dict[str, Any]) -> None:
        """Set ``metrics[section] = values`` in metrics.json (atomic read-modify-write)."""
        metrics = self.metrics
        metrics[section] = values
        write_json(self.layout.metrics, metrics, overwrite=True)

    def save_figure(self, fig: Any, name: str, *, dpi: int = 110, overwrite: bool = False) -> Path:
        """Save a matplotlib Figure as ``figures/<name>.png`` atomically; refuses to overwrite unless told
        (a resumed sweep redraws its own figures)."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        self.figures.mkdir(exist_ok=True)
        return atomic_write_bytes(self.figures / f"{name}.png", buf.getvalue(), overwrite=overwrite)


def open_run(run_dir: str | Path | None, name: str, *, root: str | Path = "runs",
             params: dict[str, Any] | None = None, seed: int | None = None, device: str | None = None) -> Run:
    """The run a notebook writes into: ``run_dir`` if given (it must exist), else a new run named ``name``."""
    if run_dir:
        return Run(run_dir)
    return Run.create(name, root, params=params, seed=seed, device=device)
