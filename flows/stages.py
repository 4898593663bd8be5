"""``python -m flows.stages STAGE NAME``: what every dvc.yaml stage runs.

It parses params.yaml once and runs ``steer_core.stages.run_stage``. The evaluate stage runs with the configured
executor in place: with ``runtime.executor.kind: local`` its shards run in this process (no Prefect is imported);
with ``dask`` each shard is a Prefect task on the run's Dask cluster (``STEER_DASK_ADDRESS``, set by ``steer run``),
the executor's ``address``, or, for a stage run by hand (``dvc repro``), a LocalCluster started for this stage. With
``runtime.train_on`` the train stage's fit is a task on that cluster too, on a worker with the named resources
(``flows.train_on``). The outputs are the same bytes either way, so this module is not a DVC dependency: switching
executors re-runs nothing.
A stage never outlives the run that started it, and never works beside a new run (``run``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from steer_core.config import load_params
from steer_core.errors import one_line_errors
from steer_core.stages import STAGES, run_stage


@one_line_errors
def run(stage: str, name: str, params_path: Path, progress: bool = True) -> None:
    """One stage for one steer, in the project that holds ``params_path``.

    Started by a run (``steer run``), it ends the moment that run is gone (``tasks.run_lock.follow_run``), and it
    shares the project's stage lock for as long as it lives, so no new run takes the project over while it works."""
    from tasks.run_lock import follow_run, share_project

    root = params_path.resolve().parent
    follow_run()
    share_project(root)
    params = load_params(params_path)
    on_cluster = (stage == "evaluate" and params.runtime.executor.kind == "dask"
                  or stage == "train" and params.runtime.train_on is not None)
    if not on_cluster:
        run_stage(stage, params, name, root, progress=progress)
        return
    for key, value in {"PREFECT_HOME": root / ".prefect", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}.items():
        os.environ.setdefault(key, str(value))  # Prefect's state in the project, as `steer` keeps it
    from flows.executors import executor

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    with executor(params, log=log) as address:
        if stage == "train":  # the fit on a worker that declares runtime.train_on's resources
            from flows.train_on import train_on_cluster

            params.steer(name)  # an unknown steer fails before any work
            print(f"saved {train_on_cluster(params, name, root, address, log=log)}", file=sys.stderr)
        else:
            run_stage(stage, params, name, root, progress=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.stages", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("name", help="a steer configured in params.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    run(args.stage, args.name, args.params, progress=not args.quiet)


if __name__ == "__main__":
    main()
