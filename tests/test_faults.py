"""Faults survived, nothing lost: real ``steer run`` processes on the tiny pipeline, disturbed, then run again.

Each case ends with the state of an undisturbed run (registry versions and champion, dvc.lock, DVC status, output
bytes): the first run of tests/first_run.py, on the same params (one run a suite, shared with test_pipeline and
test_lineage, whose worker this module joins). The crash scenarios are sampled (one a run, rotating by commit) to
stay inside CI's time; ``STEER_KILL_POINTS=all`` runs the three of the rotation, ``bench/fault_sweep.py`` every kill
point. Cases: kill -9 in each stage and in the promotion job; the MLflow tracking server down before a run and killed
during one; two runs at once; corrupted model and hidden-state caches; a read-only project directory; a stage command
left working by an earlier run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from faults import BIN, KILL_POINTS, NAME, PARAMS, fresh_project, run, run_env, run_killed_at, start_run, state
from first_run import first_run, first_run_done
from projects import make_project
from servers import free_port, start_server, stop_server, wait_http

pytestmark = pytest.mark.slow

# one crash scenario per CI run keeps the suite inside CI's 20 minutes; the full sweep: bench/fault_sweep.py. Three
# alternate by the commit under test (the same commit always runs the same one, on every xdist worker): the group
# killed after the registry created a version (the registry's consistency after a crash); the main process killed
# alone during the evaluate stage (the stage command DVC started, and everything else the run started, must end with
# it); the tracking server killed between the push and the registration. STEER_KILL_POINTS=all runs the three. A
# killed fit's resume has its own test (tests/test_train.py::test_kill_9_then_rerun_resumes_to_the_same_steer)
TRACKING_SERVER_KILLED = "tracking-server-killed"
ROTATION = [p.name for p in KILL_POINTS if p.name in ("version-created-late", "evaluate-main")]
ROTATION.append(TRACKING_SERVER_KILLED)
assert len(ROTATION) == 3, "a sampled kill point is gone from tests/faults.py"


def _commit_number() -> int:
    """The checkout's HEAD as a number (0 outside git): which of the rotating crash scenarios this commit runs."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    return int(head.stdout.strip() or "0", 16) if head.returncode == 0 else 0


CHOSEN = ROTATION if os.environ.get("STEER_KILL_POINTS") == "all" else [ROTATION[_commit_number() % len(ROTATION)]]
SAMPLED = [p for p in KILL_POINTS if p.name in CHOSEN]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict:
    """What an undisturbed run leaves: the state of tests/first_run.py's project (the same params)."""
    if not first_run_done():
        request.getfixturevalue("harness")  # the run happens here (this module ran first, or alone): a Prefect API
    return {"state": state(first_run(tmp_path_factory)["root"])}


def test_an_undisturbed_run_promotes_v1(reference) -> None:
    st = reference["state"]
    assert st["champion"] == "1" and [v[0] for v in st["versions"]] == [1] and st["dvc_status"] == {}
    assert all(st["files"].values()), st["files"]


def test_a_second_run_while_one_holds_the_project_is_refused_at_once_naming_it(tmp_path) -> None:
    """While a ``steer run`` works on a project, a second one exits 2 at once with one line naming the first (no
    flow, no model load); the first is then killed (its crash is the kill tests' business)."""
    root = fresh_project(tmp_path / "project")
    first = start_run(root, tmp_path / "run.log")
    try:
        holder = root / ".steer-run.json"
        deadline = time.monotonic() + 120
        while not holder.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert holder.exists(), "the first run never took the project"
        t0 = time.monotonic()
        second = run(root, timeout=120)
        refused_in = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    assert second.returncode == 2, second.stderr
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "another steer run holds" in lines[0] and f"pid {first.pid}" in lines[0], lines
    assert refused_in < 30  # at once: no flow, no model load


@pytest.mark.parametrize("point", SAMPLED, ids=[p.name for p in SAMPLED])
def test_kill_9_then_rerun_ends_like_an_undisturbed_run(point, reference, tmp_path) -> None:
    """No process of the killed run is alive 5 s after the kill (its group, or its main process alone), and the
    next run, finding none of them, ends in the undisturbed run's state."""
    root = fresh_project(tmp_path / "project")
    killed = run_killed_at(root, point, tmp_path / "killed.log")
    assert killed.landed, (tmp_path / "killed.log").read_text()[-2000:]
    assert not killed.survivors, killed.survivors
    again = run(root)
    assert again.returncode == 0, (tmp_path / "killed.log").read_text()[-2000:] + again.stderr[-3000:]
    assert state(root) == reference["state"]


