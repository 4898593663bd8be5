"""``python -m tasks.reaper RUN_PID RUN_START TOKEN``: started by ``tasks.run_lock.hold`` beside every run.

It waits until the run either says "done" on stdin (it released its lock: nothing to do) or is gone (stdin closes
without "done", or the run's pidfd signals), and then ends every process that carries ``STEER_RUN_TOKEN=TOKEN`` in
its environment: whatever the run started (stage commands and their shells, Prefect's temporary server, Dask
workers) and whatever those started. SIGTERM first, SIGKILL two seconds later, until none is left. Stdlib only, so
it starts in milliseconds.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from tasks.run_lock import carrying, start_time


def wait_for_run(pid: int, started: str | None) -> bool:
    """Block until the run releases its lock (False) or is gone (True)."""
    poller = select.poll()
    poller.register(sys.stdin.fileno(), select.POLLIN | select.POLLHUP)
    pidfd = None
    try:
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
    except (OSError, AttributeError):
        pass
    buf = b""
    while True:
        if started and start_time(pid) != started:
            return True  # gone (or its pid reused)
        for fd, _ in poller.poll(None if pidfd is not None else 1000):
            if fd == pidfd:
                return True
            chunk = os.read(fd, 64)
            if not chunk:
                return b"done" not in buf
            buf += chunk
            if b"done" in buf:
                return False


def reap(token: str, term_s: float = 2.0, limit_s: float = 30.0) -> int:
    """End every process carrying ``token``; returns how many there were."""
    seen: set[int] = set()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        pids = carrying(token)
        if not pids:
            break
        fresh = [p for p in pids if p not in seen]
        for p in fresh:
            _signal(p, signal.SIGTERM)
        seen.update(fresh)
        t0 = time.monotonic()
        while time.monotonic() - t0 < term_s and any(p in carrying(token) for p in pids):
            time.sleep(0.1)
        for p in carrying(token):
            _signal(p, signal.SIGKILL)
        time.sleep(0.1)
    return len(seen)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    pid, started, token = int(argv[0]), argv[1] or None, argv[2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the run's terminal is the run's to handle
    if wait_for_run(pid, started):
        reap(token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
