"""Bad inputs a new user gives the kit, each replayed with what must happen: a clear error (the text it must
contain), the exit code, and no file created, changed or lost. ``tests/test_bad_inputs.py`` asserts every
case; ``scripts/bad_inputs_tally.py`` counts them for the README's reliability paragraph.

A case is ``Case(id, setup, expect, rc=2, command="cli")``: ``setup(tmp)`` prepares a scratch folder and
returns the command's arguments (``conta-kit`` for "cli", ``python -m conta_kit.data.coco_masks`` for
"coco"); ``expect`` is a substring of the error line (of stdout for rc 0). Every file under ``tmp`` is
fingerprinted before and after; only the paths the case names in ``writes`` may change.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Case:
    id: str
    setup: Callable[[Path], list[str]]
    expect: str
    rc: int = 2
    command: str = "cli"
    writes: tuple[str, ...] = ()  # paths (relative to tmp) the case may create or change
    env: dict[str, str] = field(default_factory=dict)
    patch: Callable[[], contextlib.AbstractContextManager] | None = None


@dataclass
class Outcome:
    rc: int
    out: str
    err: str
    changed: list[str]
    traceback: bool


def _fingerprint(root: Path) -> dict[str, Any]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = ("link", os.readlink(p))
        elif p.is_file():
            out[str(p.relative_to(root))] = ("file", p.read_bytes())
        else:
            out[str(p.relative_to(root))] = ("dir",)
    return out


def replay(case: Case, tmp: Path) -> Outcome:
    """Run ``case`` in ``tmp`` in this process; the rc, the output and what changed under ``tmp``."""
    from conta_kit import cli
    from conta_kit.data import coco_masks

    argv = case.setup(tmp)
    before = _fingerprint(tmp)
    out, err = io.StringIO(), io.StringIO()
    old_env = {k: os.environ.get(k) for k in case.env}
    os.environ.update(case.env)
    tb = False
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                (case.patch() if case.patch else contextlib.nullcontext()):
            try:
                rc = (cli.main if case.command == "cli" else coco_masks.main)(argv)
            except SystemExit as e:  # argparse's own usage errors
                rc = int(e.code or 0)
            except BaseException:  # noqa: BLE001 - an escaped exception is what the tally counts
                tb, rc = True, -1
                err.write(traceback.format_exc())
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    after = _fingerprint(tmp)
    allowed = set(case.writes)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)
                     and not any(k == a or k.startswith(a + "/") for a in allowed))
    return Outcome(rc, out.getvalue(), err.getvalue(), changed, tb or "Traceback" in err.getvalue())


def check(case: Case, o: Outcome) -> list[str]:
    """What is wrong with outcome ``o`` of ``case`` (empty: the case passes)."""
    problems = []
    if o.traceback:
        problems.append("a traceback escaped")
    if o.rc != case.rc:
        problems.append(f"exit code {o.rc}, expected {case.rc}")
    text = o.err if case.rc else o.out
    prefix = "conta-kit: error:" if case.command == "cli" else "coco_masks: error:"
    if case.rc == 2 and not o.err.startswith(("usage:", prefix)) and prefix not in o.err:
        problems.append(f"no '{prefix}' line")
    if case.expect not in text:
        problems.append(f"{case.expect!r} not in the output")
    if o.changed:
        problems.append(f"files created or changed: {o.changed[:5]}")
    return problems


# ---------------------------------------------------------------------------------------------- the scenes


def _run_folder(tmp: Path, params: dict[str, Any], metrics: dict[str, Any] | None = None,
                name: str = "20260101-000000_x", index: dict[str, Any] | None = None) -> Path:
    run = tmp / "runs" / name
    (run / "figures").mkdir(parents=True)
    (run / "params.json").write_text(json.dumps(params))
    (run / "metrics.json").write_text(json.dumps(metrics or {}))
    if index is not None:
        (run / "index.json").write_text(json.dumps(index))
    return run


SMOKE = {"command": "baseline", "preset": "smoke", "overrides": {"num_train": 16}, "resolved": {}}
CONTA = {"command": "conta", "preset": "smoke", "overrides": {}, "seeds": [0, 1], "resolved": {}}
SWEEP = {"command": "sweep", "preset": "smoke", "overrides": {"rhos": [0.5, 0.9], "seeds": [0], "jobs": 1}}
RUN = {"command": "run", "preset": "smoke", "overrides": {}, "resolved": {}}


def _root(tmp: Path) -> list[str]:
    return ["--runs-root", str(tmp / "runs"), "--no-progress"]


def _p(command: str, key: str, value: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [command, "--preset", "smoke", "-p", key, value, *_root(tmp)]


def _cli(*args: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [*[a.replace("{tmp}", str(tmp)) for a in args], *_root(tmp)]


def _resume(command: str, params: dict[str, Any], *extra: str, metrics: dict[str, Any] | None = None,
            index: dict[str, Any] | None = None) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        run = _run_folder(tmp, params, metrics, index=index)
        return [command, "--resume", str(run), *extra, "--no-progress"]
    return setup


def _checkpoint(data: bytes | Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """A stopped smoke baseline run whose classifier checkpoint holds ``data``."""
    def setup(tmp: Path) -> list[str]:
        run = _run_folder(tmp, SMOKE)
        ck = run / "checkpoints" / "classifier" / "last.pt"
        ck.parent.mkdir(parents=True)
        if callable(data):
            data(ck)
        else:
            ck.write_bytes(data)
        return ["baseline", "--resume", str(run), "--no-progress"]
    return setup


class _Exploit:
    def __reduce__(self):  # what a crafted checkpoint does: run a command on load
        return (os.system, ("touch pwned",))


def _truncated_checkpoint(path: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(64)}, "epoch": 0}, buf)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _read_only_access() -> contextlib.AbstractContextManager:
    """A read-only mount as os.access reports it (EROFS answers no even to root, who may run the tests)."""
    from unittest import mock

    real = os.access
    return mock.patch("os.access", lambda p, mode, *a, **k: False if mode & os.W_OK else real(p, mode, *a, **k))


# ------------------------------------------------------------------------------------------------- COCO


def _coco(ann: Any = None, *, images: tuple[str, ...] = ("a.jpg",), split: str = "val", out: str = "out",
          raw: str | None = None, extra: tuple[str, ...] = ()) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        src = tmp / "images"
        src.mkdir()
        for name in images:
            Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(src / name)
        path = tmp / "ann.json"
        path.write_text(raw if raw is not None else json.dumps(ann if ann is not None else _ann()))
        return ["--annotations", str(path), "--images", str(src), "--out", str(tmp / out), "--split", split, *extra]
    return setup


def _ann(**change: Any) -> dict[str, Any]:
    poly = [[0, 0, 8, 0, 8, 8, 0, 8]]
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 12}],
           "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "segmentation": poly, "area": 64.0,
                            "iscrowd": 0}]}
    for key, value in change.items():
        section, _, field_ = key.partition("__")
        if field_:
            if value is _DROP:
                ann[section][0].pop(field_)
            else:
                ann[section][0][field_] = value
        elif value is _DROP:
            ann.pop(section)
        else:
            ann[section] = value
    return ann


_DROP = object()


def _out_is_a_file(tmp: Path) -> list[str]:
    argv = _coco()(tmp)
    (tmp / "out").write_text("not a folder")
    return argv


def _leftovers(tmp: Path) -> list[str]:
    """A converter run killed midway: a stale temporary and a dangling link; the re-run cleans and finishes."""
    argv = _coco()(tmp)
    (tmp / "out" / "SegmentationClass").mkdir(parents=True)
    (tmp / "out" / "JPEGImages").mkdir(parents=True)
    (tmp / "out" / "SegmentationClass" / ".a.png.x1y2.tmp").write_bytes(b"half")
    os.symlink(tmp / "gone.jpg", tmp / "out" / "JPEGImages" / "b.jpg")
    return argv


def _bad_root_file(tmp: Path) -> list[str]:
    (tmp / "runs").write_text("a file")
    return ["baseline", "--preset", "smoke", "--runs-root", str(tmp / "runs"), "--no-progress"]


# ------------------------------------------------------------------------------------------------- cases

_OPTION_VALUES = [  # (key, bad value, what the error names)
    ("rounds", "abc", "rounds"), ("rounds", "-1", "rounds"), ("rounds", "2.5", "rounds"),
    ("cls_epochs", "three", "cls_epochs"), ("cls_epochs", "2.5", "cls_epochs"), ("cls_epochs", "0", "cls_epochs"),
    ("cls_lr", "nan", "cls_lr"), ("cls_lr", "float('nan')", "cls_lr"), ("cls_lr", "inf", "cls_lr"),
    ("cls_lr", "-0.1", "cls_lr"), ("seg_lr", "abc", "seg_lr"), ("seg_epochs", "-2", "seg_epochs"),
    ("cam_scales", "abc", "cam_scales"), ("cam_scales", "[]", "cam_scales"), ("cam_scales", "[0]", "cam_scales"),
    ("cam_scales", "[-1, 1]", "cam_scales"), ("threshold_grid", "[1.5]", "threshold_grid"),
    ("image_size", "0", "image_size"), ("image_size", "8", "image_size"), ("image_size", "abc", "image_size"),
    ("num_train", "0", "num_train"), ("num_train", "-5", "num_train"), ("num_val", "ten", "num_val"),
    ("cls_batch_size", "0", "cls_batch_size"), ("num_workers", "-1", "num_workers"),
    ("device", "tpu", "device"), ("backbone", "vgg99", "backbone"), ("segmenter", "unet9", "segmenter"),
    ("cooccurrence", "1.5", "cooccurrence"), ("cooccurrence", "-0.1", "cooccurrence"), ("layout", "grid", "layout"),
    ("seed", "abc", "seed"), ("no_such_key", "1", "unknown parameter 'no_such_key'"),
    ("fusion", "nowhere", "fusion"), ("attn_init", "magic", "attn_init"), ("m_scale", "huge", "m_scale"),
    ("temperature", "0", "temperature"), ("grid", "0", "grid"), ("gt_arm", "maybe", "gt_arm"),
    ("shuffle_prototypes", "2", "shuffle_prototypes"), ("finetune", "sometimes", "finetune"),
    ("data_source", "imagenet", "data_source"), ("data_source", "voc", "needs data_root"),
]

CASES: list[Case] = []
for _key, _value, _names in _OPTION_VALUES:
    for _command in ("baseline", "conta"):
        CASES.append(Case(f"{_command} -p {_key} {_value}", _p(_command, _key, _value), _names))
for _key, _value, _names in [("rounds", "abc", "rounds"), ("cls_lr", "nan", "cls_lr"), ("interactive", "3",
                             "interactive"), ("seeds", "[1, 1]", "seeds"), ("jobs", "0", "jobs"),
                             ("photos_dir", "/no/such/photos", "photos_dir")]:
    CASES.append(Case(f"run -p {_key} {_value}", _p("run", _key, _value), _names))
CASES += [
    Case("sweep -p rounds abc", _p("sweep", "rounds", "abc"), "rounds"),
    Case("baseline data_root missing", _cli("baseline", "-p", "data_source", "voc", "-p", "data_root",
                                            "{tmp}/no_voc"), "no_voc"),
    Case("conta --jobs 0", _cli("conta", "--preset", "smoke", "--jobs", "0"), "--jobs must be >= 1"),
    Case("conta --seeds 1 1", _cli("conta", "--preset", "smoke", "--seeds", "1", "1"), "distinct"),
    Case("conta --round0-from missing", _cli("conta", "--preset", "smoke", "--round0-from", "{tmp}/nope"), "nope"),
    Case("sweep --rhos 1.5", _cli("sweep", "--preset", "smoke", "--rhos", "1.5"), "rhos"),
    Case("sweep --seeds 0 0", _cli("sweep", "--preset", "smoke", "--seeds", "0", "0"), "seeds"),
    Case("sweep --jobs 0", _cli("sweep", "--preset", "smoke", "--jobs", "0"), "jobs"),
    Case("--preset unknown", _cli("baseline", "--preset", "huge"), "invalid choice"),
    Case("--name with a slash", _cli("conta", "--preset", "smoke", "--name", "a/b"), "plain folder name"),
    Case("--name ..", _cli("conta", "--preset", "smoke", "--name", ".."), "plain folder name"),
    Case("--name hidden", _cli("conta", "--preset", "smoke", "--name", ".x"), "plain folder name"),
    Case("--runs-root is a file", _bad_root_file, "runs root must be a folder"),
    Case("--runs-root read-only", _cli("baseline", "--preset", "smoke"), "cannot write here",
         patch=_read_only_access),
    Case("disk nearly full", _cli("baseline", "--preset", "smoke"), "MiB free",
         env={"CONTA_KIT_MIN_FREE_MB": "1e15"}),
    # resume: the run's own settings, only a run of the same command, a finished run untouched
    Case("baseline --resume missing folder", lambda tmp: ["baseline", "--resume", str(tmp / "nope")],
         "no such run folder"),
    Case("baseline --resume a plain folder", lambda tmp: (tmp / "d").mkdir() or ["baseline", "--resume",
                                                                                  str(tmp / "d")],
         "not a run folder"),
    Case("baseline --resume bad params.json", lambda tmp: (
        (tmp / "d").mkdir(), (tmp / "d" / "params.json").write_text("{oops"))[0] or
        ["baseline", "--resume", str(tmp / "d")], "not valid JSON"),
    Case("baseline --resume a conta run", _resume("baseline", CONTA), "is a `conta-kit conta` run"),
    Case("baseline --resume a sweep", _resume("baseline", SWEEP), "is a `conta-kit sweep` run"),
    Case("baseline --resume other preset", _resume("baseline", SMOKE, "--preset", "default"),
         "--preset default (recorded: smoke)"),
    Case("baseline --resume other -p", _resume("baseline", SMOKE, "-p", "num_train", "32"),
         "-p num_train 32 (recorded: 16)"),
    Case("baseline --resume finished", _resume("baseline", SMOKE, metrics={"baseline": {"done": True}}),
         "nothing to resume", rc=0),
    Case("conta --resume a baseline run", _resume("conta", SMOKE), "is a `conta-kit baseline` run"),
    Case("conta --resume other seeds", _resume("conta", CONTA, "--seeds", "0", "1", "2"),
         "--seeds 0 1 2 (recorded: 0 1)"),
    Case("conta --resume other preset", _resume("conta", CONTA, "--preset", "bench"), "--preset bench"),
    Case("conta --resume other -p", _resume("conta", CONTA, "-p", "rounds", "5"), "-p rounds 5"),
    Case("conta --resume finished", _resume("conta", CONTA, metrics={"summary": {
        "seeds": [0, 1], "rounds": [], "metrics": {}}}), "nothing to resume", rc=0),
    Case("sweep --resume a conta run", _resume("sweep", CONTA), "is a `conta-kit conta` run"),
    Case("sweep --resume other rhos", _resume("sweep", SWEEP, "--rhos", "0.5"), "--rhos 0.5 (recorded: 0.5 0.9)"),
    Case("run --resume a baseline run", _resume("run", SMOKE), "is a `conta-kit baseline` run"),
    Case("run --resume other -p", _resume("run", RUN, "-p", "rounds", "2"), "-p rounds 2"),
    Case("run --resume read-only", _resume("run", RUN), "cannot write here", patch=_read_only_access),
    # checkpoints: truncated, empty, garbage, code
    Case("truncated checkpoint", _checkpoint(_truncated_checkpoint), "not a readable torch checkpoint"),
    Case("empty checkpoint", _checkpoint(b""), "not a readable torch checkpoint"),
    Case("garbage checkpoint", _checkpoint(b"\x00garbage" * 10), "not a readable torch checkpoint"),
    Case("checkpoint that runs code", _checkpoint(pickle.dumps(_Exploit())), "not a readable torch checkpoint"),
    # the COCO converter
    Case("coco: missing image skipped", _coco(images=()), "skipped 1 images missing", rc=0, command="coco",
         writes=("out",)),
    Case("coco: missing image --strict", _coco(images=(), extra=("--strict",)), "not in", command="coco"),
    Case("coco: split escapes --out", _coco(split="../../../evil2"), "--split", command="coco"),
    Case("coco: split with a slash", _coco(split="a/b"), "--split", command="coco"),
    Case("coco: file_name escapes", _coco(_ann(images__file_name="../../escape.jpg")), "plain file name",
         command="coco"),
    Case("coco: absolute file_name", _coco(_ann(images__file_name="/etc/passwd")), "plain file name",
         command="coco"),
    Case("coco: no annotations", _coco(_ann(annotations=_DROP)), "no 'annotations' list", command="coco"),
    Case("coco: no images", _coco(_ann(images=_DROP)), "no 'images' list", command="coco"),
    Case("coco: truncated JSON", _coco(raw=json.dumps(_ann())[:40]), "ann.json: not valid JSON", command="coco"),
    Case("coco: JSON is a list", _coco(raw="[]"), "is a JSON object", command="coco"),
    Case("coco: no segmentation", _coco(_ann(annotations__segmentation=_DROP)), "no 'segmentation'",
         command="coco"),
    Case("coco: bad polygon", _coco(_ann(annotations__segmentation=[[1, 2, 3]])), "polygon", command="coco"),
    Case("coco: negative height", _coco(_ann(images__height=-10)), "positive integers", command="coco"),
    Case("coco: unknown category", _coco(_ann(annotations__category_id=12)), "category_id 12", command="coco"),
    Case("coco: unknown image id", _coco(_ann(annotations__image_id=99)), "image_id 99", command="coco"),
    Case("coco: duplicate image id", _coco(_ann(images=[_ann()["images"][0]] * 2)), "appears twice", command="coco"),
    Case("coco: iscrowd 2", _coco(_ann(annotations__iscrowd=2)), "iscrowd", command="coco"),
    Case("coco: --out is a file", _out_is_a_file, "is a file, not a folder", command="coco"),
    Case("coco: --out inside the images", _coco(out="images/out"), "must not be inside", command="coco"),
    Case("coco: annotations file missing", lambda tmp: (tmp / "imgs").mkdir() or [
        "--annotations", str(tmp / "no.json"), "--images", str(tmp / "imgs"),
                                                        "--out", str(tmp / "out"), "--split", "val"],
         "no such annotation file", command="coco"),
    Case("coco: image folder missing", lambda tmp: ["--annotations", str(tmp / "no.json"), "--images",
                                                    str(tmp / "none"), "--out", str(tmp / "out"), "--split", "val"],
         "not found", command="coco"),
    Case("coco: killed run's leftovers", _leftovers, "removed 2 leftovers", rc=0, command="coco", writes=("out",)),
]
