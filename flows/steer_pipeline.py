"""The production flow: for each configured steer, prepare → train → evaluate (vs champion) → register → gate.

Runs with no server (Prefect's ephemeral mode) by default; ``steer deploy`` serves it on a cron schedule against a
Prefect server. One MLflow parent run per pipeline run, one nested run per steer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from steer_core.config import load_params
from steer_core.pipeline import SteerPaths
from tasks import tracking
from tasks.stages import (
    SteerResult, champion_task, evaluate_task, judged_version_task, log_steer_run, prepare_task, promote_task,
    train_task,
)


def run_steer(params_path: str, name: str, root: Path, parent_run_id: str, dry_run: bool) -> SteerResult:
    """One steer's chain. A steer whose file equals the champion's is not re-evaluated or re-registered."""
    params = load_params(params_path)
    result = SteerResult(steer=name)
    with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent_run_id) as run:
        result.run_id = run.info.run_id
        card = prepare_task(params_path, name, str(root))
        trained = train_task(params_path, name, str(root), card.get("content_hash", ""))
        result.trained = trained["trained"]
        champion = champion_task(name, str(root), trained["sha256"])
        if champion and champion["sha256"] == trained["sha256"]:
            result.version = result.champion = champion["version"]
            result.status = "unchanged"
            result.reasons = [f"the steer equals champion version {champion['version']}: nothing to evaluate"]
            log_steer_run(params, name, root, card, trained, None)
            metrics = SteerPaths(root, name).metrics
            if metrics.exists():
                result.headline = json.loads(metrics.read_text()).get("headline", {})
            return result
        judged = judged_version_task(name, trained["sha256"], champion["version"] if champion else None)
        if judged is not None:
            result.version, result.champion = judged["version"], champion["version"] if champion else None
            result.status = "unchanged"
            result.reasons = [f"version {judged['version']} is this same steer, already judged against the current "
                              f"champion (gate passed: {str(judged['passed']).lower()}): {judged['reasons']}"]
            log_steer_run(params, name, root, card, trained, None)
            return result
        doc = evaluate_task(params_path, name, str(root), champion["path"] if champion else None)
        log_steer_run(params, name, root, card, trained, doc)
        result.headline = doc["headline"]
    promo = promote_task(params_path, name, str(root), doc, champion, result.run_id, dry_run)
    result.version, result.promoted, result.champion = promo["version"], promo["promoted"], promo["champion"]
    result.reasons = promo["reasons"]
    result.status = ("promoted" if promo["promoted"] else
                     "would promote (dry run)" if dry_run and promo["passed"] else "kept champion")
    return result


@task(name="steer-chain")
def steer_chain_task(params_path: str, name: str, root: Path, parent_run_id: str, dry_run: bool) -> SteerResult:
    """One steer's whole chain as a task, so several steers can run concurrently."""
    return run_steer(params_path, name, root, parent_run_id, dry_run)


def summary_rows(results: list[SteerResult]) -> list[dict]:
    """The table a user reads at the end: base vs steered control, fluency, diversity, version, decision."""
    rows = []
    for r in results:
        h = r.headline or {}
        cand = h.get("candidate", {})
        two_sided = "positive_rate_plus" in cand
        rows.append({
            "steer": r.steer,
            "base": _fmt(h.get("base_control")),
            "+s": _fmt(cand.get("positive_rate_plus", cand.get("control"))),
            "-s": _fmt(cand.get("positive_rate_minus")) if two_sided else "",
            "s": _fmt(cand.get("strength")),
            "ppl +%": _fmt(100 * cand["ppl_increase"]) if "ppl_increase" in cand else "",
            "distinct-2": _fmt(cand.get("distinct_2")),
            "version": r.version or "",
            "status": r.status,
            "why": " ".join(r.reasons)[:300],
        })
    return rows


def _fmt(x) -> str:
    return "" if x is None else f"{x:.3g}"


@flow(name="steer-pipeline", log_prints=True)
def steer_pipeline(params_path: str = "params.yaml", steers: list[str] | None = None, dry_run: bool = False,
                   root: str = ".") -> list[dict]:
    """Prepare, train, evaluate, register and (when the gate passes) promote every configured steer."""
    logger = get_run_logger()
    root_path = Path(root).resolve()
    params = load_params(params_path)
    names = steers or list(params.steers)
    unknown = [n for n in names if n not in params.steers]
    if unknown:
        raise ValueError(f"unknown steer(s) {unknown}; params.yaml configures {sorted(params.steers)}")
    tracking.configure(params.tracking, root_path)
    results: list[SteerResult] = []
    with mlflow.start_run(run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        mlflow.set_tags({"git_commit": tracking.git_commit(root_path), "dry_run": str(dry_run).lower()})
        mlflow.log_artifact(str(Path(params_path).resolve()), "params")
        if params.runtime.parallel_steers > 1 and len(names) > 1:
            # each steer's chain becomes a task of its own: Prefect's thread pool runs them side by side, and
            # each opens its nested MLflow run by parent id (MLflow's active run is per thread)
            logger.info("steers %s, up to %d at a time", names, params.runtime.parallel_steers)
            chain = steer_chain_task.with_options(task_run_name="steer-{name}")
            width = params.runtime.parallel_steers
            for i in range(0, len(names), width):
                futures = [chain.submit(params_path, n, root_path, parent.info.run_id, dry_run)
                           for n in names[i : i + width]]
                results += [f.result() for f in futures]
        else:
            for name in names:
                logger.info("steer %s", name)
                results.append(run_steer(params_path, name, root_path, parent.info.run_id, dry_run))
    rows = summary_rows(results)
    create_table_artifact(table=rows, key="steer-pipeline-summary", description="steer pipeline summary")
    return rows


def serve_scheduled(cron: str, name: str, params_path: str, root: str, log=print) -> None:
    """Serve ``steer_pipeline`` as a deployment on a cron schedule (blocks; SIGTERM stops it and pauses it)."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except Exception:
        raise ValueError(f"--cron {cron!r} is not a valid cron expression (e.g. '0 3 * * 1')") from None
    log(f"serving deployment steer-pipeline/{name} on cron {cron!r} (Ctrl-C or SIGTERM stops it)")
    steer_pipeline.serve(name=name, cron=cron, parameters={"params_path": params_path, "root": root})
