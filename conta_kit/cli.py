"""``conta-kit``: run the notebook sequence headlessly with papermill into one new run folder.

    conta-kit run --preset smoke|default [-p key value ...] [--runs-root runs] [--name main] [--resume RUN_DIR]
    conta-kit baseline --preset default [-p key value ...] [--resume RUN_DIR]
    conta-kit conta --preset default --seeds 0 1 2 [-p rounds 3 ...] [--jobs 2] [--resume RUN_DIR]
    torchrun --nproc_per_node=4 -m conta_kit.cli conta --preset gpu --seeds 0      # DDP, one process per GPU
    conta-kit sweep --preset bench [--rhos 0.5 0.75 0.9 0.99] [--seeds 0 1 2] [-p rounds 3] [--jobs 2]
                    [--resume RUN_DIR]

Every notebook of the sequence (``notebooks/NN_*.ipynb`` in order, without the ``NN_bench_*`` benchmark
notebooks, which ``conta-kit sweep`` runs) is executed with the parameters
``preset``, ``run_dir``, ``interactive=False`` and ``overrides`` (the ``-p`` settings of the run
configuration, applied last); the executed copies, figures, ``metrics.json`` and an
``index.html`` land in ``<runs-root>/<timestamp>_<name>/`` (:mod:`conta_kit.runner`).

Every option is checked before a run folder exists; ``--resume`` continues a stopped run of the same command
with the run's own settings; errors are one line, ``conta-kit: error: ...``, exit 2 (``--debug``: traceback).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import distributed
from .config import PRESETS, RunCfg, resolve_device
from .io import Run, check_writable, read_json, to_jsonable
from .pipeline import run_baseline, run_seeds
from .pipeline.rounds import check_round0_source
from .pipeline.sweep import check_sweep_args, load_sweep, sweep_tables
from .runner import NOTEBOOKS, SWEEP_NOTEBOOK, finished, notebook_paths, preflight, run_notebooks
from .summary import summary_table

log = logging.getLogger(__name__)


def _literal(text: str) -> Any:
    """'0.75' -> 0.75, 'True' / 'true' -> True, 'None' / 'none' -> None, anything else stays a string."""
    low = {"true": True, "false": False, "none": None}
    if text.strip() in low:
        return low[text.strip()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


_KINDS = {"run": "conta-kit run", "baseline": "conta-kit baseline", "conta": "conta-kit conta",
          "sweep": "conta-kit sweep"}


def run_kind(params: dict[str, Any], folder: Path) -> str | None:
    """Which command made a run folder: params.json's ``command`` (recorded since it exists) or, for older
    runs, what its params.json and index.json show."""
    if params.get("command") in _KINDS:
        return params["command"]
    if not isinstance(params.get("overrides"), dict) or "preset" not in params:
        return None
    if "rhos" in params["overrides"]:
        return "sweep"
    if "seeds" in params:
        return "conta"
    if (folder / "index.json").exists():
        return "run"
    return "baseline" if "resolved" in params else None


def _resume_target(args: argparse.Namespace, command: str) -> tuple[Run, str, dict[str, Any]]:
    """The run folder ``--resume`` names, its preset and overrides; refused with the reason when it is not a
    run of ``command`` or the command line asks for other settings than the ones it was made with."""
    folder = Path(args.resume)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run folder")
    if not (folder / "params.json").is_file():
        raise ValueError(f"{folder} is not a run folder (no params.json)")
    try:
        p = read_json(folder / "params.json")
    except ValueError as e:
        raise ValueError(f"{folder / 'params.json'}: not valid JSON ({e})") from e
    kind = run_kind(p if isinstance(p, dict) else {}, folder)
    if kind != command:
        what = f"a `{_KINDS[kind]}` run" if kind else "not a run of any conta-kit command"
        raise ValueError(f"{folder} is {what}; `{_KINDS[command]} --resume` continues only its own runs")
    run = Run(folder)
    overrides = {k: _literal(v) for k, v in args.param}
    asked = {k: v for k, v in overrides.items() if p["overrides"].get(k, object()) != v}
    conflicts = [f"-p {k} {v!r} (recorded: {p['overrides'].get(k, 'not set')!r})" for k, v in asked.items()]
    if args.preset is not None and args.preset != p["preset"]:
        conflicts.insert(0, f"--preset {args.preset} (recorded: {p['preset']})")
    for flag in ("seeds", "rhos"):
        given, recorded = getattr(args, flag, None), p.get(flag, p["overrides"].get(flag))
        if given is not None and recorded is not None and list(given) != list(recorded):
            conflicts.append(f"--{flag} {' '.join(map(str, given))} (recorded: {' '.join(map(str, recorded))})")
    if conflicts:
        raise ValueError(f"{folder} was made with preset {p['preset']!r} and overrides {p['overrides']}; --resume "
                         f"continues it with those. Refused: {'; '.join(conflicts)}")
    _check_scenes_version(folder, p)
    _check_same_recipe(folder, p)
    check_writable(folder)
    return run, p["preset"], dict(p["overrides"])


def _check_same_recipe(folder: Path, params: dict[str, Any]) -> None:
    """A run whose preset and overrides resolve today to other settings than it recorded (a default changed
    since) cannot be continued: the rest of it would run another recipe. Names the settings that differ and the
    overrides that reproduce the recorded ones."""
    from dataclasses import fields as dc_fields

    from .config import setting_differences, with_added_fields

    recorded = params.get("resolved")
    if not isinstance(recorded, dict):
        return
    base = RunCfg()
    known = {f.name for sub in (base.data, base.baseline, base.conta, base.wood) for f in dc_fields(sub)}
    today = RunCfg.from_params(preset=params["preset"],
                               **{k: v for k, v in params["overrides"].items() if k in known}).to_dict()
    sections = ("data", "baseline", "conta", "wood")
    differ = [(path.split(".")[-1], theirs, value) for path, theirs, value in setting_differences(
        json.loads(json.dumps(to_jsonable({k: today[k] for k in sections}))), with_added_fields(recorded))]
    if differ:
        said = "; ".join(f"{n}: {t!r} recorded, {v!r} today" for n, t, v in differ)
        fix = " ".join(f"-p {n} {' '.join(map(str, t)) if isinstance(t, list) else t}" for n, t, _ in differ)
        raise ValueError(f"{folder} was made with settings that its preset and overrides no longer give (a default "
                         f"changed since): {said}. Continuing it would mix two recipes; start a new run with {fix} "
                         f"to reproduce it")


def _check_scenes_version(folder: Path, params: dict[str, Any]) -> None:
    """A benchmark run made before ``layout="prior"`` changed meaning cannot be continued on today's "prior"."""
    from .data.scenes import SCENES_VERSION

    resolved = params.get("resolved", {})
    if resolved.get("data_source", "scenes") != "scenes" or resolved.get("data", {}).get("layout") != "prior":
        return
    env = read_json(folder / "env.json") if (folder / "env.json").is_file() else {}
    if env.get("scenes_version", 1) < SCENES_VERSION:
        raise ValueError(f"{folder} was made when the benchmark's layout 'prior' shaped every context patch by the "
                         f"object's class (today's 'prior_class_surround'); continuing it would mix two benchmarks. "
                         f"Start a new run (with -p layout prior_class_surround -p object_texture plain "
                         f"-p object_scale 1.0 -p aug_shift 0 -p train_windows open to reproduce it)")


