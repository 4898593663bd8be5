"""``python -m flows.evaluate_stage NAME``: dvc.yaml's evaluate stage, on the configured executor.

With ``runtime.executor.kind: local`` this is exactly ``python -m steer_core.pipeline evaluate NAME`` (and imports
no Prefect). With ``dask`` the same stage runs, its shards as Prefect tasks on the run's Dask cluster
(``STEER_DASK_ADDRESS``, set by ``steer run``), the executor's ``address``, or, for a stage run by hand
(``dvc repro``), a LocalCluster started for this stage. The outputs are the same bytes either way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.evaluate_stage", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a steer configured in params.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from steer_core.config import load_params
    from steer_core.pipeline import run_stage

    try:
        params = load_params(args.params)
    except Exception:  # noqa: BLE001 - run_stage reports a bad params file in its one-line form
        params = None
    if params is None or params.runtime.executor.kind == "local":
        run_stage("evaluate", args.name, args.params, progress=not args.quiet)
        return
    root = args.params.resolve().parent  # Prefect's state in the project, as `steer` keeps it (for `dvc repro`)
    for key, value in {"PREFECT_HOME": root / ".prefect", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}.items():
        os.environ.setdefault(key, str(value))
    from flows.executors import executor

    with executor(params, log=lambda m: print(m, file=sys.stderr)):
        run_stage("evaluate", args.name, args.params, progress=False)


if __name__ == "__main__":
    main()
