"""Parallel workers die with their parent: a killed kernel or CLI leaves nothing training."""

import os
import signal
import subprocess
import sys
import time

PARENT = """
import multiprocessing as mp, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from conta_kit.pipeline.jobs import die_with_parent

def job(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    ex = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=die_with_parent,
                             initargs=(os.getpid(), 0.2))
    ex.submit(job, sys.argv[1])
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper has finished too
        return f.read().split()[2] != "Z"


def _pid_from(path, timeout: float = 60) -> int:
    """The pid a started process writes to ``path`` (waited for), checked to be alive."""
    deadline = time.time() + timeout
    while not (path.exists() and path.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    pid = int(path.read_text())
    assert _alive(pid)
    return pid


def test_worker_ends_when_its_parent_is_killed(tmp_path):
    script, marker = tmp_path / "parent.py", tmp_path / "worker.pid"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(marker)])
    try:
        worker = _pid_from(marker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 15
        while _alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its killed parent"
    finally:
        parent.kill()


INNER = """
import os, signal, subprocess, sys, time

def test_holds_a_server():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    open(os.environ["CHILD_PID_FILE"], "w").write(str(child.pid))
    try:
        time.sleep(120)
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(10)
"""


def test_a_terminated_test_run_still_stops_what_its_tests_started(tmp_path):
    """SIGTERM to pytest runs the tests' finally blocks (this suite's conftest), so a server a test started in a
    session of its own does not outlive the run."""
    (tmp_path / "test_inner.py").write_text(INNER)
    pid_file = tmp_path / "child.pid"
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "CHILD_PID_FILE": str(pid_file), "PYTHONPATH": tests}
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                            str(tmp_path / "test_inner.py")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    child = None
    try:
        child = _pid_from(pid_file)
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=60)
        assert run.returncode == 2 and "KeyboardInterrupt" in out, out[-2000:]  # pytest's "interrupted"
        assert not _alive(child)
    finally:
        if run.poll() is None:
            run.kill()
        if child is not None and _alive(child):
            os.killpg(child, signal.SIGKILL)
