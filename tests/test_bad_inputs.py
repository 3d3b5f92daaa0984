"""Every bad input of ``tests/bad_inputs.py``: a clear error, the right exit code, no file created or changed."""

from __future__ import annotations

import os

import pytest
from bad_inputs import CASES, check, replay


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a case that ran code on load would leave ./pwned here
    outcome = replay(case, tmp_path)
    assert not check(case, outcome), (check(case, outcome), outcome.err[-2000:] or outcome.out[-2000:])
    assert not (tmp_path / "pwned").exists()


def test_the_cases_are_distinct_and_many():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 100


def test_a_write_that_fails_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from conta_kit import io as kit_io

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kit_io.os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as e:
        kit_io.atomic_write_text(tmp_path / "metrics.json", "{}")
    assert e.value.filename == str(tmp_path / "metrics.json")
    assert list(tmp_path.iterdir()) == []  # no temporary left
    with pytest.raises(OSError):
        kit_io.Run.create("x", tmp_path / "runs")
    assert list((tmp_path / "runs").iterdir()) == []  # no half-made run folder


def test_run_files_are_readable_by_others_unless_the_umask_says_no(tmp_path):
    from conta_kit.io import atomic_write_text

    old = os.umask(0o022)
    try:
        assert (atomic_write_text(tmp_path / "a", "x").stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (atomic_write_text(tmp_path / "b", "x").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)
