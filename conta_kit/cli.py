"""``conta-kit``: run the notebook sequence headlessly with papermill into one new run folder.

    conta-kit run --preset smoke|default [-p key value ...] [--runs-root runs] [--name main]
    conta-kit baseline --preset default [-p key value ...] [--resume RUN_DIR]
    conta-kit conta --preset default --seeds 0 1 2 [-p rounds 3 ...] [--jobs 2] [--resume RUN_DIR]
    torchrun --nproc_per_node=4 -m conta_kit.cli conta --preset gpu --seeds 0      # DDP, one process per GPU
    conta-kit sweep --preset bench [--rhos 0.5 0.75 0.9 0.99] [--seeds 0 1 2] [-p rounds 3] [--jobs 2]
                    [--resume RUN_DIR]

Every notebook of the sequence (``notebooks/NN_*.ipynb`` in order, without the ``NN_bench_*`` benchmark
notebooks, which ``conta-kit sweep`` runs) is executed with the parameters
``preset``, ``run_dir``, ``interactive=False`` and ``overrides`` (the ``-p`` settings of the run
configuration, applied last); the executed copies, figures, ``metrics.json`` and an
``index.html`` land in ``<runs-root>/<timestamp>_<name>/``.
"""

from __future__ import annotations

import argparse
import ast
import html
import logging
import sys
import time
from pathlib import Path
from typing import Any

from . import distributed
from .config import PRESETS, RunCfg, resolve_device
from .io import Run, atomic_write_text, write_json
from .pipeline import run_baseline, run_seeds
from .pipeline.rounds import check_round0_source
from .pipeline.sweep import check_sweep_args, load_sweep, sweep_tables
from .summary import summary_table

log = logging.getLogger(__name__)
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# notebook parameters that are not RunCfg fields (everything else is validated by RunCfg.from_params)
NOTEBOOK_ONLY = frozenset({"interactive", "summary_dir", "ablation_dirs", "runs_root", "rhos", "seeds", "jobs"})
SWEEP_NOTEBOOK = "07_bench_confounding.ipynb"


def _literal(text: str) -> Any:
    """'0.75' -> 0.75, 'True' / 'true' -> True, 'None' / 'none' -> None, anything else stays a string."""
    low = {"true": True, "false": False, "none": None}
    if text.strip() in low:
        return low[text.strip()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


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
    if cfg.data_source == "scenes" and cfg.data.image_size < 16:
        raise ValueError(f"image_size must be >= 16 for the embedded benchmark, got {cfg.data.image_size}")
    return cfg


def run_notebooks(preset: str = "default", overrides: dict[str, Any] | None = None, *, runs_root: str | Path = "runs",
                  name: str = "main", notebooks: str | Path = NOTEBOOKS, progress: bool = True,
                  only: list[str] | None = None, run: Run | None = None, params: dict[str, Any] | None = None) -> Run:
    """Execute the notebook sequence (or the notebooks named in ``only``) into a new run folder (or into
    ``run``, e.g. to resume a sweep) and return it. ``params`` are recorded in the new run's params.json.

    Raises:
        ValueError: for an unknown preset or parameter (checked before anything runs).
        RuntimeError: naming the notebook (and its executed copy) when a cell fails.
    """
    import papermill as pm  # heavy (nbconvert, jupyter client): only the notebook commands need it

    overrides = dict(overrides or {})
    cfg = preflight(RunCfg.from_params(preset=preset, **{k: v for k, v in overrides.items()
                                                          if k not in NOTEBOOK_ONLY}))
    paths = [Path(notebooks) / n for n in only] if only else notebook_paths(notebooks)
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"notebook {p} does not exist")
    if run is None:
        run = Run.create(name, runs_root, params={"preset": preset, "overrides": overrides,
                                                  "resolved": cfg.to_dict(), **(params or {})},
                         seed=cfg.seed, device=cfg.device)
    index: list[dict[str, Any]] = []
    for nb in paths:
        out = run.path / nb.name
        t0 = time.perf_counter()
        params = {"preset": preset, "run_dir": str(run.path.resolve()), "interactive": False,
                  "overrides": {k: list(v) if isinstance(v, tuple) else v  # papermill writes lists, not tuples
                                for k, v in overrides.items() if k not in NOTEBOOK_ONLY},
                  **{k: v for k, v in overrides.items() if k in NOTEBOOK_ONLY}}
        try:
            pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3", language="python",
                                progress_bar=progress, cwd=str(nb.parent))
        except pm.PapermillExecutionError as e:
            index.append({"notebook": nb.name, "status": "failed", "seconds": time.perf_counter() - t0})
            write_json(run.layout.index_json, {"notebooks": index}, overwrite=True)
            raise RuntimeError(f"notebook {nb.name} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); "
                               f"executed copy: {out}") from e
        index.append({"notebook": nb.name, "status": "ok", "seconds": round(time.perf_counter() - t0, 2)})
    write_json(run.layout.index_json, {"notebooks": index, "figures": sorted(
        p.name for p in run.figures.glob("*.png"))}, overwrite=True)
    _write_html_index(run, index)
    return run


