"""One ``steer run`` at a time per project.

The lock is an OS file lock (``flock`` through the ``filelock`` package) on ``<project>/.steer-run.lock``: the kernel
releases it when its process dies, so a lock left by a killed run is stale by construction and is simply taken over.
Beside it, ``.steer-run.json`` names the holder (pid, host, start time), so a refused run can say who holds it.
Re-entrant within one process: ``steer run`` takes it before the flow starts, and the flow (which a deployment
runs without the CLI) takes it again as a no-op.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from steer_core.errors import SteerError

LOCK_NAME = ".steer-run.lock"
HOLDER_NAME = ".steer-run.json"

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


@contextlib.contextmanager
def hold(root: Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the project's run lock, or raise ``ProjectBusy`` at once naming the run that holds it."""
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
            state = "killed" if not _alive(int(previous.get("pid", -1))) else "ended"
            log(f"taking over the run lock left by a {state} run (pid {previous.get('pid')}, started "
                f"{previous.get('started')})")
        holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        with _guard:
            _held[key] = 1
        try:
            yield
        finally:
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
