"""``steer deploy --pool NAME``: the pipeline flow as a deployment of a Prefect work pool, which any
``prefect worker start --pool NAME`` runs, on this machine or another.

A deployment names no path of the machine that deployed it, so it travels: its one pull step enters the worker's own
copy of the project (``$STEER_PROJECT``, which ``env.sh`` sets to the folder it is sourced from), and its parameters
and entrypoint are relative to that copy. The worker's machine keeps its own tool state and caches (its env.sh), and a
run there shares with other machines only what params.yaml names as shared: the tracking server and the DVC remote
(a stage whose outputs the remote already holds is pulled, not re-run). A local ``sqlite:`` tracking store is refused.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

from steer_core.config import Params

ENTRYPOINT = "flows/steer_pipeline.py:steer_pipeline"  # relative to the worker's copy of the project
#: the variable naming a worker machine's copy of the project (env.sh exports it)
PROJECT_ENV = "STEER_PROJECT"
#: tool settings a pool run gets as its environment: switches and URLs only, never a path of this machine (the
#: worker's machine has its own caches and state, set by its env.sh)
RUN_ENV = ("PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
           "DVC_NO_ANALYTICS", "TOKENIZERS_PARALLELISM", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE")
LOCAL_SCHEMES = ("sqlite:", "file:")


def shared_tracking_uri(params: Params) -> str:
    """The tracking URI a pool run will write to; a local store (sqlite, a file path) is refused with one line."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri
    if uri.startswith(LOCAL_SCHEMES) or "://" not in uri:
        raise ValueError(f"--pool runs on a work pool's workers, but tracking.uri is {uri!r}, a store on one machine's "
                         f"disk: set tracking.uri (or MLFLOW_TRACKING_URI) to a shared tracking server, e.g. "
                         f"http://mlflow.internal:5000 (or use --cron alone to serve from this machine)")
    return uri


def check_cron(cron: str) -> None:
    """A one-line ``ValueError`` unless ``cron`` is a cron expression Prefect schedules."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except Exception:
        raise ValueError(f"--cron {cron!r} is not a valid cron expression (e.g. '0 3 * * 1')") from None


def prefect_api(timeout: float = 5.0) -> str:
    """The Prefect server a deployment registers with (PREFECT_API_URL, from the environment or the Prefect
    profile), checked to answer: without one, Prefect would start a temporary server that vanishes with this
    process, and its deployment with it."""
    from tasks.preflight import check_health

    url = os.environ.get("PREFECT_API_URL")
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    if not url and profiles.is_file():  # importing Prefect creates PREFECT_HOME: only when a profile may name a URL
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
    if not url:
        raise ValueError("steer deploy needs a Prefect server: start one (prefect server start) and set "
                         "PREFECT_API_URL, e.g. http://127.0.0.1:4200/api")
    check_health(url, f"Prefect server {url} (PREFECT_API_URL)", "start it, or point PREFECT_API_URL at a running one",
                 timeout)
    return url


def source_dir() -> Path:
    """The directory holding ``flows/``, ``tasks/`` and ``steer_core/``: where this machine loads the flow from."""
    return Path(__file__).resolve().parents[1]


def enter_project() -> dict[str, str]:
    """A pool run's pull step, on the worker's machine: enter that machine's copy of the project, named by
    ``$STEER_PROJECT`` there; returns ``{"directory": ...}`` as Prefect's own steps do."""
    from prefect.deployments.steps import set_working_directory

    folder = os.environ.get(PROJECT_ENV)
    if not folder:
        raise ValueError(f"{PROJECT_ENV} is not set on this worker: start it from its copy of the project after "
                         f"`source env.sh` (which sets {PROJECT_ENV} to that folder)")
    if not (Path(folder) / "dvc.yaml").is_file():
        raise ValueError(f"{PROJECT_ENV}={folder} is not a copy of the steer project (no dvc.yaml there)")
    return set_working_directory(folder)


def project_source():
    """Where a deployment's code is: loaded from this machine's copy to deploy it, run by a worker from its own copy
    (:func:`enter_project`), so the deployment records no path; Prefect's ``LocalStorage`` would record this one."""
    from prefect.runner.storage import LocalStorage

    class ProjectSource(LocalStorage):
        def to_pull_step(self) -> dict[str, Any]:
            return {f"{__name__}.enter_project": {}}

    return ProjectSource(str(source_dir()))


def ensure_pool(pool: str, log: Callable[[str], None] = print) -> str:
    """The work pool ``pool``, created as a ``process`` pool if it does not exist; returns its type."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(pool).type
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            log(f"created work pool {pool!r} (type process)")
            return "process"


def deploy_to_pool(pool: str, name: str, params: Params, params_path: str, root: str, cron: str | None = None,
                   log: Callable[[str], None] = print) -> str:
    """Deploy ``steer_pipeline`` to ``pool`` (with a cron schedule if given); returns ``flow/deployment``."""
    from flows.steer_pipeline import steer_pipeline

    shared_tracking_uri(params)
    if cron is not None:
        check_cron(cron)
    try:  # params.yaml, found in the worker's copy at the same place
        relative = Path(params_path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        raise ValueError(f"--params {params_path}: a pool's workers read the params file from their own copy of the "
                         f"project, so it must be inside the project ({root})") from None
    if params.dvc.remote is None:
        log("warning: params.yaml names no dvc.remote: runs push to the project's default remote; on workers of "
            "other machines that must be shared storage (dvc remote add -d NAME s3://…)")
    kind = ensure_pool(pool, log)
    env = {k: os.environ[k] for k in RUN_ENV if os.environ.get(k)}
    remote = steer_pipeline.from_source(source=project_source(), entrypoint=ENTRYPOINT)
    with contextlib.redirect_stdout(sys.stderr):  # Prefect's own table: stdout carries only the deployment's name
        remote.deploy(name=name, work_pool_name=pool, cron=cron, parameters={"params_path": str(relative),
                                                                             "root": "."},
                      job_variables={"env": env}, build=False, push=False, print_next_steps=False,
                      ignore_warnings=True, description=f"steer pipeline of the project in ${PROJECT_ENV}")
    ref = f"{steer_pipeline.name}/{name}"
    log(f"deployed {ref} to work pool {pool!r} ({kind})" + (f" on cron {cron!r}" if cron else "") +
        f"; start a worker in a copy of the project: source env.sh && prefect worker start --pool {pool}; run now: "
        f"prefect deployment run {ref}")
    return ref
