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
import logging
import math
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .layout import RoundLayout, RunLayout
from .provenance import environment

__all__ = ["RoundLayout", "RunLayout", "Run", "open_run", "atomic_write_bytes", "atomic_write_text",
           "atomic_torch_save", "write_json", "read_json", "to_jsonable", "load_torch", "check_writable"]

log = logging.getLogger(__name__)
# free space a run needs before it starts (MiB); CONTA_KIT_MIN_FREE_MB overrides it
MIN_FREE_MB = 512


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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would give: a shared run folder stays readable
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # e.g. "No space left on device" from write(): say which file
            raise type(e)(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_torch(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with a clear error for a file that is truncated, empty, not a
    torch file or holds code (the kit never unpickles code).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming ``path`` when it cannot be read as a checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, KeyError, AttributeError) as e:
        size = path.stat().st_size
        raise ValueError(f"{path}: not a readable torch checkpoint ({size} bytes; {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'empty or truncated file'}); delete it "
                         f"to redo that step, or restore it") from e


def check_writable(root: str | Path, min_free_mb: float | None = None) -> Path:
    """Check, before any work, that a run can be written under ``root``: its nearest existing ancestor is a
    writable folder with ``min_free_mb`` MiB free (default :data:`MIN_FREE_MB` or $CONTA_KIT_MIN_FREE_MB).
    Nothing is created.

    Raises:
        NotADirectoryError, PermissionError, OSError (ENOSPC): naming the folder.
    """
    import errno

    root = Path(root)
    probe = root
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "runs root must be a folder, not a file", str(probe))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "cannot write here (read-only or not yours)", str(probe))
    need = float(os.environ.get("CONTA_KIT_MIN_FREE_MB", MIN_FREE_MB) if min_free_mb is None else min_free_mb)
    free = shutil.disk_usage(probe).free / 2**20
    if free < need:
        raise OSError(errno.ENOSPC, f"only {free:.0f} MiB free, a run needs {need:.0f} MiB "
                      "(set CONTA_KIT_MIN_FREE_MB to change the floor)", str(probe))
    return root


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
        root = check_writable(root)
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
        try:
            run.figures.mkdir()
            write_json(run.layout.params, params or {})
            write_json(run.layout.env, environment(seed=seed, device=device))
            write_json(run.layout.metrics, {})
        except BaseException:  # e.g. the disk filled up: no half-made run folder is left behind
            shutil.rmtree(path, ignore_errors=True)
            raise
        log.info("new run folder %s", path)
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

    def save_figure(self, fig: Any, name: str, *, dpi: int = 110, overwrite: bool = False) -> None:
        """Save a matplotlib Figure as ``run.layout.figure(name)`` (``figures/<name>.png``) atomically; refuses to
        overwrite unless told (a resumed sweep redraws its own figures). Returns nothing, so a notebook cell that
        ends with it shows the figure and no path."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        self.figures.mkdir(exist_ok=True)
        atomic_write_bytes(self.layout.figure(name), buf.getvalue(), overwrite=overwrite)


def open_run(run_dir: str | Path | None, name: str, *, root: str | Path = "runs",
             params: dict[str, Any] | None = None, seed: int | None = None, device: str | None = None) -> Run:
    """The run a notebook writes into: ``run_dir`` if given (it must exist), else a new run named ``name``."""
    if run_dir:
        return Run(run_dir)
    return Run.create(name, root, params=params, seed=seed, device=device)
