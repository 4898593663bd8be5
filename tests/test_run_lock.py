"""No process of a run outlives it, and no new run takes a project over while one still works on it
(tasks/run_lock.py, tasks/reaper.py). Small stand-ins for a run and its stage commands, in subprocesses; the real
pipeline killed the same way is tests/test_faults.py (kill points *-main) and bench/fault_sweep.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from faults import session_processes

pytestmark = pytest.mark.slow  # subprocesses

ROOT = Path(__file__).resolve().parents[1]

STAGE = ("from pathlib import Path; from tasks.run_lock import follow_run, share_project; follow_run(); "
         "share_project(Path({root!r})); print('stage', flush=True); import time; time.sleep(60)")


def fake_run(root: Path, body: str) -> subprocess.Popen:
    """A process that holds the run lock of ``root`` and runs ``body`` inside it (``root``, ``py``, ``stage``
    are defined there), in its own session; it prints "ready" once ``body`` is done."""
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        from pathlib import Path
        from tasks.run_lock import hold
        root = Path({str(root)!r})
        py = sys.executable
        stage = {STAGE.format(root=str(root))!r}
        with hold(root):
    """) + textwrap.indent(textwrap.dedent(body), "    ") + "\n    print('ready', flush=True)\n    time.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while (line := proc.stdout.readline()) and line.strip() != "ready":
        assert line, "the fake run ended early"
    return proc


def gone_within(sid: int, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_killing_the_main_process_alone_ends_everything_it_started(tmp_path) -> None:
    """A stage command through a shell (as DVC starts it) and a direct one follow the run; a process that follows
    nothing (here `sleep`, like Prefect's temporary server) is ended by the reaper. All within 5 s."""
    run = fake_run(tmp_path, """
        subprocess.Popen(["bash", "-c", f"{py} -c \\"{stage}\\"; echo the shell outlived its stage"])
        subprocess.Popen([py, "-c", stage])
        subprocess.Popen(["sleep", "60"])
        time.sleep(1.5)
    """)
    before = session_processes(run.pid)
    assert len(before) >= 6, before  # run, reaper, shell, two stages, sleep
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    left = gone_within(run.pid, 5.0)
    if left:
        os.killpg(run.pid, signal.SIGKILL)
    assert not left, left


def test_a_new_run_waits_for_a_stage_still_working_then_refuses_naming_it(tmp_path, monkeypatch) -> None:
    """A stage command (say one a `dvc repro` started) shares the project's stage lock while it lives: a new run
    waits for it and then refuses at once with one line naming it, rather than taking over beside it."""
    from tasks import run_lock

    stage = subprocess.Popen([sys.executable, "-c", STAGE.format(root=str(tmp_path))], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert stage.stdout.readline().strip() == "stage"
        monkeypatch.setattr(run_lock, "OLD_RUN_GRACE_S", 1.0)
        t0 = time.monotonic()
        with pytest.raises(run_lock.ProjectBusy, match=rf"another process still works on .*pid {stage.pid}: "):
            with run_lock.hold(tmp_path, log=lambda m: None):
                pass
        assert time.monotonic() - t0 < 10
    finally:
        stage.kill()
        stage.wait()
    with run_lock.hold(tmp_path, log=lambda m: None):  # once it is gone, the project is free
        assert os.environ[run_lock.RUN_PID_ENV] == str(os.getpid())
    assert run_lock.RUN_TOKEN_ENV not in os.environ  # the run's marks do not outlive the hold


def test_a_run_that_releases_its_lock_leaves_its_processes_alone(tmp_path) -> None:
    """The reaper acts only when the run dies holding the lock: after a normal release, what the process still
    runs (Prefect's temporary server lives until the process exits) is left alone."""
    from tasks import run_lock

    with run_lock.hold(tmp_path, log=lambda m: None):
        child = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(1.0)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_a_stage_whose_run_pid_was_reused_ends_at_once(tmp_path) -> None:
    """The run is named by pid and start time: a live process with the run's pid but another start time is not the
    run, so the stage ends as if its run were gone; outside a run (no STEER_RUN_PID) a stage follows nothing."""
    env = {**os.environ, "STEER_RUN_PID": str(os.getpid()), "STEER_RUN_START": "1"}
    proc = subprocess.run([sys.executable, "-c", STAGE.format(root=str(tmp_path))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == -signal.SIGKILL and "is gone: ending this stage" in proc.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEER_RUN_")}
    code = "from tasks.run_lock import follow_run; follow_run(); print('free')"
    free = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert free.returncode == 0 and free.stdout.strip() == "free"
