"""The promotion job for one steer, after DVC's stages: champion → compare → gate → register → alias.

Every decision about the registry is here, in order:
1. the candidate equals the champion (same sha256): nothing to judge, nothing to register;
2. the candidate is already registered and was judged against the current champion, under the same gate settings
   and on the same evaluation (``verdict_basis``): the verdict stands;
3. otherwise the champion (if any) is evaluated on the candidate's prompts with the same random numbers, beside the
   candidate's own evaluation (the candidate is not sampled again), the gate decides on the merged document, the
   candidate is registered once (deduplicated by sha256, with its lineage tags), and ``champion`` moves only when
   the gate passed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from prefect import get_run_logger, task

from steer_core.config import GateConfig, Params
from steer_core.evaluate.champion import compare_with_champion
from steer_core.files import file_sha256
from steer_core.gate import decide_doc
from steer_core.paths import SteerPaths
from tasks import mlflow_io


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
    stages: list[dict] = field(default_factory=list)


@task(name="fetch-champion", retries=2, retry_delay_seconds=5)
def champion_task(name: str, root: str, candidate_sha256: str) -> dict | None:
    """The current champion's version and steer file (None for a first model; no download when it equals
    the candidate)."""
    mv = mlflow_io.get_champion(name)
    if mv is None:
        return None
    sha = mv.tags.get("steer.sha256", "")
    if sha == candidate_sha256:
        return {"version": str(mv.version), "path": None, "sha256": sha}
    dst = Path(root) / "artifacts" / "champions" / name / str(mv.version)
    path = mlflow_io.download_steer(name, str(mv.version), dst_path=dst)
    return {"version": str(mv.version), "path": str(path), "sha256": sha}


def verdict_basis(gate: GateConfig, metrics_path: Path) -> str:
    """What a gate verdict rests on besides the steer and the champion: the gate's settings and the candidate's
    evaluation file. Why: a user who loosens the gate, or re-evaluates on more prompts, expects the steer to be
    judged again, not the old verdict repeated. Stored on the version as the tag ``gate.basis``."""
    evaluation = file_sha256(metrics_path) if metrics_path.is_file() else None
    blob = json.dumps({"gate": gate.model_dump(mode="json"), "evaluation": evaluation}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@task(name="find-judged-version")
def judged_version_task(name: str, sha256: str, champion_version: str | None, basis: str) -> dict | None:
    """A version of this very steer the gate already refused against the current champion, under the same gate
    settings and evaluation (``basis``, :func:`verdict_basis`); None otherwise: re-evaluating it could only repeat
    the verdict. A version that passed but is not champion (a crash between the verdict and the alias move) is not
    returned: it is judged again and promoted then."""
    mv = mlflow_io.find_version(name, sha256)
    if (mv is None or mv.tags.get("gate.passed") != "false"
            or mv.tags.get("gate.champion") != (champion_version or "none") or mv.tags.get("gate.basis") != basis):
        return None
    return {"version": str(mv.version), "passed": mv.tags["gate.passed"] == "true",
            "reasons": mv.tags.get("gate.reasons", "")}


@task(name="compare-with-champion")
def compare_task(params: Params, name: str, root: str, champion_path: str | None) -> dict:
    """The candidate's evaluation (DVC's evaluate stage), with the champion's beside it when there is one."""
    paths = SteerPaths(Path(root), name)
    if champion_path is None:
        return json.loads(paths.metrics.read_text())
    log = get_run_logger().info
    log(f"{name}: evaluating the champion on the candidate's prompts (paired samples, same base samples)")
    return compare_with_champion(params, name, Path(champion_path), Path(root), log=log)


@task(name="register-and-promote", retries=1, retry_delay_seconds=5)
def promote_task(params: Params, name: str, root: str, doc: dict, run_id: str, tags: dict[str, str], basis: str,
                 dry_run: bool) -> dict:
    """Gate the candidate, register it (once per steer file, with its lineage), and move ``champion`` only when the
    gate passed. A retry after a crash finds the version by sha256 instead of registering a second one."""
    paths = SteerPaths(Path(root), name)
    decision = decide_doc(doc, params.steer(name).gate)
    cand = doc["systems"]["candidate"]["recommended"]
    with mlflow.start_run(run_id=run_id, nested=True):
        mv = mlflow_io.find_version(name, file_sha256(paths.steer))  # same file: same version
        if mv is None:
            mv = mlflow_io.log_steer_model(paths.steer, name, default_strength=float(cand["strength"]),
                                          base_nucleus=bool(doc.get("protocol", {}).get("base_nucleus", False)),
                                          metrics={f"recommended_{k}": v for k, v in cand.items()
                                                   if isinstance(v, (int, float))},
                                          tags={**tags, **({"steer.strength_minus": repr(float(cand["strength_minus"]))}
                                                           if "strength_minus" in cand else {})},
                                          device=params.runtime.device)
        mlflow.set_tags({"gate.passed": str(decision.passed).lower(), "gate.summary": decision.summary()[:5000],
                         "registered_version": str(mv.version)})
    result = mlflow_io.promote(name, str(mv.version), decision, dry_run=dry_run, basis=basis)
    return {"version": str(mv.version), "promoted": result.promoted, "champion": result.champion,
            "passed": decision.passed, "reasons": decision.reasons}


def promotion_job(params: Params, name: str, root: Path, result: SteerResult, tags: dict[str, str],
                  dry_run: bool) -> SteerResult:
    """Steps 1–3 of the module doc for one steer whose DVC stages are done; fills and returns ``result``.
    Logs into the steer's nested MLflow run ``result.run_id`` (which must not be active in this thread)."""
    paths = SteerPaths(root, name)
    sha = file_sha256(paths.steer)
    champion = champion_task(name, str(root), sha)
    if champion and champion["sha256"] == sha:
        result.version = result.champion = champion["version"]
        result.status = "unchanged"
        result.reasons = [f"The steer equals champion version {champion['version']}: nothing to evaluate."]
        with mlflow.start_run(run_id=result.run_id, nested=True):
            mlflow_io.log_steer_run(params, name, root, tags, result.trained, None)
        if paths.metrics.exists():
            result.headline = json.loads(paths.metrics.read_text()).get("headline", {})
        return result
    basis = verdict_basis(params.steer(name).gate, paths.metrics)
    judged = judged_version_task(name, sha, champion["version"] if champion else None, basis)
    if judged is not None:
        result.version, result.champion = judged["version"], champion["version"] if champion else None
        result.status = "unchanged"
        result.reasons = [f"Version {judged['version']} is this same steer, already judged against the current "
                          f"champion, with the same gate settings and evaluation (gate passed: "
                          f"{str(judged['passed']).lower()}): {judged['reasons']}"]
        if paths.metrics.exists():
            result.headline = json.loads(paths.metrics.read_text()).get("headline", {})
        with mlflow.start_run(run_id=result.run_id, nested=True):
            mlflow_io.log_steer_run(params, name, root, tags, result.trained, None)
        return result
    doc = compare_task(params, name, str(root), champion["path"] if champion else None)
    with mlflow.start_run(run_id=result.run_id, nested=True):
        mlflow_io.log_steer_run(params, name, root, tags, result.trained, doc)
    result.headline = doc["headline"]
    promo = promote_task(params, name, str(root), doc, result.run_id, tags, basis, dry_run)
    result.version, result.promoted, result.champion = promo["version"], promo["promoted"], promo["champion"]
    result.reasons = promo["reasons"]
    result.status = ("promoted" if promo["promoted"] else
                     "would promote (dry run)" if dry_run and promo["passed"] else
                     "kept champion" if champion else "not promoted")
    return result
