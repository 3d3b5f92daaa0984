"""``python -m conta_kit.report``: the README's result blocks from run folders (see :mod:`conta_kit.report.markdown`).

    python -m conta_kit.report --photos RUN_DIR --update README.md --block real-photos   # figure -> docs/figures/
"""

from __future__ import annotations

import argparse
import sys

from .conclude import photos_markdown
from .markdown import (
    ablation_markdown,
    conta_markdown,
    controls_markdown,
    sweep_ablation_markdown,
    sweep_markdown,
    update_block,
)
from .oracle_gap import oracle_gap_markdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conta_kit.report", description=__doc__.split("\n")[0])
    p.add_argument("run_dirs", nargs="+", help="one CONTA run, or with --ablations several, or with --sweep a "
                   "sweep folder")
    p.add_argument("--sweep", action="store_true", help="a `conta-kit sweep` folder (its tables, and notebook "
                   "07's figures; with --update, the figures are copied into --figure-dir)")
    p.add_argument("--figure-dir", default="docs/figures")
    p.add_argument("--ablations", action="store_true", help="one row per run folder at --round")
    p.add_argument("--oracle-gap", action="store_true", help="one `conta-kit conta` run per rho: baseline "
                   "against the oracle and the resolution ceiling")
    p.add_argument("--controls", action="store_true", help="CONTA over ground-truth ingredients against round 0, "
                   "one block per run folder (the default and the negative controls)")
    p.add_argument("--photos", action="store_true", help="a run with notebook 07: its real-photo conclusion and "
                   "figure (with --update, the figure is copied into --figure-dir)")
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--seed", type=int, help="with --ablations: compare this seed of every run")
    p.add_argument("--update", metavar="FILE", help="write the table into FILE's marked block")
    p.add_argument("--block", default="conta")
    args = p.parse_args(argv)
    try:
        if args.sweep and len(args.run_dirs) > 1:
            text = sweep_ablation_markdown(args.run_dirs)
        elif args.sweep:
            text = sweep_markdown(args.run_dirs[0], args.figure_dir if args.update else None)
        elif args.photos:
            text = photos_markdown(args.run_dirs[0], args.figure_dir if args.update else None)
        elif args.oracle_gap:
            text = oracle_gap_markdown(args.run_dirs)
        elif args.controls:
            text = controls_markdown(args.run_dirs)
        elif args.ablations:
            text = ablation_markdown(args.run_dirs, args.round, args.seed)
        elif len(args.run_dirs) == 1:
            text = conta_markdown(args.run_dirs[0])
        else:
            raise ValueError("several run folders need --ablations")
        if args.update:
            update_block(args.update, args.block, text)
    except (ValueError, FileNotFoundError) as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