def _baseline(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.resume:  # the stopped run's own settings; a conflicting command line is refused
        run, preset, overrides = _resume_target(args, "baseline")
        cfg = preflight(RunCfg.from_params(preset=preset, **overrides))
        if "baseline" in run.metrics:
            print(f"{run.path} is finished; nothing to resume")
            return 0
    else:
        preset, overrides = args.preset or "default", {k: _literal(v) for k, v in args.param}
        cfg = preflight(RunCfg.from_params(preset=preset, **overrides))
        run = Run.create("baseline", args.runs_root, params={"command": "baseline", "preset": preset,
                                                             "overrides": overrides, "resolved": cfg.to_dict()},
                         seed=cfg.seed, device=cfg.device)
    m = run_baseline(cfg, run, progress=not args.no_progress, resume=bool(args.resume))
    print(f"run folder: {run.path}")
    print(f"seed mIoU {m['seed']['miou_fixed']:.3f} (best-on-val threshold: {m['seed']['miou_best']:.3f}), "
          f"pseudo-mask mIoU {m['pseudo']['miou']:.3f}, segmentation mIoU {m['segmentation']['miou']:.3f}, "
          f"{m['timing']['total_s']:.0f} s")
    return 0


def _conta(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    try:
        if args.resume:  # the stopped run's own settings, not the command line's
            run, preset, overrides = _resume_target(args, "conta")
            p = run.params
            seeds, round0 = p["seeds"], p.get("round0_from")
            cfg = preflight(RunCfg.from_params(preset=preset, **overrides))
            if "summary" in run.metrics:
                print(f"{run.path} is finished; nothing to resume")
                print(summary_table(run.metrics["summary"]))
                return 0
        else:
            preset = args.preset or "default"
            overrides, seeds, round0 = {k: _literal(v) for k, v in args.param}, args.seeds or [0, 1, 2], \
                args.round0_from
            cfg = preflight(RunCfg.from_params(preset=preset, **overrides))
        # under torchrun: join the process group; every rank trains (DDP), rank 0 creates and writes the run
        if distributed.init_from_env(resolve_device(cfg.device)):
            if args.jobs > 1 or round0:
                raise ValueError("with torchrun, run one process per GPU: --jobs 1 and no --round0-from")
        multi, rank0 = distributed.is_distributed(), distributed.rank() == 0
        if not args.resume:
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"--seeds must be distinct, got {seeds}")
            if round0:
                check_round0_source(cfg, round0, seeds)  # before any folder is made
            path = None
            if rank0:
                path = str(Run.create(args.name, args.runs_root, params={
                    "command": "conta", "preset": preset, "overrides": overrides, "seeds": seeds,
                    "round0_from": round0, "resolved": cfg.to_dict(),
                    **({"world_size": distributed.world_size()} if multi else {})},
                    seed=cfg.seed, device=cfg.device).path)
            run = Run(distributed.broadcast_object(path))
        t0 = time.perf_counter()
        summary = run_seeds(cfg, run, seeds, jobs=args.jobs, progress=not args.no_progress,
                            round0_from=round0)
    finally:
        distributed.cleanup()
    if rank0:
        print(f"run folder: {run.path}  ({time.perf_counter() - t0:.0f} s)")
        print(summary_table(summary))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.resume:  # the stopped sweep's own settings, not the command line's
        run, preset, overrides = _resume_target(args, "sweep")
        if args.jobs is not None:
            overrides["jobs"] = args.jobs  # how many at once does not change a result
        if finished(run, [SWEEP_NOTEBOOK]):
            print(f"{run.path} is finished; nothing to resume")
            print(sweep_tables(load_sweep(run.path)))
            return 0
    else:
        rhos, seeds = args.rhos or [0.5, 0.75, 0.9, 0.99], args.seeds or [0, 1, 2]
        jobs = 2 if args.jobs is None else args.jobs
        check_sweep_args(rhos, seeds, jobs)  # before a run folder is made
        run, preset = None, args.preset or "bench"
        overrides = {**{k: _literal(v) for k, v in args.param}, "rhos": rhos, "seeds": seeds, "jobs": jobs}
    t0 = time.perf_counter()
    run = run_notebooks(preset, overrides, runs_root=args.runs_root, name=args.name, progress=not args.no_progress,
                        only=[SWEEP_NOTEBOOK], run=run, command="sweep")
    print(f"run folder: {run.path}  ({time.perf_counter() - t0:.0f} s)")
    print(sweep_tables(load_sweep(run.path)))
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = None
    if args.resume:
        run, preset, overrides = _resume_target(args, "run")
        if finished(run, [p.name for p in notebook_paths(args.notebooks)]):
            print(f"{run.path} is finished; nothing to resume")
            return 0
    else:
        preset, overrides = args.preset or "default", {k: _literal(v) for k, v in args.param}
    t0 = time.perf_counter()
    run = run_notebooks(preset, overrides, runs_root=args.runs_root, name=args.name, notebooks=args.notebooks,
                        progress=not args.no_progress, run=run)
    print(f"run folder: {run.path}  ({time.perf_counter() - t0:.1f} s)")
    print(f"open {run.layout.index_html} for the figures; metrics in {run.layout.metrics}")
    return 0


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# what the CLI turns into "conta-kit: error: ..." (exit 2, no traceback; --debug shows it)
_USER_ERRORS = (ValueError, OSError, RuntimeError, EOFError)


def error_message(e: BaseException) -> str:
    """One line naming the file where there is one: ``<path>: <what>``."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    text = str(e) or type(e).__name__
    return text if isinstance(e, (ValueError, RuntimeError)) else f"{type(e).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override a parameter, e.g. -p rounds 3 -p cooccurrence 0.75 (repeatable)")
    common.add_argument("--runs-root", default="runs", help="folder that receives the run folder (default: runs)")
    common.add_argument("--no-progress", action="store_true")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    resume = "continue the stopped run in RUN_DIR with its own settings (a finished run is left as it is)"
    parser = argparse.ArgumentParser(prog="conta-kit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", parents=[common], help="execute the notebook sequence into a new run folder")
    r.add_argument("--preset", default=None, choices=PRESETS, help="default: 'default' (with --resume: the run's)")
    r.add_argument("--name", default="main", help="run name (default: main)")
    r.add_argument("--notebooks", default=str(NOTEBOOKS), help="folder of numbered notebooks")
    r.add_argument("--resume", metavar="RUN_DIR", help=resume + "; only the notebooks not finished run")
    bl = sub.add_parser("baseline", parents=[common],
                        help="run the baseline pipeline (CONTA round 0) into a run folder")
    bl.add_argument("--preset", default=None, choices=PRESETS, help="default: 'default' (with --resume: the run's)")
    bl.add_argument("--resume", metavar="RUN_DIR", help=resume)
    co = sub.add_parser("conta", parents=[common],
                        help="CONTA rounds 0..T (round 0 = baseline) over seeds, with a mean/std summary")
    co.add_argument("--preset", default=None, choices=PRESETS, help="default: 'default' (with --resume: the run's)")
    co.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2")
    co.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (default 1)")
    co.add_argument("--name", default="conta")
    co.add_argument("--resume", metavar="RUN_DIR", help=resume)
    co.add_argument("--round0-from", metavar="RUN_DIR", help="reuse round 0 (the baseline) of RUN_DIR's seeds "
                    "(same seed, data and baseline settings), e.g. to ablate CONTA's options")
    sw = sub.add_parser("sweep", parents=[common], help="the confounding benchmark: baseline, CONTA, W-OoD and "
                        "both over rho and seeds (runs notebook 08)")
    sw.add_argument("--preset", default=None, choices=PRESETS, help="default: 'bench' (with --resume: the run's)")
    sw.add_argument("--rhos", type=float, nargs="+", default=None, help="default: 0.5 0.75 0.9 0.99")
    sw.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2")
    sw.add_argument("--jobs", type=int, default=None, help="(rho, arm, seed) jobs in parallel processes "
                    "(default 2)")
    sw.add_argument("--name", default="sweep")
    sw.add_argument("--resume", metavar="RUN_DIR", help=resume)
    args = parser.parse_args(argv)
    command = {"run": _run, "baseline": _baseline, "conta": _conta, "sweep": _sweep}[args.command]
    if threading.current_thread() is threading.main_thread():  # `kill` stops a run like Ctrl-C: index.html, kernels
        signal.signal(signal.SIGTERM, _stop)
    try:
        return command(args)
    except KeyboardInterrupt:
        print("conta-kit: stopped; every finished step is kept: continue with the same command and "
              "--resume <the run folder above>", file=sys.stderr)
        return 130
    except _USER_ERRORS as e:
        if args.debug:
            raise
        print(f"conta-kit: error: {error_message(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
