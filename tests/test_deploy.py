"""`steer deploy --cron` against a real Prefect server: the deployment appears with its schedule and parameters,
and a run of it (triggered now instead of waiting for the cron) is picked up by the served process and runs the
whole pipeline: prepare, train, evaluate, register."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from projects import make_project, prefect_home
from servers import free_port, start_server, stop_server, wait_http
from tiny_pipeline import tiny_params

ROOT = Path(__file__).resolve().parents[1]
CRON = "0 3 * * 1"
DEPLOYMENT = "steer-pipeline/test-weekly"


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        try:
            got = predicate()
        except Exception:  # noqa: BLE001 - not up yet
            got = None
        if got:
            return got
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
def test_deploy_serves_a_cron_deployment_that_runs_the_pipeline(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", tiny_params(
        "sentiment", tracking={"uri": "sqlite:///mlflow.db", "experiment": "deploy-test"}))
    params = project / "params.yaml"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_REGISTRY"))}
    env.update(PREFECT_HOME=prefect_home(tmp_path / ".prefect"), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    logs = tmp_path / "logs"
    logs.mkdir()
    server = start_server([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                           str(port)], logs / "server.log", env, tmp_path)
    served = None
    try:
        wait_http(f"{api}/health", server, logs / "server.log", 180)
        served = start_server([sys.executable, "-m", "flows.cli", "deploy", "--cron", CRON, "--name",
                               "test-weekly", "--params", str(params)], logs / "deploy.log", env, project)
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        async def deployment():
            async with get_client() as client:
                return await client.read_deployment_by_name(DEPLOYMENT)

        async def start_run():
            async with get_client() as client:
                dep = await client.read_deployment_by_name(DEPLOYMENT)
                return await client.create_flow_run_from_deployment(dep.id)

        async def state_of(run_id):
            async with get_client() as client:
                return (await client.read_flow_run(run_id)).state

        with temporary_settings({PREFECT_API_URL: api}):
            dep = _wait(lambda: asyncio.run(deployment()), 180, "the served deployment", served)
            assert [s.schedule.cron for s in dep.schedules] == [CRON]
            assert dep.parameters == {"params_path": str(params.resolve()), "root": str(project.resolve())}

            run = asyncio.run(start_run())  # what the scheduler does at 03:00 on Mondays, now
            state = _wait(lambda: (lambda st: st if st and st.is_final() else None)(asyncio.run(state_of(run.id))),
                          600, "the deployment's flow run", served)
        assert state.is_completed(), (state, (logs / "deploy.log").read_text()[-3000:])
    finally:
        if served is not None:
            stop_server(served)
        stop_server(server)

    # the served run did the whole job in the project
    assert (project / "metrics" / "sentiment.json").is_file()
    assert (project / "artifacts" / "steers" / "sentiment.safetensors").is_file()
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert [str(v.version) for v in client.search_model_versions("name='sentiment'")] == ["1"]
    assert str(client.get_model_version_by_alias("sentiment", "champion").version) == "1"
