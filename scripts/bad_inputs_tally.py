"""Replay every bad input of tests/bad_inputs.py and tally what happened; with --update, write the tally into
the README's reliability block (so that paragraph is produced by code, never typed).

    .venv/bin/python scripts/bad_inputs_tally.py [--update README.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bad_inputs import CASES, check, replay  # noqa: E402

from conta_kit.report.markdown import update_block  # noqa: E402


def tally() -> dict[str, int]:
    counts: Counter[str] = Counter()
    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            outcome = replay(case, Path(d))
        counts["cases"] += 1
        counts["conta-kit" if case.command == "cli" else "coco_masks"] += 1
        counts["tracebacks"] += outcome.traceback
        counts["files created or changed"] += bool(outcome.changed)
        if not check(case, outcome):
            counts["clean errors" if case.rc else "handled (exit 0, said what it did)"] += 1
        else:
            counts["failed"] += 1
            print(f"FAILED {case.id}: {check(case, outcome)}", file=sys.stderr)
    return dict(counts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--update", metavar="FILE", help="write the tally into FILE's <!-- results:reliability --> block")
    a = p.parse_args(argv)
    t = tally()
    text = (f"Bad inputs replayed by `tests/test_bad_inputs.py` ({t['conta-kit']} through `conta-kit`, "
            f"{t['coco_masks']} through the COCO converter): **{t['cases']} cases, "
            f"{t.get('clean errors', 0)} clean errors** (one `error:` line naming the key, value or file, exit 2), "
            f"{t.get('handled (exit 0, said what it did)', 0)} handled with exit 0 (a finished run resumed, "
            f"skipped or leftover files counted), **tracebacks: {t['tracebacks']}**, cases that created or changed "
            f"a file they should not: {t['files created or changed']}, failed: {t.get('failed', 0)}. "
            f"Made by `python scripts/bad_inputs_tally.py --update README.md`.")
    print(text)
    if a.update:
        update_block(a.update, "reliability", text)
    return 1 if t.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
