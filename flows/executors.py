"""Where the evaluation's shards run: this process (``runtime.executor.kind: local``) or a Dask cluster (``dask``),
each shard a Prefect task on Prefect's ``DaskTaskRunner``.

The shards themselves are the fixed plan of ``steer_core.evaluate.driver``, so results are the same bit for bit on any executor. A
Dask worker loads the base model (and a separate judge, if any) once per process and keeps it for every later shard,
of any steer (:func:`worker_lm`). ``address: null`` starts a ``LocalCluster`` of ``workers`` processes for the whole
run (every steer's evaluate stage and champion comparison share it); an address joins an existing scheduler, whose
workers need this package installed and the same model reachable. A shard's task carries everything it samples (the
prompts, the steers' weights, the protocol), so a worker needs nothing of the flow's working directory; its task
runs report to the run's Prefect API (``PREFECT_API_URL``, which must be reachable from their machines).

The evaluate stage (and, with ``runtime.train_on``, the train stage: ``flows.train_on``) runs as DVC's subprocess
(``python -m flows.stages STAGE NAME``): it finds the run's cluster in ``STEER_DASK_ADDRESS`` and the run's Prefect
API (the ephemeral one of ``steer run`` included) in ``PREFECT_API_URL``, both set by :func:`executor` for the
processes it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Callable, Iterator

from prefect import flow, task

from steer_core.config import ExecutorConfig, Params
from steer_core.evaluate.driver import Shard, ShardResult, sample_shard, use_runner
from steer_core.model.lm import LOADS, LoadedLM, is_shared, shared_lm

ADDRESS_ENV = "STEER_DASK_ADDRESS"

# ------------------------------------------------------------------------------------------------ on a worker
def worker_lm(spec: str, device: str, threads: int | None) -> tuple[LoadedLM, float]:
    """The model ``spec`` in this worker process (``shared_lm``: loaded on first use and kept for every later shard,
    of any steer), and the seconds this call spent loading it (0.0 when it was already loaded)."""
    fresh = not is_shared(spec, device)
    lm = shared_lm(spec, device, threads)
    return lm, (LOADS[-1]["seconds"] if fresh else 0.0)


def worker_name() -> str:
    """This Dask worker's name and pid (for the logs and the steer's card); just the pid outside a worker."""
    try:
        from distributed import get_worker

        return f"{get_worker().name} (pid {os.getpid()})"
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


@task(name="eval-shard", task_run_name="shard-{shard.index}")
def shard_task(params: Params, shard: Shard) -> ShardResult:
    """Sample and score one shard of prompts on whichever worker runs it, with that worker's own copy of the model."""
    threads = shard.cfg.threads  # the protocol's count, whatever the worker was started with: the same numbers
    lm, loaded = worker_lm(params.model, params.runtime.device, threads)
    judge = None
    if shard.cfg.judge != "base":
        judge, more = worker_lm(shard.cfg.judge, params.runtime.device, threads)
        loaded += more
    t1 = time.perf_counter()
    samples = sample_shard(lm, shard, judge)
    return ShardResult(shard.index, samples, time.perf_counter() - t1, worker_name(), loaded)


@flow(name="evaluate-shards", log_prints=True)
def evaluate_shards(params: Params, shards: list[Shard]) -> list[ShardResult]:
    """Every shard as a task on this flow's task runner (a DaskTaskRunner), gathered in shard order."""
    futures = [shard_task.submit(params, s) for s in shards]
    return [f.result() for f in futures]


def dask_runner(params: Params, address: str) -> Callable[..., list[ShardResult]]:
    """A ``steer_core.evaluate.driver`` runner: the shards as Prefect tasks on the Dask scheduler at ``address``."""
    from prefect_dask import DaskTaskRunner

    def run(shards: list[Shard], lm=None, judge=None) -> list[ShardResult]:  # the workers use their own models
        return evaluate_shards.with_options(task_runner=DaskTaskRunner(address=address))(params, shards)

    return run


# ------------------------------------------------------------------------------------------------ the cluster
def start_local_cluster(workers: int, threads_per_worker: int, resources: dict[str, float] | None = None):
    """A LocalCluster of ``workers`` processes (torch threads = threads_per_worker in each), no dashboard. Its
    workers report to this process's Prefect API (:func:`share_prefect_api`, called first). ``resources``: what
    each worker declares (``runtime.train_on``'s, so the fit has a place here too: they are this machine)."""
    import dask
    from distributed import LocalCluster

    share_prefect_api()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_worker))  # inherited by the worker processes
    with dask.config.set(QUIET_CLUSTER):  # handed to the worker processes by their nannies
        return LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                            dashboard_address=":0", silence_logs=logging.ERROR, resources=resources)


#: Dask's housekeeping, slowed down for a cluster whose every task is seconds of CPU-bound sampling: with one core
#: per worker, each wake-up is taken from the sampling. Dask's defaults (a 20 ms event-loop tick, a 10 ms
#: statistical profiler in every worker, memory polled every 100 ms) serve interactive dashboards, which this
#: cluster does not run (``bench/dask_eval.py`` measures the scaling). The memory limit is still enforced, once a
#: second.
QUIET_CLUSTER = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.worker.profile.enabled": False,
}


def share_prefect_api() -> None:
    """Let child processes (DVC's stage commands, local Dask workers) report to this process's Prefect API, the
    temporary one of ephemeral mode included. Without it each child starts a temporary API server of its own: slow
    at its start, and then one more busy process per worker that takes CPU from the sampling next to it. In
    ephemeral mode the server is started here if this process has none yet: it
    is the process-wide one Prefect's own client uses, so the flows of this process report to it too."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL"):
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()  # a no-op when this process's flows already started it
    os.environ["PREFECT_API_URL"] = server.api_url


@contextlib.contextmanager
def executor(params: Params, log: Callable[[str], None] = print) -> Iterator[str | None]:
    """Run the block with the configured executor in place for this process and the ones it starts; yields the
    scheduler address (None for ``local``)."""
    cfg: ExecutorConfig = params.runtime.executor
    if cfg.kind == "local":
        yield None
        return
    share_prefect_api()
    saved = os.environ.get(ADDRESS_ENV)
    with contextlib.ExitStack() as stack:
        address = cfg.address or saved
        if address is None:
            t0 = time.perf_counter()
            train_on = params.runtime.train_on
            cluster = stack.enter_context(start_local_cluster(cfg.workers, cfg.threads_per_worker,
                                                              train_on.resources if train_on else None))
            address = cluster.scheduler_address
            log(f"dask: LocalCluster of {cfg.workers} worker process(es) × {cfg.threads_per_worker} thread(s) at "
                f"{address} ({time.perf_counter() - t0:.1f} s to start)")
        else:
            log(f"dask: joining the cluster at {address}")
        os.environ[ADDRESS_ENV] = address
        use_runner(dask_runner(params, address))
        try:
            yield address
        finally:
            use_runner(None)
            if saved is None:
                os.environ.pop(ADDRESS_ENV, None)
            else:
                os.environ[ADDRESS_ENV] = saved
