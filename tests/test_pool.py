"""`steer deploy --pool` against real servers: a Prefect server, an MLflow tracking server and a `prefect worker`
of a process work pool, each a subprocess, the worker in a second copy of the project (a second machine). The
deployment names no path of the copy that deployed it; the worker runs the whole tiny pipeline in its own copy,
which registers and promotes v1 on the tracking server, and the first copy restores that version through the shared
DVC remote. A local sqlite store is refused for a pool."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from projects import git, machine_env, make_project, prefect_home, second_machine
from servers import free_port, start_server, stop_server, wait_http
from test_deploy import _wait
from tiny_pipeline import tiny_params

ROOT = Path(__file__).resolve().parents[1]
POOL = "steer-test-pool"
DEPLOYMENT = "steer-pipeline/pool-test"


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_REGISTRY", "PREFECT_"))}
    env.update(PREFECT_HOME=prefect_home(tmp / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONWARNINGS="ignore",
               PYTHONPATH=str(ROOT), MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               TMPDIR=str(tmp / "tmp"), PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="2",
               OMP_NUM_THREADS="1", **extra)
    (tmp / "tmp").mkdir(exist_ok=True)
    return env


@pytest.mark.slow  # a `steer deploy` subprocess
def test_pool_deploy_refuses_a_local_sqlite_store(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", tiny_params("sentiment"), with_git=False)  # sqlite:///mlflow.db
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "--pool", POOL, "--params",
                           str(project / "params.yaml")], cwd=project, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "sqlite:///mlflow.db" in lines[0] and "shared tracking server" in lines[0], lines
    assert not (project / "mlflow.db").exists() and not (project / ".prefect").exists()


@pytest.mark.slow
def test_a_worker_in_another_copy_runs_the_deployment_and_the_first_copy_restores_its_version(tmp_path: Path) -> None:
    """The deployment travels: deployed from the first copy of the project, it names no path of it; a ``prefect
    worker`` started in a second copy (another folder, its own code, caches and tool state: a second machine) runs it
    there, pushes to the shared DVC remote and registers and promotes v1 on the tracking server. Run again on a
    workspace and DVC cache emptied, it pulls every stage's outputs from the remote instead of re-running them. And
    ``steer checkout`` in the first copy restores that version from the remote."""
    logs = tmp_path / "logs"
    logs.mkdir()
    mlflow_port, prefect_port = free_port(), free_port()
    tracking = f"http://127.0.0.1:{mlflow_port}"
    api = f"http://127.0.0.1:{prefect_port}/api"
    remote = tmp_path / "dvc-remote"  # shared storage, as s3://bucket/steers would be
    params = tiny_params("sentiment", tracking={"uri": tracking, "experiment": "pool-test"}, dvc={"remote": "shared"})
    first = make_project(tmp_path / "machine-a", params, with_git=False)
    (first / ".dvc" / "config").write_text(f"[core]\n    remote = shared\n['remote \"shared\"']\n    url = {remote}\n")
    git(first, "init", "-q", "-b", "main")
    git(first, "add", "-A")
    git(first, "commit", "-q", "-m", "project")
    second = second_machine(tmp_path / "machine-b", clone_of=first)
    env = _env(tmp_path, PREFECT_API_URL=api)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start_server([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                                   str(mlflow_port), "--workers", "1", "--backend-store-uri",
                                   f"sqlite:///{tmp_path}/tracking.db", "--artifacts-destination",
                                   str(tmp_path / "artifacts")], logs / "mlflow.log", _env(tmp_path), tmp_path))
        procs.append(start_server([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(prefect_port)], logs / "prefect.log", env, tmp_path))
        wait_http(f"{tracking}/health", procs[0], logs / "mlflow.log", 180)
        wait_http(f"{api}/health", procs[1], logs / "prefect.log", 180)

        deployed = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "--pool", POOL, "--name",
                                   "pool-test", "--params", str(first / "params.yaml")], cwd=first, env=env,
                                  capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        assert deployed.stdout.strip() == DEPLOYMENT
        procs.append(start_server([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
                                  logs / "worker.log", machine_env(second, PREFECT_API_URL=api,
                                                                   PREFECT_WORKER_QUERY_SECONDS="2",
                                                                   PREFECT_WORKER_PREFETCH_SECONDS="2"), second))

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        async def read_deployment():
            async with get_client() as client:
                return await client.read_deployment_by_name(DEPLOYMENT)

        async def start_run():
            async with get_client() as client:
                return await client.create_flow_run_from_deployment((await client.read_deployment_by_name(
                    DEPLOYMENT)).id)

        async def state_of(run_id):
            async with get_client() as client:
                return (await client.read_flow_run(run_id)).state

        def run_deployment() -> None:
            run = asyncio.run(start_run())
            state = _wait(lambda: (lambda st: st if st and st.is_final() else None)(asyncio.run(state_of(run.id))),
                          900, "the pool worker's flow run", procs[2])
            assert state.is_completed(), (state, (logs / "worker.log").read_text()[-4000:])

        with temporary_settings({PREFECT_API_URL: api}):
            dep = asyncio.run(read_deployment())
            assert dep.work_pool_name == POOL
            assert dep.parameters == {"params_path": "params.yaml", "root": "."}
            assert dep.pull_steps == [{"flows.deployments.enter_project": {}}] and dep.path is None
            recorded = dep.model_dump_json()
            assert str(first) not in recorded and str(ROOT) not in recorded and str(tmp_path) not in recorded

            t0 = time.perf_counter()
            run_deployment()
            print(f"the deployment's first run on the second copy: {time.perf_counter() - t0:.0f} s")
            first_log = (logs / "worker.log").read_text()
            # the second machine loses its workspace outputs and DVC cache (a fresh clone would have neither)
            lock = yaml.safe_load((second / "dvc.lock").read_text())["stages"]
            steer_bytes = (second / "artifacts/steers/sentiment.safetensors").read_bytes()
            for out in (o for stage in lock.values() for o in stage["outs"]):
                if not out["path"].endswith((".csv", "metrics/sentiment.json")):  # cache: false outputs stay (git)
                    (second / out["path"]).unlink()
            shutil.rmtree(second / ".dvc" / "cache")
            t0 = time.perf_counter()
            run_deployment()
            print(f"its second run, on an emptied workspace and cache: {time.perf_counter() - t0:.0f} s")
        again = (logs / "worker.log").read_text()[len(first_log):]
        # the first copy restores that version from the shared remote (its own DVC cache has never held it)
        restored = subprocess.run([sys.executable, "-m", "flows.cli", "checkout", "sentiment@champion", "--params",
                                   str(first / "params.yaml"), "--out", str(tmp_path / "restored"), "--json"],
                                  cwd=first, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    finally:
        for proc in reversed(procs):
            stop_server(proc)

    # the worker's run did the whole job in the second copy: outputs there, v1 registered and promoted on the server
    assert "prepare@sentiment: running" in first_log and "evaluate@sentiment: running" in first_log, first_log[-3000:]
    assert (second / "metrics" / "sentiment.json").is_file() and not (second / "mlflow.db").exists()
    assert not any((first / d).exists() for d in ("data", "artifacts", "metrics", "mlflow.db", "dvc.lock"))
    assert any((tmp_path / "artifacts").rglob("*.safetensors"))
    for stage in ("prepare", "train", "evaluate"):  # the second run pulled every stage from the shared remote
        assert f"{stage}@sentiment: pulled its outputs from DVC remote 'shared'" in again, again[-4000:]
    assert (second / "artifacts/steers/sentiment.safetensors").read_bytes() == steer_bytes
    import sqlite3

    db = sqlite3.connect(tmp_path / "tracking.db")
    versions = db.execute("select version from model_versions where name = 'sentiment'").fetchall()
    aliases = dict(db.execute("select alias, version from registered_model_aliases where name = 'sentiment'"))
    assert versions == [(1,)] and aliases.get("champion") == 1, (versions, aliases)

    assert restored.returncode == 0, restored.stderr[-3000:]
    doc = json.loads(restored.stdout)
    assert doc["version"] == "1" and "artifacts/steers/sentiment.safetensors" in doc["files"], doc
    assert (tmp_path / "restored/artifacts/steers/sentiment.safetensors").read_bytes() == steer_bytes
