"""The train stage's fit as a task on the Dask worker that declares ``runtime.train_on.resources`` (a GPU node).

DVC still runs the train stage on the flow's host (``python -m flows.stages train NAME``), so ``dvc.lock``, the
DVC cache and the workspace stay the one record of what was trained; only the fit moves. The stage reads its
inputs here (:func:`steer_core.stages.fit_job`: the prepared rows, the train settings), sends them to the worker as
the task's arguments, and writes the steer bytes that come back, so the worker needs nothing of this project's
working directory: its own copy of the package, its own model cache, its own hidden-state cache. A fit there is the
same computation as here (the same steer bytes at the same torch thread count and device kind).

Placement is Dask's (``dask.annotate(resources=...)`` on a Prefect task of the ``DaskTaskRunner``): a worker started
with ``dask worker ADDRESS --resources "GPU=1"`` takes the fit, and no other does.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from prefect import flow, task

from steer_core.config import Params
from steer_core.errors import SteerError
from steer_core.paths import SteerPaths
from steer_core.stages import FitJob, fit_bytes, fit_job, write_steer
from tasks.cluster import cluster_workers, declaring, resources_text

from flows.executors import worker_lm, worker_name


class NoResourceWorker(SteerError):
    """No worker of the cluster declares what ``runtime.train_on`` asks for: the fit would wait forever."""


@task(name="fit-steer", task_run_name="fit-{job.name}")
def fit_task(params: Params, job: FitJob) -> dict:
    """Fit ``job`` on whichever worker Dask placed it, with that worker's model and caches; the steer file's bytes
    and its card come back (the card says where and how long)."""
    lm, loaded = worker_lm(params.model, params.runtime.device, params.runtime.threads)
    work = Path(tempfile.gettempdir()) / f"steer-fit-{job.key()}"  # a retry on this worker resumes
    steer, card, _ = fit_bytes(lm, job, work, progress=False)
    shutil.rmtree(work, ignore_errors=True)
    card["run"].update(worker=worker_name(), device=str(lm.device), load_seconds=round(loaded, 2))
    return {"steer": steer, "card": card}


@flow(name="fit-on-cluster", log_prints=True)
def fit_on_cluster(params: Params, job: FitJob) -> dict:
    """The fit as one task on this flow's task runner (a DaskTaskRunner), on a worker with the resources."""
    import dask

    with dask.annotate(resources=dict(params.runtime.train_on.resources)):
        future = fit_task.submit(params, job)
    return future.result()


def train_on_cluster(params: Params, name: str, root: Path, address: str,
                     log: Callable[[str], None] = print) -> Path:
    """The train stage with the fit on the cluster at ``address``: inputs read here, the fit on a worker with
    ``runtime.train_on.resources``, the steer file and its card written here (together or neither)."""
    resources = dict(params.runtime.train_on.resources)
    wanted = resources_text(resources)
    able = declaring(cluster_workers(address), resources)
    if not able:
        raise NoResourceWorker(f"no worker of the Dask cluster at {address} declares resources {wanted} "
                               f"(runtime.train_on): start one with `dask worker {address} --resources \"{wanted}\"`")
    job = fit_job(params, name, root)  # a missing input fails here, before anything is sent
    log(f"train@{name}: fitting on a Dask worker with {wanted} ({', '.join(able)})")
    from prefect_dask import DaskTaskRunner

    result = fit_on_cluster.with_options(task_runner=DaskTaskRunner(address=address))(params, job)
    paths = SteerPaths(Path(root), name)
    write_steer(paths.steer, result["steer"], result["card"])
    run = result["card"]["run"]
    log(f"train@{name}: fitted on {run['worker']} ({run['device']}) in {run.get('fit_seconds', 0):.1f} s")
    return paths.steer
