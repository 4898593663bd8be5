"""One ``steer run`` at a time per project, and no process of a run outliving it.

The lock is an OS file lock (``flock`` through the ``filelock`` package) on ``<project>/.steer-run.lock``: the kernel
releases it when its process dies, so a lock left by a killed run is stale by construction. Beside it,
``.steer-run.json`` names the holder (pid, host, start time), so a refused run can say who holds it. Re-entrant
within one process: ``steer run`` takes it before the flow starts, and the flow (which a deployment runs without the
CLI) takes it again as a no-op.

A run's work is done by other processes too: the stage commands DVC starts (through a shell), Prefect's temporary
API server, Dask's workers. Killing the run's main process alone (the OOM killer, ``kill -9 PID``, a scheduler)
must not leave them working, so three things hold while a run holds its lock:

- every stage command shares ``<project>/.steer-run.stages.lock`` (a shared ``flock``, :func:`share_project`) for
  as long as it lives; a new run takes that lock exclusively before it starts, so it waits for, or refuses, a stage
  of an old run that still writes the project, rather than taking over beside it;
- every stage command follows the run that started it (:func:`follow_run`: ``STEER_RUN_PID`` in its environment):
  ``PR_SET_PDEATHSIG`` when the run is its parent, and a thread waiting on the run's pidfd in any case (DVC starts it
  through a shell), which ends the stage the moment the run is gone;
- a small reaper process (``python -m tasks.reaper``) waits on the run; if the run dies without releasing the lock,
  it ends every process that carries the run's token (``STEER_RUN_TOKEN``, inherited by all it started: the
  Prefect server, Dask workers, stage commands, their shells).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from steer_core.errors import SteerError

LOCK_NAME = ".steer-run.lock"
HOLDER_NAME = ".steer-run.json"
STAGES_LOCK_NAME = ".steer-run.stages.lock"
RUN_PID_ENV = "STEER_RUN_PID"
RUN_START_ENV = "STEER_RUN_START"  # the run's start time (/proc/PID/stat field 22): a reused pid is not the run
RUN_TOKEN_ENV = "STEER_RUN_TOKEN"
#: how long a new run waits for the processes of a killed run to end (they end within a second or two: each stage
#: follows its run, and the reaper ends the rest) before it refuses
OLD_RUN_GRACE_S = float(os.environ.get("STEER_OLD_RUN_GRACE_S", "20"))

_held: dict[str, int] = {}
_guard = threading.Lock()


class ProjectBusy(SteerError):
    """Another run holds the project."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), or None: with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@contextlib.contextmanager
