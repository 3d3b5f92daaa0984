"""The notebook sequence run headlessly with papermill into a run folder (what ``conta-kit run`` and
``conta-kit sweep`` execute): the checks made before any folder exists, the per-notebook index that makes a
stopped run resumable, and the run's ``index.html``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .config import RunCfg
from .io import Run, atomic_write_text, read_json, write_json

log = logging.getLogger(__name__)
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# notebook parameters that are not RunCfg fields (everything else is validated by RunCfg.from_params)
NOTEBOOK_ONLY = frozenset({"interactive", "summary_dir", "ablation_dirs", "runs_root", "rhos", "seeds", "jobs",
                           "photos_dir"})
SWEEP_NOTEBOOK = "08_bench_confounding.ipynb"



def notebook_paths(folder: str | Path = NOTEBOOKS) -> list[Path]:
    folder = Path(folder)
    paths = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if not p.name[3:].startswith("bench_"))
    if not paths:
        raise FileNotFoundError(f"no numbered notebooks (NN_*.ipynb) in {folder}")
    return paths


def preflight(cfg: RunCfg) -> RunCfg:
    """The checks that need the model registries or torch, made before any run folder exists: the device,
    the backbone and the segmenter (RunCfg itself checks every type and range)."""
    from .config import resolve_device
    from .models import BACKBONES, SEGMENTERS

    resolve_device(cfg.device)
    if cfg.baseline.backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {cfg.baseline.backbone!r}")
    if cfg.baseline.segmenter not in SEGMENTERS:
        raise ValueError(f"segmenter must be one of {sorted(SEGMENTERS)}, got {cfg.baseline.segmenter!r}")
    if cfg.data_source != "scenes" and not Path(cfg.data_root).is_dir():
        raise FileNotFoundError(f"data_root {cfg.data_root}: no such dataset folder (data_source={cfg.data_source!r})")
    if cfg.data_source == "scenes" and cfg.data.image_size < 16:
        raise ValueError(f"image_size must be >= 16 for the embedded benchmark, got {cfg.data.image_size}")
    return cfg


def check_notebook_params(params: dict[str, Any]) -> None:
    """Type and range checks of the notebook-only parameters (the rest are RunCfg fields)."""
    for k, v in params.items():
        if k == "interactive" and not isinstance(v, bool):
            raise ValueError(f"parameter interactive must be true or false, got {v!r}")
        if k == "jobs" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"parameter jobs must be an integer >= 1, got {v!r}")
        if k == "seeds" and (not isinstance(v, (list, tuple)) or not v or len(set(v)) != len(v)
                             or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)):
            raise ValueError(f"parameter seeds must be a non-empty list of distinct integers, got {v!r}")
        if k == "rhos" and (not isinstance(v, (list, tuple)) or not v or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in v)):
            raise ValueError(f"parameter rhos must be a non-empty list of numbers in [0, 1], got {v!r}")
        if k in ("summary_dir", "runs_root", "photos_dir") and v is not None and not isinstance(v, str):
            raise ValueError(f"parameter {k} must be a folder path, got {v!r}")
        if k == "photos_dir" and v is not None and not Path(v).is_dir():
            raise FileNotFoundError(f"photos_dir {v}: no such folder")
        if k == "ablation_dirs" and v is not None and (not isinstance(v, (list, tuple))
                                                       or not all(isinstance(x, str) for x in v)):
            raise ValueError(f"parameter ablation_dirs must be a list of folder paths, got {v!r}")


def run_notebooks(preset: str = "default", overrides: dict[str, Any] | None = None, *, runs_root: str | Path = "runs",
                  name: str = "main", notebooks: str | Path = NOTEBOOKS, progress: bool = True,
                  only: list[str] | None = None, run: Run | None = None, params: dict[str, Any] | None = None,
                  command: str = "run") -> Run:
    """Execute the notebook sequence (or the notebooks named in ``only``) into a new run folder (or into
    ``run`` to resume it: the notebooks it finished are skipped, the files a stopped notebook had written are
    removed before it runs again) and return it. ``params`` are recorded in the new run's params.json.
    ``index.json`` is updated after every notebook and ``index.html`` is written on every exit.

    Raises:
        ValueError: for an unknown preset or parameter (checked before anything runs).
        RuntimeError: naming the notebook (and its executed copy) when a cell fails.
    """
    import papermill as pm  # heavy (nbconvert, jupyter client): only the notebook commands need it

    overrides = dict(overrides or {})
    check_notebook_params({k: v for k, v in overrides.items() if k in NOTEBOOK_ONLY})
    cfg = preflight(RunCfg.from_params(preset=preset, **{k: v for k, v in overrides.items()
                                                          if k not in NOTEBOOK_ONLY}))
    paths = [Path(notebooks) / n for n in only] if only else notebook_paths(notebooks)
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"notebook {p} does not exist")
    done: dict[str, dict[str, Any]] = {}
    if run is None:
        run = Run.create(name, runs_root, params={"command": command, "preset": preset, "overrides": overrides,
                                                  "resolved": cfg.to_dict(), **(params or {})},
                         seed=cfg.seed, device=cfg.device)
    elif run.layout.index_json.exists():
        done = {e["notebook"]: e for e in read_json(run.layout.index_json).get("notebooks", [])}
    index = [done[p.name] for p in paths if done.get(p.name, {}).get("status") == "ok"]
    try:
        for nb in paths:
            if done.get(nb.name, {}).get("status") == "ok":
                log.info("%s finished earlier; skipped", nb.name)
                continue
            _clean_stopped_notebook(run, done.get(nb.name))
            out = run.path / nb.name
            entry = {"notebook": nb.name, "status": "running", "files_before": _run_files(run)}
            index.append(entry)
            write_json(run.layout.index_json, {"notebooks": index}, overwrite=True)
            t0 = time.perf_counter()
            params = {"preset": preset, "run_dir": str(run.path.resolve()), "interactive": False,
                      "overrides": {k: list(v) if isinstance(v, tuple) else v  # papermill writes lists
                                    for k, v in overrides.items() if k not in NOTEBOOK_ONLY},
                      **{k: v for k, v in overrides.items() if k in NOTEBOOK_ONLY}}
            if progress:  # the notebook's own log (epochs, rounds) streams below this line
                log.info("[%d/%d] %s", paths.index(nb) + 1, len(paths), nb.name)
            try:
                pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3", language="python",
                                    progress_bar=False, log_output=progress, cwd=str(nb.parent))
            except pm.PapermillExecutionError as e:
                entry.update(status="failed", seconds=round(time.perf_counter() - t0, 2))
                raise RuntimeError(f"notebook {nb.name} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); "
                                   f"executed copy: {out}; fix it and continue with --resume {run.path}") from e
            entry.update(status="ok", seconds=round(time.perf_counter() - t0, 2))
            entry.pop("files_before")
            write_json(run.layout.index_json, {"notebooks": index}, overwrite=True)
    finally:
        for e in index:  # interrupted (Ctrl-C, kill): --resume runs it again
            if e["status"] == "running":
                e["status"] = "stopped"
        figures = sorted(p.name for p in run.figures.glob("*.png"))
        write_json(run.layout.index_json, {"notebooks": index, "figures": figures}, overwrite=True)
        _write_html_index(run, index)
    return run


def _run_files(run: Run) -> list[str]:
    """The files at a run folder's top level and in figures/ (what a notebook writes besides seed folders)."""
    return sorted(str(p.relative_to(run.path)) for p in [*run.path.iterdir(), *run.figures.glob("*")]
                  if p.is_file())


def _clean_stopped_notebook(run: Run, entry: dict[str, Any] | None) -> None:
    """Remove what a stopped or failed notebook wrote (files that were not there before it started), so that
    it can run again; its training folders resume by themselves."""
    if not entry or "files_before" not in entry:
        return
    keep = set(entry["files_before"]) | {"index.json", "index.html", "metrics.json", "params.json", "env.json"}
    for rel in _run_files(run):
        if rel not in keep:
            log.info("removing %s, written by the stopped %s", rel, entry["notebook"])
            (run.path / rel).unlink()


def _write_html_index(run: Run, index: list[dict[str, Any]]) -> None:
    from .report.index_page import build  # matplotlib-free, but only the notebook runner needs it

    atomic_write_text(run.layout.index_html, build(run, index), overwrite=True)


def finished(run: Run, notebooks: list[str]) -> bool:
    """Whether every one of ``notebooks`` ran to the end in ``run`` (its index.json says so)."""
    if not run.layout.index_json.exists():
        return False
    status = {e["notebook"]: e.get("status") for e in read_json(run.layout.index_json).get("notebooks", [])}
    return all(status.get(n) == "ok" for n in notebooks)
