"""MLflow tracking for a pipeline run: where it writes, and what a run records about its inputs.

The embedded default is a SQLite store and an artifact folder inside the project; any tracking server works by
URI (``tracking.uri`` in params.yaml, or MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import mlflow
from mlflow.tracking import MlflowClient

from steer_core.config import Params, TrackingConfig
from steer_core.files import file_sha256


# The URI configure() last took from params. mlflow.set_tracking_uri exports it as MLFLOW_TRACKING_URI, so without
# this a second configure() in the same process (another project, edited params) would mistake it for the user's.
_from_params: str | None = None


def configure(tracking: TrackingConfig, root: Path, create: bool = True) -> str:
    """Point MLflow at the configured store (relative sqlite paths and artifact folders live under ``root``).

    ``create=False`` (read-only commands such as ``steer checkout``): a missing sqlite store is an error, and no
    experiment is created."""
    global _from_params
    env = os.environ.get("MLFLOW_TRACKING_URI")
    user_env = bool(env) and env != _from_params
    uri = env if user_env else tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(root / uri[len('sqlite:///'):]).resolve()}"
    if not create and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"no MLflow registry at {uri}: nothing has been registered in this project yet "
                                f"(run `steer run`), or set tracking.uri / MLFLOW_TRACKING_URI")
    _from_params = None if user_env else uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if not create:
        return uri
    client = MlflowClient()
    if client.get_experiment_by_name(tracking.experiment) is None:
        location = None
        if not uri.startswith("http"):
            location = (root / tracking.artifact_location).resolve().as_uri()
        client.create_experiment(tracking.experiment, artifact_location=location)
    mlflow.set_experiment(tracking.experiment)
    return uri


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested params → MLflow params ``a.b.c`` (values as strings, at most 6000 chars)."""
    out: dict[str, str] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return {k: v[:6000] for k, v in out.items()}


def metric_name(system: str, strength: float, key: str) -> str:
    """``candidate/s-4/control``: MLflow metric names allow letters, digits, _ - . / and spaces."""
    return f"{system}/s{strength:g}/{key}"


def log_eval_metrics(doc: dict) -> None:
    """Every system × strength × headline metric, plus the recommended operating point."""
    metrics: dict[str, float] = {}
    for system, sysdoc in doc["systems"].items():
        for row in sysdoc["rows"]:
            for key in ("control", "ppl", "ppl_increase", "distinct_1", "distinct_2", "distinct_3",
                        "positive_rate", "avg_max_toxicity", "toxicity_probability"):
                if key in row and row[key] == row[key]:
                    metrics[metric_name(system, row["strength"], key)] = float(row[key])
        for key, value in sysdoc["recommended"].items():
            if isinstance(value, (int, float)) and value == value:
                metrics[f"{system}/recommended/{key}"] = float(value)
    metrics["base/ppl"] = float(doc["base"]["ppl"])
    metrics["base/control"] = float(doc["base"]["control"])
    mlflow.log_metrics(metrics)


def log_steer_run(params: Params, name: str, root: Path, tags: dict[str, str], trained: bool, doc: dict | None) -> None:
    """Everything a reviewer needs in the steer's MLflow run: params, lineage tags, data card, metrics, artifacts."""
    from steer_core.pipeline import SteerPaths, steer_spec

    spec = steer_spec(params, name)
    paths = SteerPaths(root, name)
    card = json.loads(paths.data_card.read_text()) if paths.data_card.exists() else {}
    mlflow.log_params(flatten("", {"model": params.model, "seed": params.runtime.seed, **spec.model_dump()}))
    mlflow.set_tags({"steer": name, "data.content_hash": card.get("content_hash", ""),
                     "steer.sha256": file_sha256(paths.steer), "trained": str(trained).lower(), **tags})
    mlflow.log_dict(card, "data/card.json")
    mlflow.log_artifact(str(paths.steer), "steer")
    if paths.steer_card.exists():
        mlflow.log_artifact(str(paths.steer_card), "steer")
        timings = json.loads(paths.steer_card.read_text()).get("run", {})
        mlflow.log_metrics({f"train/{k}": float(v) for k, v in timings.items() if isinstance(v, (int, float))})
    if doc is not None:
        log_eval_metrics(doc)
        mlflow.log_dict(doc, "evaluation/comparison.json")
        for p in (paths.metrics, paths.report, paths.samples, paths.explain):
            if p.exists():
                mlflow.log_artifact(str(p), "evaluation")
        if paths.plots.exists():
            mlflow.log_artifacts(str(paths.plots), "evaluation/plots")
