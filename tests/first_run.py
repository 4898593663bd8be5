"""The tiny pipeline's first ``steer run``, shared by the modules that start from it: tests/test_pipeline.py (the
flow, the MLflow record, reruns, the gate), tests/test_lineage.py (DVC's lock and remote, lineage tags, checkout) and
tests/test_faults.py (the undisturbed state every crash and rerun must end in).

A first run of the tiny project takes about a minute on 2 cores, and the three modules begin with the same one.
tests/conftest.py hands the three files to one xdist worker, so the run happens once a suite, in whichever module
asks first, inside that module's Prefect harness. No test changes this project: a test that runs the flow
again, or changes a file, works on its own copy (``projects.copy_project``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from projects import git, isolated_tracking, make_project, sha256
from tiny_pipeline import tiny_params

NAME = "sentiment"
EXPERIMENT = "steer-e2e-test"
TINY_PARAMS = tiny_params(
    NAME, tracking={"uri": "sqlite:///mlflow.db", "experiment": EXPERIMENT, "artifact_location": "mlartifacts"})
#: The files version 1 names by their dvc.lock md5 (and ``steer checkout`` restores)
V1_FILES = [f"data/prepared/{NAME}/train.jsonl", f"data/prepared/{NAME}/val.jsonl",
            f"data/prepared/{NAME}/card.json", f"data/prompts/{NAME}.jsonl", f"artifacts/steers/{NAME}.safetensors",
            f"artifacts/steers/{NAME}.json"]

_first: dict[str, Any] | None = None


def run_flow(root: Path, **kwargs: Any) -> tuple[list[dict], float]:
    """The flow in this process on ``root``'s params (a Prefect API must be active): its rows and seconds. MLflow's
    URIs are the project's for the run and forgotten after it."""
    from flows.steer_pipeline import steer_pipeline

    with isolated_tracking():
        t0 = time.perf_counter()
        rows = steer_pipeline(params_path=str(root / "params.yaml"), root=str(root), **kwargs)
        return rows, time.perf_counter() - t0


def first_run_done() -> bool:
    """Whether this process has made the first run already (a caller without a Prefect API then needs none)."""
    return _first is not None


def first_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The project after its first run (a git repo with one commit, a sqlite MLflow store) and what that run left:
    its rows and seconds, the commit, the steer's mtime and sha256, and a snapshot of ``V1_FILES``. Runs the flow in
    this process on the first call (a Prefect API must be active: the caller's ``harness``); later calls return it."""
    global _first
    if _first is None:
        root = make_project(tmp_path_factory.mktemp("pipeline") / "project", TINY_PARAMS)
        params = root / "params.yaml"
        rows, seconds = run_flow(root)
        snapshot = tmp_path_factory.mktemp("v1")
        for rel in V1_FILES:
            (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / rel, snapshot / rel)
        steer = root / "artifacts" / "steers" / f"{NAME}.safetensors"
        _first = {"root": root, "params": params, "uri": f"sqlite:///{root / 'mlflow.db'}",
                  "commit": git(root, "rev-parse", "HEAD"), "rows": rows, "first_seconds": seconds,
                  "snapshot": snapshot, "steer_mtime": steer.stat().st_mtime_ns, "steer_sha": sha256(steer)}
    return _first

