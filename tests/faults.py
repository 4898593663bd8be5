"""Fault injection for the production loop: real ``steer run`` processes killed at chosen points, and the state a run
leaves (registry, DVC, files) to compare with an undisturbed run. Used by tests/test_faults.py (a sample of kill
points) and bench/fault_sweep.py (all of them)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from first_run import NAME, TINY_PARAMS
from projects import make_project, prefect_home, sha256, without_mlflow_uris

BIN = Path(sys.executable).parent
#: the params of tests/first_run.py's run, so that run is the undisturbed reference the tests compare with
PARAMS = TINY_PARAMS
# outputs whose bytes are a pure function of the inputs (the steer's JSON card also holds the fit's timings)
DETERMINISTIC = [f"data/prepared/{NAME}/train.jsonl", f"data/prepared/{NAME}/val.jsonl",
                 f"data/prepared/{NAME}/card.json", f"data/prompts/{NAME}.jsonl",
                 f"artifacts/steers/{NAME}.safetensors", f"metrics/{NAME}.json", f"reports/{NAME}.samples.jsonl"]


@dataclass(frozen=True)
class KillPoint:
    """Kill the run ``delay`` seconds after its output shows ``marker``: its whole process group (``scope``
    "group"), or its main process alone ("main": the OOM killer, ``kill -9 PID``, a scheduler that kills the
    process it started)."""

    name: str
    marker: str
    delay: float
    scope: str = "group"


KILL_POINTS = [
    KillPoint("prepare-start", f"prepare@{NAME}: running", 0.2),
    KillPoint("prepare-late", f"prepare@{NAME}: running", 1.5),
    KillPoint("train-start", f"train@{NAME}: running", 1.0),
    KillPoint("train-mid", f"train@{NAME}: running", 5.0),
    KillPoint("train-late", f"train@{NAME}: running", 7.0),
    KillPoint("evaluate-start", f"evaluate@{NAME}: running", 2.0),
    KillPoint("evaluate-mid", f"evaluate@{NAME}: running", 8.0),
    KillPoint("evaluate-late", f"evaluate@{NAME}: running", 10.0),
    KillPoint("after-push", "pushed to DVC remote", 0.0),
    KillPoint("registering", "Successfully registered model", 0.0),
    KillPoint("version-created", "Created version", 0.0),
    KillPoint("version-created-late", "Created version", 1.0),
    # the main process alone: every process it started (stage commands through DVC's shell, Prefect's temporary
    # server, the run's reaper) must end with it, and the next run must find none of them
    KillPoint("prepare-main", f"prepare@{NAME}: running", 1.0, "main"),
    KillPoint("train-main", f"train@{NAME}: running", 5.0, "main"),
    KillPoint("evaluate-main", f"evaluate@{NAME}: running", 8.0, "main"),
    KillPoint("registering-main", "Successfully registered model", 0.0, "main"),
]
#: how long after a kill every process of the run must be gone
GONE_WITHIN_S = 5.0


@dataclass
class Killed:
    """What a kill did: whether it landed before the run ended, and the processes of the run still alive
    ``GONE_WITHIN_S`` after it (pid and command line; they are killed once listed)."""

    landed: bool
    survivors: list[str]


def run_env(root: Path, **extra: str) -> dict[str, str]:
    env = without_mlflow_uris(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(PREFECT_HOME=prefect_home(root / ".prefect"), PYTHONWARNINGS="ignore", **extra)
    return env


def start_run(root: Path, log: Path, **env: str) -> subprocess.Popen:
    """``steer run`` in its own process group (so a kill takes its stage subprocess and Prefect server too)."""
    return subprocess.Popen([str(BIN / "steer"), "run", "--params", str(root / "params.yaml")], cwd=root,
                            env=run_env(root, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def run(root: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "steer"), "run", "--params", str(root / "params.yaml")], cwd=root,
                          env=run_env(root, **env), capture_output=True, text=True, timeout=timeout)


def session_processes(sid: int) -> list[str]:
    """The live processes of session ``sid`` ("pid command"): ``steer run`` started in its own session is the
    leader, and everything it starts stays in it (DVC's stage shells, Prefect's server, Dask's workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(f"{entry} {cmd.strip()[:160]}")
    return out


def run_killed_at(root: Path, point: KillPoint, log: Path, timeout: float = 600) -> Killed:
    """Start ``steer run`` and SIGKILL it at ``point`` (its process group, or its main process alone); then wait up
    to ``GONE_WITHIN_S`` for every process of the run to end and report the ones that did not."""
    proc = start_run(root, log)
    seen = threading.Event()
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if point.marker in line:
                seen.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not seen.is_set() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    landed = False
    if seen.is_set():
        time.sleep(point.delay)
        if proc.poll() is None:
            if point.scope == "main":
                os.kill(proc.pid, signal.SIGKILL)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
            landed = True
    proc.wait(timeout=60)
    deadline = time.monotonic() + GONE_WITHIN_S
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = session_processes(proc.pid)
    if survivors:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leave nothing running behind a failed check
    reader.join(timeout=10)
    log.write_text("".join(lines))
    return Killed(landed, survivors)


def state(root: Path) -> dict:
    """What a run leaves that must not depend on faults: registry, dvc.lock, DVC status, output bytes."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    vs = client.search_model_versions(f"name='{NAME}'")
    try:
        champion = str(client.get_model_version_by_alias(NAME, "champion").version)
    except MlflowException:
        champion = None
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"] if (root / "dvc.lock").exists() else {}
    lock = {o["path"]: o["md5"] for body in stages.values() for o in body.get("outs", [])
            if not o["path"].endswith(f"steers/{NAME}.json")}
    dvc = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=root, capture_output=True, text=True)
    return {
        "versions": sorted((int(v.version), v.tags.get("steer.sha256"), v.tags.get("gate.passed")) for v in vs),
        "champion": champion,
        "lock": lock,
        "dvc_status": json.loads(dvc.stdout or "{}") if dvc.returncode == 0 else dvc.stderr,
        "files": {rel: sha256(root / rel) if (root / rel).exists() else None for rel in DETERMINISTIC},
    }


def fresh_project(root: Path, params: dict | None = None) -> Path:
    return make_project(root, params or PARAMS)