def _tracking_server_project(root: Path) -> tuple[Path, int, str]:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    return make_project(root, {**PARAMS, "tracking": {"uri": uri, "experiment": "faults"}}), port, uri


def test_a_tracking_server_that_is_down_is_refused_before_any_work(tmp_path) -> None:
    root, _, _ = _tracking_server_project(tmp_path / "project")
    down = run(root, timeout=120)
    assert down.returncode == 2 and "not reachable" in down.stderr, down.stderr
    assert not (root / "dvc.lock").exists() and not (root / "data").exists()


@pytest.mark.skipif(TRACKING_SERVER_KILLED not in CHOSEN, reason="another crash scenario is this commit's sample "
                    "(STEER_KILL_POINTS=all runs every one)")
def test_tracking_server_killed_during_a_run_then_the_rerun_registers_once(reference, tmp_path) -> None:
    root, port, uri = _tracking_server_project(tmp_path / "project")
    store = tmp_path / "store"
    store.mkdir()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
           "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = start_server(cmd, tmp_path / "server.log", env, tmp_path)
    try:
        wait_http(f"{uri}/health", server, tmp_path / "server.log", 180)
        proc = start_run(root, tmp_path / "run.log", MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
                         MLFLOW_HTTP_REQUEST_TIMEOUT="10")
        for line in proc.stdout:  # the server goes away once the steer's outputs are pushed, before registration
            if "pushed to DVC remote" in line:
                stop_server(server)
                break
        proc.communicate(timeout=600)  # keep reading: a full pipe would stall the run
        assert proc.returncode != 0
        server = start_server(cmd, tmp_path / "server2.log", env, tmp_path)
        wait_http(f"{uri}/health", server, tmp_path / "server2.log", 180)
        again = run(root)
        assert again.returncode == 0, again.stderr[-3000:]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        vs = client.search_model_versions(f"name='{NAME}'")
        assert [str(v.version) for v in vs] == ["1"]
        assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
        assert vs[0].tags["steer.sha256"] == reference["state"]["versions"][0][1]
    finally:
        stop_server(server)


def test_a_truncated_hidden_state_cache_is_discarded_and_rebuilt(tiny_lm, tmp_path, caplog) -> None:
    from steer_core.model.hidden import cached_hidden_states

    texts = ["one small text", "another small text here", "and a third one"]
    first, hit = cached_hidden_states(tiny_lm, texts, 16, tmp_path)
    assert not hit
    (path,) = tmp_path.glob("hidden-*.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    again, hit = cached_hidden_states(tiny_lm, texts, 16, tmp_path)
    assert not hit and "corrupt hidden-state cache" in caplog.text
    torch.testing.assert_close(again.h, first.h, rtol=0, atol=0)
    assert cached_hidden_states(tiny_lm, texts, 16, tmp_path)[1]  # rebuilt: a hit again


def test_a_truncated_converted_model_cache_is_discarded_and_rebuilt(default_dir, default_lm, tmp_path) -> None:
    cache = tmp_path / "cache"
    copy = cache / "models" / default_dir.name
    shutil.copytree(default_dir, copy)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 3)
    code = "from steer_core.model.lm import load_lm; print(load_lm('default', device='cpu').fingerprint)"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "STEER_CACHE_DIR": str(cache)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "discarding the converted-model cache" in proc.stderr
    assert proc.stdout.split()[-1] == default_lm.fingerprint
    assert weights.stat().st_size == (default_dir / "model.safetensors").stat().st_size


def _read_only_mounts_work(tmp: Path) -> bool:
    probe = tmp / "probe"
    probe.mkdir()
    cmd = f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe} && ! touch {probe}/x 2>/dev/null"
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "sh", "-c", cmd], capture_output=True).returncode == 0


def test_a_read_only_project_is_refused_before_any_work(tmp_path) -> None:
    """The project is a read-only bind mount in a private mount namespace (root writes through permissions, not
    through a read-only mount)."""
    if not _read_only_mounts_work(tmp_path):
        pytest.skip("no private mount namespace here (unshare -m) to make a read-only project")
    root = make_project(tmp_path / "project", PARAMS, with_git=False)
    script = (f"mount --bind {root} {root} && mount -o remount,bind,ro {root} && "
              f"exec {BIN / 'steer'} run --params {root / 'params.yaml'}")
    env = {**run_env(tmp_path), "PREFECT_HOME": str(root / ".prefect")}  # the project holds nothing but its files
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "not writable" in lines[0], proc.stderr
    assert sorted(p.name for p in root.iterdir()) == sorted([".dvc", ".dvcignore", ".gitignore", "dvc.yaml",
                                                             "params.yaml", "steer_core"])
