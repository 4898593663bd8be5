"""Prefect tasks: each a thin call into ``steer_core.pipeline`` plus MLflow logging.

Stages skip themselves when their inputs are unchanged: each writes a stamp (the hash of everything it read) beside
its outputs, and a rerun with the same hash and the outputs present returns at once. That is what makes a second
``steer run`` with nothing changed fast, and an unchanged steer never retrained.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from prefect import get_run_logger, task

from steer_core.config import Params, load_params
from steer_core.gates import decide
from steer_core.lm import LoadedLM, load_lm, set_threads
from steer_core.pipeline import SteerPaths, evaluate_stage, prepare_stage, steer_spec, train_stage

from . import registry, tracking


@dataclass
class SteerResult:
    """What the pipeline did for one steer; one row of the summary table."""

    steer: str
    trained: bool = False
    version: str | None = None
    promoted: bool = False
    champion: str | None = None
    status: str = ""
    reasons: list[str] = field(default_factory=list)
    headline: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None


@functools.lru_cache(maxsize=2)
def shared_lm(spec: str, device: str, threads: int | None) -> LoadedLM:
    """One base model per process, shared by every task and steer of a run."""
    set_threads(threads)
    return load_lm(spec, device)


_SHARED_LOCK = threading.Lock()


def lm_for(params: Params) -> LoadedLM:
    with _SHARED_LOCK:  # parallel steer chains must share one load, not race two
        return shared_lm(params.model, params.runtime.device, params.runtime.threads)


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _fresh(stamp: Path, key: str, *outputs: Path) -> bool:
    return stamp.is_file() and stamp.read_text().strip() == key and all(p.exists() for p in outputs)


@task(name="prepare", retries=2, retry_delay_seconds=5)
def prepare_task(params_path: str, name: str, root: str) -> dict:
    """Data for one steer; retried because hub sources can fail transiently."""
    params, paths = load_params(params_path), SteerPaths(Path(root), name)
    spec = steer_spec(params, name)
    key = _hash("prepare", spec.data.model_dump(), [p.model_dump() for p in spec.prompts])
    stamp = paths.prepared / ".stamp"
    if _fresh(stamp, key, paths.data_card, paths.prompts, paths.prepared / "train.jsonl"):
        get_run_logger().info("prepare %s: inputs unchanged, reusing %s", name, paths.prepared)
        return json.loads(paths.data_card.read_text())
    card = prepare_stage(params, name, Path(root))
    stamp.write_text(key)
    return card.to_dict() if hasattr(card, "to_dict") else dict(card)


@task(name="train")
def train_task(params_path: str, name: str, root: str, data_hash: str) -> dict:
    """Fit the steer unless the data, the train settings and the base model are all unchanged."""
    params, paths = load_params(params_path), SteerPaths(Path(root), name)
    spec = steer_spec(params, name)
    key = _hash("train", spec.train.model_dump(), data_hash, params.model, params.runtime.seed)
    stamp = paths.steer.with_suffix(".stamp")
    if _fresh(stamp, key, paths.steer):
        get_run_logger().info("train %s: data and settings unchanged, reusing %s", name, paths.steer)
        return {"path": str(paths.steer), "sha256": tracking.file_sha256(paths.steer), "trained": False}
    train_stage(params, name, Path(root), lm=lm_for(params), progress=False)
    stamp.write_text(key)
    return {"path": str(paths.steer), "sha256": tracking.file_sha256(paths.steer), "trained": True}


@task(name="fetch-champion", retries=2, retry_delay_seconds=5)
def champion_task(name: str, root: str, candidate_sha256: str) -> dict | None:
    """The current champion's version and steer file (None for a first model; no download when it equals
    the candidate)."""
    mv = registry.get_champion(name)
    if mv is None:
        return None
    sha = mv.tags.get("steer.sha256", "")
    if sha == candidate_sha256:
        return {"version": str(mv.version), "path": None, "sha256": sha}
    dst = Path(root) / "artifacts" / "champions" / name / str(mv.version)
    path = registry.download_steer(name, str(mv.version), dst_path=dst)
    return {"version": str(mv.version), "path": str(path), "sha256": sha}


@task(name="find-judged-version")
def judged_version_task(name: str, sha256: str, champion_version: str | None) -> dict | None:
    """A version of this very steer already judged by the gate against the current champion (None otherwise):
    re-evaluating it could only repeat the verdict."""
    mv = registry.find_version(name, sha256)
    if mv is None or "gate.passed" not in mv.tags or mv.tags.get("gate.champion") != (champion_version or "none"):
        return None
    return {"version": str(mv.version), "passed": mv.tags["gate.passed"] == "true",
            "reasons": mv.tags.get("gate.reasons", "")}


@task(name="evaluate")
def evaluate_task(params_path: str, name: str, root: str, champion_path: str | None) -> dict:
    """Candidate, champion and baseline on the same prompts in one run."""
    params = load_params(params_path)
    logger = get_run_logger()
    return evaluate_stage(params, name, Path(root), lm=lm_for(params),
                          champion=Path(champion_path) if champion_path else None, progress=False,
                          log=logger.info)


@task(name="register-and-promote", retries=1, retry_delay_seconds=5)
def promote_task(params_path: str, name: str, root: str, doc: dict, champion: dict | None, run_id: str,
                 dry_run: bool) -> dict:
    """Register the candidate as a new version; move ``champion`` only when the gate passes."""
    params, paths = load_params(params_path), SteerPaths(Path(root), name)
    spec = steer_spec(params, name)
    cand = doc["systems"]["candidate"]["recommended"]
    champ = doc["systems"].get("champion", {}).get("recommended") if champion else None
    decision = decide(cand, champ, spec.gate)
    with mlflow.start_run(run_id=run_id, nested=True):
        mv = registry.find_version(name, tracking.file_sha256(paths.steer))  # same file: same version
        if mv is None:
            mv = registry.log_steer_model(paths.steer, name, default_strength=float(cand["strength"]),
                                          metrics={f"recommended_{k}": v for k, v in cand.items()
                                                   if isinstance(v, (int, float))},
                                          device=params.runtime.device)
        mlflow.set_tags({"gate.passed": str(decision.passed).lower(), "gate.summary": decision.summary()[:5000],
                         "registered_version": str(mv.version)})
    result = registry.promote(name, str(mv.version), decision, dry_run=dry_run)
    return {"version": str(mv.version), "promoted": result.promoted, "champion": result.champion,
            "passed": decision.passed, "reasons": decision.reasons}


def log_steer_run(params: Params, name: str, root: Path, card: dict, trained: dict, doc: dict | None) -> None:
    """Everything a reviewer needs in the steer's MLflow run: params, data card, hashes, metrics, artifacts."""
    spec = steer_spec(params, name)
    paths = SteerPaths(root, name)
    mlflow.log_params(tracking.flatten("", {"model": params.model, "seed": params.runtime.seed,
                                            **spec.model_dump()}))
    mlflow.set_tags({"steer": name, "git_commit": tracking.git_commit(root),
                     "data.content_hash": card.get("content_hash", ""), "steer.sha256": trained["sha256"],
                     "trained": str(trained["trained"]).lower(), **tracking.dvc_lock_hashes(root, name)})
    mlflow.log_dict(card, "data/card.json")
    mlflow.log_artifact(str(paths.steer), "steer")
    if paths.steer_card.exists():
        mlflow.log_artifact(str(paths.steer_card), "steer")
    if doc is not None:
        tracking.log_eval_metrics(doc)
        for p in (paths.metrics, paths.report, paths.samples, paths.explain):
            if p.exists():
                mlflow.log_artifact(str(p), "evaluation")
        if paths.plots.exists():
            mlflow.log_artifacts(str(paths.plots), "evaluation/plots")
