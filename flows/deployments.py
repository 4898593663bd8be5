"""``steer deploy --pool NAME``: the pipeline flow as a deployment of a Prefect work pool, from this code's source
directory, so any ``prefect worker start --pool NAME`` (on this machine or another one that sees the same paths)
picks its runs up. A run on a worker writes only to the shared stores named in params.yaml (the tracking server and
the DVC remote), so a worker's local disk is never the only copy: a local ``sqlite:`` tracking store is refused.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable

from steer_core.config import Params

ENTRYPOINT = "flows/steer_pipeline.py:steer_pipeline"
#: tool settings a pool run gets as its environment (the values ``steer`` set for this project: state stays in it)
RUN_ENV = ("PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
           "DVC_NO_ANALYTICS", "DVC_SITE_CACHE_DIR", "TOKENIZERS_PARALLELISM", "MPLCONFIGDIR", "MLFLOW_TRACKING_URI",
           "STEER_CACHE_DIR", "HF_HOME", "HF_HUB_OFFLINE")
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
    """The directory holding ``flows/``, ``tasks/`` and ``steer_core/``: what a pool's workers load the flow from."""
    return Path(__file__).resolve().parents[1]


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
    if params.dvc.remote is None:
        log("warning: params.yaml names no dvc.remote: runs push to the project's default remote; on workers of "
            "other machines that must be shared storage (dvc remote add -d NAME s3://…)")
    kind = ensure_pool(pool, log)
    env = {k: os.environ[k] for k in RUN_ENV if os.environ.get(k)}
    remote = steer_pipeline.from_source(source=str(source_dir()), entrypoint=ENTRYPOINT)
    with contextlib.redirect_stdout(sys.stderr):  # Prefect's own table: stdout carries only the deployment's name
        remote.deploy(name=name, work_pool_name=pool, cron=cron, parameters={"params_path": params_path, "root": root},
                      job_variables={"env": env}, build=False, push=False, print_next_steps=False,
                      ignore_warnings=True, description=f"steer pipeline for {root}")
    ref = f"{steer_pipeline.name}/{name}"
    log(f"deployed {ref} to work pool {pool!r} ({kind})" + (f" on cron {cron!r}" if cron else "") +
        f"; start a worker: prefect worker start --pool {pool}; run now: prefect deployment run {ref}")
    return ref