def _write_html_index(run: Run, index: list[dict[str, Any]]) -> None:
    rows = "".join(f"<tr><td><a href='{html.escape(i['notebook'])}'>{html.escape(i['notebook'])}</a></td>"
                   f"<td>{i['status']}</td><td>{i['seconds']}</td></tr>" for i in index)
    figs = "".join(f"<figure><img src='figures/{html.escape(p.name)}' style='max-width:100%'>"
                   f"<figcaption>{html.escape(p.stem)}</figcaption></figure>"
                   for p in sorted(run.figures.glob("*.png")))
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(run.path.name)}</title>"
            f"<h1>{html.escape(run.path.name)}</h1><table border=1><tr><th>notebook</th><th>status</th>"
            f"<th>seconds</th></tr>{rows}</table><p><a href='metrics.json'>metrics.json</a> · "
            f"<a href='params.json'>params.json</a> · <a href='env.json'>env.json</a></p>{figs}")
    atomic_write_text(run.layout.index_html, page, overwrite=True)


def _baseline(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.preset_given, args.preset = args.preset is not None, args.preset or "default"
    try:
        overrides = {k: _literal(v) for k, v in args.param}
        if args.resume:  # the stopped run's own settings; a conflicting command line is refused
            run = _baseline_run(args.resume)
            p = run.params
            asked = {k: v for k, v in overrides.items() if p["overrides"].get(k, object()) != v}
            if asked or (args.preset_given and args.preset != p["preset"]):
                raise ValueError(f"{run.path} was made with preset {p['preset']!r} and overrides {p['overrides']}; "
                                 f"--resume continues it with those (refused: --preset {args.preset!r}, -p {asked})")
            cfg = preflight(RunCfg.from_params(preset=p["preset"], **p["overrides"]))
            if "baseline" in run.metrics:
                print(f"{run.path} is finished; nothing to resume")
                return 0
        else:
            cfg = preflight(RunCfg.from_params(preset=args.preset, **overrides))
            run = Run.create("baseline", args.runs_root, params={"preset": args.preset, "overrides": overrides,
                                                                 "resolved": cfg.to_dict()}, seed=cfg.seed,
                             device=cfg.device)
        m = run_baseline(cfg, run, progress=not args.no_progress, resume=bool(args.resume))
    except (ValueError, FileNotFoundError) as e:
        print(f"conta-kit: error: {e}", file=sys.stderr)
        return 2
    print(f"run folder: {run.path}")
    print(f"seed mIoU {m['seed']['miou_fixed']:.3f} (best-on-val threshold: {m['seed']['miou_best']:.3f}), "
          f"pseudo-mask mIoU {m['pseudo']['miou']:.3f}, segmentation mIoU {m['segmentation']['miou']:.3f}, "
          f"{m['timing']['total_s']:.0f} s")
    return 0


def _baseline_run(path: str) -> Run:
    """The run folder of a `conta-kit baseline` run, or a ValueError saying what ``path`` is instead."""
    folder = Path(path)
    if not (folder / "params.json").is_file():
        raise ValueError(f"{folder} is not a run folder (no params.json)")
    run = Run(folder)
    p = run.params
    if "seeds" in p or "rhos" in p.get("overrides", {}) or run.layout.index_json.exists() \
            or not {"preset", "overrides", "resolved"} <= set(p):
        raise ValueError(f"{folder} is not a `conta-kit baseline` run")
    return run


def _conta(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # under torchrun: join the process group; every rank trains (DDP), rank 0 creates and writes the run
        if distributed.init_from_env(resolve_device(RunCfg.from_params(
                preset=args.preset, **{k: _literal(v) for k, v in args.param}).device)):
            if args.jobs > 1 or args.round0_from:
                raise ValueError("with torchrun, run one process per GPU: --jobs 1 and no --round0-from")
        multi, rank0 = distributed.is_distributed(), distributed.rank() == 0
        if args.resume:  # the stopped run's own settings, not the command line's
            run = Run(args.resume)
            p = run.params
            if "seeds" not in p:
                raise ValueError(f"{run.path} is not a `conta-kit conta` run (params.json has no seeds)")
            preset, overrides, seeds, round0 = p["preset"], p["overrides"], p["seeds"], p.get("round0_from")
            cfg = RunCfg.from_params(preset=preset, **overrides)
        else:
            overrides, seeds, round0 = {k: _literal(v) for k, v in args.param}, args.seeds, args.round0_from
            cfg = preflight(RunCfg.from_params(preset=args.preset, **overrides))
            if round0:
                check_round0_source(cfg, round0, seeds)  # before any folder is made
            path = None
            if rank0:
                path = str(Run.create(args.name, args.runs_root, params={
                    "preset": args.preset, "overrides": overrides, "seeds": seeds, "round0_from": round0,
                    "resolved": cfg.to_dict(), **({"world_size": distributed.world_size()} if multi else {})},
                    seed=cfg.seed, device=cfg.device).path)
            run = Run(distributed.broadcast_object(path))
        t0 = time.perf_counter()
        summary = run_seeds(cfg, run, seeds, jobs=args.jobs, progress=not args.no_progress,
                            round0_from=round0)
    except (ValueError, FileNotFoundError) as e:
        print(f"conta-kit: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    if rank0:
        print(f"run folder: {run.path}  ({time.perf_counter() - t0:.0f} s)")
        print(summary_table(summary))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.resume:  # the stopped sweep's own settings, not the command line's
            run = Run(args.resume)
            p = run.params
            if "rhos" not in p.get("overrides", {}):
                raise ValueError(f"{run.path} is not a `conta-kit sweep` run (params.json has no rhos)")
            preset, overrides = p["preset"], dict(p["overrides"])
        else:
            check_sweep_args(args.rhos, args.seeds, args.jobs)  # before a run folder is made
            run, preset = None, args.preset
            overrides = {**{k: _literal(v) for k, v in args.param}, "rhos": args.rhos, "seeds": args.seeds,
                         "jobs": args.jobs}
        t0 = time.perf_counter()
        run = run_notebooks(preset, overrides, runs_root=args.runs_root, name=args.name, progress=not args.no_progress,
                            only=[SWEEP_NOTEBOOK], run=run)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"conta-kit: error: {e}", file=sys.stderr)
        return 2
    print(f"run folder: {run.path}  ({time.perf_counter() - t0:.0f} s)")
    print(sweep_tables(load_sweep(run.path)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conta-kit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute the notebook sequence into a new run folder")
    r.add_argument("--preset", default="default", choices=PRESETS)
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="override a parameter, e.g. -p cooccurrence 0.75 (repeatable)")
    r.add_argument("--runs-root", default="runs", help="folder that receives the run folder (default: runs)")
    r.add_argument("--name", default="main", help="run name (default: main)")
    r.add_argument("--notebooks", default=str(NOTEBOOKS), help="folder of numbered notebooks")
    r.add_argument("--no-progress", action="store_true")
    bl = sub.add_parser("baseline", help="run the baseline pipeline (CONTA round 0) into a run folder")
    bl.add_argument("--preset", default=None, choices=PRESETS, help="default: 'default' (with --resume: the run's)")
    bl.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    bl.add_argument("--runs-root", default="runs")
    bl.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped baseline run in RUN_DIR")
    bl.add_argument("--no-progress", action="store_true")
    co = sub.add_parser("conta", help="CONTA rounds 0..T (round 0 = baseline) over seeds, with a mean/std summary")
    co.add_argument("--preset", default="default", choices=PRESETS)
    co.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="override a parameter, e.g. -p rounds 3 -p fusion input (repeatable)")
    co.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    co.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (default 1)")
    co.add_argument("--runs-root", default="runs")
    co.add_argument("--name", default="conta")
    co.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run in RUN_DIR")
    co.add_argument("--round0-from", metavar="RUN_DIR", help="reuse round 0 (the baseline) of RUN_DIR's seeds "
                    "(same seed, data and baseline settings), e.g. to ablate CONTA's options")
    co.add_argument("--no-progress", action="store_true")
    sw = sub.add_parser("sweep", help="the confounding benchmark: baseline, CONTA, W-OoD and both over rho and "
                        "seeds (runs notebook 07)")
    sw.add_argument("--preset", default="bench", choices=PRESETS)
    sw.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="override a parameter, e.g. -p rounds 1 -p pool mined (repeatable)")
    sw.add_argument("--rhos", type=float, nargs="+", default=[0.5, 0.75, 0.9, 0.99])
    sw.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sw.add_argument("--jobs", type=int, default=2, help="(rho, arm, seed) jobs in parallel processes (default 2)")
    sw.add_argument("--runs-root", default="runs")
    sw.add_argument("--name", default="sweep")
    sw.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped sweep in RUN_DIR")
    sw.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "baseline":
        return _baseline(args)
    if args.command == "conta":
        return _conta(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {k: _literal(v) for k, v in args.param}
    t0 = time.perf_counter()
    try:
        run = run_notebooks(args.preset, overrides, runs_root=args.runs_root, name=args.name,
                            notebooks=args.notebooks, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"conta-kit: error: {e}", file=sys.stderr)
        return 2
    print(f"run folder: {run.path}  ({time.perf_counter() - t0:.1f} s)")
    print(f"open {run.layout.index_html} for the figures; metrics in {run.layout.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
