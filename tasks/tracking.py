"""MLflow tracking for a pipeline run: where it writes, and what a run records about its inputs.

The embedded default is a SQLite store and an artifact folder inside the project; any tracking server works by
URI (``tracking.uri`` in params.yaml, or MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

import mlflow
from mlflow.tracking import MlflowClient

from steer_core.config import TrackingConfig


# The URI configure() last took from params. mlflow.set_tracking_uri exports it as MLFLOW_TRACKING_URI, so without
# this a second configure() in the same process (another project, edited params) would mistake it for the user's.
_from_params: str | None = None


def configure(tracking: TrackingConfig, root: Path) -> str:
    """Point MLflow at the configured store (relative sqlite paths and artifact folders live under ``root``)."""
    global _from_params
    env = os.environ.get("MLFLOW_TRACKING_URI")
    user_env = bool(env) and env != _from_params
    uri = env if user_env else tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(root / uri[len('sqlite:///'):]).resolve()}"
    _from_params = None if user_env else uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
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


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dvc_lock_hashes(root: Path, name: str) -> dict[str, str]:
    """The md5s dvc.lock records for this steer's stages (empty when DVC has not run)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    import yaml

    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    out = {}
    for stage, body in stages.items():
        if f"@{name}" not in stage:
            continue
        for o in body.get("outs", []) or []:
            out[f"dvc.{stage.split('@')[0]}.{Path(o['path']).name}"] = o.get("md5", "")
    return out


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
