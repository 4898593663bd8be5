"""`steer deploy --pool` against real servers: a Prefect server, an MLflow tracking server and a `prefect worker`
of a process work pool, each a subprocess. The worker picks up a run of the deployment and runs the whole tiny
pipeline, which registers and promotes v1 on the tracking server. A local sqlite store is refused for a pool."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from projects import make_project
from servers import free_port, start_server, stop_server, wait_http
from test_deploy import _wait
from tiny_pipeline import tiny_params

ROOT = Path(__file__).resolve().parents[1]
POOL = "steer-test-pool"
DEPLOYMENT = "steer-pipeline/pool-test"


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_REGISTRY", "PREFECT_"))}
    env.update(PREFECT_HOME=str(tmp / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONWARNINGS="ignore",
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
def test_a_pool_worker_runs_the_deployment_and_promotes_v1_on_the_tracking_server(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    mlflow_port, prefect_port = free_port(), free_port()
    tracking = f"http://127.0.0.1:{mlflow_port}"
    api = f"http://127.0.0.1:{prefect_port}/api"
    project = make_project(tmp_path / "project", tiny_params(
        "sentiment", tracking={"uri": tracking, "experiment": "pool-test"}))
    params = project / "params.yaml"
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
                                   "pool-test", "--params", str(params)], cwd=project, env=env, capture_output=True,
                                  text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        assert deployed.stdout.strip() == DEPLOYMENT
        # a worker elsewhere: its own working directory and state, only the API and the pool in common
        worker_home = tmp_path / "worker"
        worker_home.mkdir()
        procs.append(start_server([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
                                  logs / "worker.log", _env(worker_home, PREFECT_API_URL=api), worker_home))

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        async def start_run():
            async with get_client() as client:
                dep = await client.read_deployment_by_name(DEPLOYMENT)
                assert dep.work_pool_name == POOL
                assert dep.parameters == {"params_path": str(params.resolve()), "root": str(project.resolve())}
                return await client.create_flow_run_from_deployment(dep.id)

        async def state_of(run_id):
            async with get_client() as client:
                return (await client.read_flow_run(run_id)).state

        with temporary_settings({PREFECT_API_URL: api}):
            run = asyncio.run(start_run())
            state = _wait(lambda: (lambda st: st if st and st.is_final() else None)(asyncio.run(state_of(run.id))),
                          900, "the pool worker's flow run", procs[2])
        assert state.is_completed(), (state, (logs / "worker.log").read_text()[-4000:])
    finally:
        for proc in reversed(procs):
            stop_server(proc)

    # the worker's run did the whole job: DVC outputs in the project, v1 registered and promoted on the server
    assert (project / "metrics" / "sentiment.json").is_file()
    assert not (project / "mlflow.db").exists()
    assert any((tmp_path / "artifacts").rglob("*.safetensors"))
    import sqlite3

    db = sqlite3.connect(tmp_path / "tracking.db")
    versions = db.execute("select version from model_versions where name = 'sentiment'").fetchall()
    aliases = dict(db.execute("select alias, version from registered_model_aliases where name = 'sentiment'"))
    assert versions == [(1,)] and aliases.get("champion") == 1, (versions, aliases)