def hold(root: Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the project's run lock, or raise ``ProjectBusy`` at once naming the run that holds it (or, after
    ``OLD_RUN_GRACE_S``, naming a process of a killed run that still works on the project)."""
    from filelock import FileLock, Timeout

    root = Path(root).resolve()
    key = str(root)
    with _guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    holder = root / HOLDER_NAME
    lock = FileLock(str(root / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ProjectBusy(f"another steer run holds {root}: {_describe(holder)}; wait for it to finish, or stop "
                          f"it") from None
    try:
        try:
            previous = json.loads(holder.read_text())
        except (OSError, ValueError):
            previous = None
        if previous and previous.get("pid") != os.getpid():
            _wait_for_old_run(root, previous, log)
            state = "killed" if not _alive(int(previous.get("pid", -1))) else "ended"
            log(f"taking over the run lock left by a {state} run (pid {previous.get('pid')}, started "
                f"{previous.get('started')}); none of its processes is left")
        else:
            _wait_for_old_run(root, None, log)  # a stage run by hand (dvc repro) may still work on the project
        token = secrets.token_hex(8)
        holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "started": time.strftime("%Y-%m-%d %H:%M:%S"), "token": token}))
        with _guard:
            _held[key] = 1
        saved = {k: os.environ.get(k) for k in (RUN_PID_ENV, RUN_START_ENV, RUN_TOKEN_ENV)}
        os.environ.update({RUN_PID_ENV: str(os.getpid()), RUN_START_ENV: start_time(os.getpid()) or "",
                           RUN_TOKEN_ENV: token})  # inherited by every process the run starts from now on
        reaper = _start_reaper(token)
        try:
            yield
        finally:
            _stop_reaper(reaper)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            with _guard:
                _held.pop(key, None)
            holder.unlink(missing_ok=True)
    finally:
        lock.release()


def _describe(holder: Path) -> str:
    try:
        info = json.loads(holder.read_text())
    except (OSError, ValueError):
        return "its holder is unknown"
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"


# ------------------------------------------------------------------------------------------------ an old run's rest
def _wait_for_old_run(root: Path, previous: dict | None, log: Callable[[str], None]) -> None:
    """Return once no stage command shares the project's stage lock and no process carries the old run's token;
    raise ``ProjectBusy`` naming one if that takes longer than ``OLD_RUN_GRACE_S``."""
    import fcntl

    token = (previous or {}).get("token")
    deadline = time.monotonic() + OLD_RUN_GRACE_S
    said = False
    path = root / STAGES_LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                holders: list[int] = []
            except BlockingIOError:
                holders = _flock_holders(path) or [-1]
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)  # only a check: this run's own stages share it from now on
            rest = holders + [p for p in carrying(token) if p not in holders] if token else holders
            if not rest:
                return
            if time.monotonic() > deadline:
                pid = rest[0]
                what = f"pid {pid}: {_cmdline(pid)}" if pid > 0 else "a process"
                raise ProjectBusy(f"another process still works on {root} ({what}), a stage of an earlier run or of "
                                  f"a dvc repro; it did not end within {OLD_RUN_GRACE_S:.0f} s: wait for it, or stop "
                                  f"it (kill {pid if pid > 0 else 'PID'}), and run again")
            if not said:
                log(f"waiting for {len(rest)} process(es) of an earlier run or a dvc repro to end (pid {rest[0]}: "
                    f"{_cmdline(rest[0])})")
                said = True
            time.sleep(0.2)
    finally:
        os.close(fd)


def _flock_holders(path: Path) -> list[int]:
    """The pids holding a flock on ``path`` (from /proc/locks; empty where there is none)."""
    try:
        ino = os.stat(path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(ino):
            with contextlib.suppress(ValueError):
                pids.append(int(parts[4]))
    return sorted(set(p for p in pids if p != os.getpid()))


def carrying(token: str | None) -> list[int]:
    """Pids of the live processes (of this user) whose environment carries the run token ``token``."""
    if not token:
        return []
    needle = f"{RUN_TOKEN_ENV}={token}".encode()
    out = []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = Path(entry.path, "environ").read_bytes()
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in env.split(b"\0"):
            out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return "unknown command"


# ------------------------------------------------------------------------------------------------ the reaper
def _start_reaper(token: str) -> subprocess.Popen | None:
    """``python -m tasks.reaper``: it waits on this process and, if it dies holding the lock, ends the processes
    that carry ``token``. Its stdin is a pipe only this process writes: "done" on a normal release."""
    if not os.path.isdir("/proc"):
        return None  # the reaper finds a run's processes through /proc
    env = {k: v for k, v in os.environ.items() if k != RUN_TOKEN_ENV}  # the reaper is not one to reap
    try:
        return subprocess.Popen([sys.executable, "-m", "tasks.reaper", str(os.getpid()), start_time(os.getpid()) or "",
                                 token], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, cwd=str(Path(__file__).resolve().parents[1]), close_fds=True)
    except OSError:
        return None


def _stop_reaper(reaper: subprocess.Popen | None) -> None:
    if reaper is None:
        return
    with contextlib.suppress(OSError, ValueError):
        reaper.stdin.write(b"done\n")
        reaper.stdin.close()
    try:
        reaper.wait(timeout=10)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


# ------------------------------------------------------------------------------------------------ in a stage
_shared_fd: int | None = None


def share_project(root: Path) -> None:
    """Hold a shared lock on the project's stage lock for the rest of this process's life (the kernel drops it at
    exit, however the process ends): a new run waits for it before it takes the project over."""
    global _shared_fd
    import fcntl

    if _shared_fd is not None:
        return
    fd = os.open(Path(root) / STAGES_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a starting run checks the lock (milliseconds)
    _shared_fd = fd


def follow_run(poll_s: float = 0.5) -> None:
    """End this process (SIGKILL, as if killed with its run) as soon as the run that started it is gone.

    The run is ``STEER_RUN_PID`` (with its start time ``STEER_RUN_START``, so a reused pid is not mistaken for it);
    nothing happens outside a run (a stage run by hand). When the run is this process's parent, the kernel sends the
    signal itself (``PR_SET_PDEATHSIG``); in any case a daemon thread waits on the run's pidfd (Linux ≥ 5.3; else it
    polls every ``poll_s``)."""
    raw = os.environ.get(RUN_PID_ENV)
    if not raw or not raw.isdigit():
        return
    pid, started = int(raw), os.environ.get(RUN_START_ENV) or None
    if pid == os.getpid():
        return

    def gone() -> bool:
        return not _alive(pid) or (started is not None and start_time(pid) not in (None, started))

    if os.getppid() == pid and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if gone():
        _die()
    pidfd = None
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(pid)
    if pidfd is not None and gone():  # the pid was reused between the check and the open
        _die()

    def watch() -> None:
        if pidfd is not None:
            import select

            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            while not poller.poll(None):
                pass
            _die()
        while not gone():
            time.sleep(poll_s)
        _die()

    threading.Thread(target=watch, name="follow-run", daemon=True).start()


def _die() -> None:
    """As a ``kill -9`` of this process: no cleanup, no partial write (outputs land together at a stage's end)."""
    with contextlib.suppress(OSError):
        sys.stderr.write(f"run {os.environ.get(RUN_PID_ENV)} is gone: ending this stage (pid {os.getpid()})\n")
        sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
