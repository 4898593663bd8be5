"""The production flow: for each configured steer, DVC's stages (prepare → train → evaluate), a push of their outputs
to the DVC remote, then the promotion job (compare with the champion → gate → register with lineage → alias).

DVC alone decides which stages run (``dvc.lock``); the flow never decides staleness itself. A steer's outputs are
pushed before it is registered, so every registered version can be restored from the remote (``steer checkout``).
Runs with no server (Prefect's ephemeral mode) by default; ``steer deploy`` serves it on a cron schedule against a
Prefect server. One MLflow parent run per pipeline run, one nested run per steer.
"""

# no `from __future__ import annotations`: a served or pooled run builds the flow's parameter model from the
# annotations as objects, in a process that cannot resolve their names
import time
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from steer_core.config import Params, load_params
from steer_core.evaluate.document import BASELINES
from steer_core.stages import STAGES
from tasks import dvc_stages, lineage, mlflow_io, preflight, run_lock
from tasks.dvc_stages import DvcProject
from tasks.promotion import SteerResult, promotion_job

from flows import executors

STAGE_RETRIES = {"prepare": 2}  # hub sources can fail transiently; a failed fit or evaluation would fail again


@task(name="dvc-stage", task_run_name="{stage}")
def stage_task(project: DvcProject, stage: str) -> dict:
    """One stage of dvc.yaml, run by DVC if (and only if) DVC says it changed."""
    return dvc_stages.reproduce(project, stage, log=get_run_logger().info)


@task(name="dvc-push", task_run_name="push-{name}", retries=2, retry_delay_seconds=5)
def push_task(project: DvcProject, name: str, stages: list[str]) -> int:
    """The steer's cached outputs to the DVC remote (retried: remotes are network storage)."""
    pushed = dvc_stages.push(project, stages)
    get_run_logger().info(f"{name}: {pushed} file(s) pushed to DVC remote {project.remote!r}; remote in sync")
    return pushed


def run_steer(params: Params, name: str, project: DvcProject, parent_run_id: str, dry_run: bool) -> SteerResult:
    """One steer's chain: DVC stages, push, lineage, promotion job."""
    logger = get_run_logger()
    result = SteerResult(steer=name)
    stages = [dvc_stages.stage_name(s, name) for s in STAGES]
    with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent_run_id) as run:
        result.run_id = run.info.run_id
    for stage, kind in zip(stages, STAGES):
        done = stage_task.with_options(retries=STAGE_RETRIES.get(kind, 0), retry_delay_seconds=5)(project, stage)
        result.stages.append(done)
    result.trained = next(s["ran"] for s in result.stages if s["stage"].startswith("train@"))
    if params.dvc.push:
        push_task(project, name, stages)
    else:
        logger.warning(f"{name}: dvc.push is off: this version can be restored only from this machine's DVC cache")
    tags = lineage.steer_tags(project.root, params, name, dvc_stages.cached_outputs(project, stages[:2]))
    return promotion_job(params, name, project.root, result, tags, dry_run)


@task(name="steer-chain", task_run_name="steer-{name}")
def steer_chain_task(params: Params, name: str, project: DvcProject, parent_run_id: str, dry_run: bool
                     ) -> SteerResult:
    """One steer's whole chain as a task, so several steers can run concurrently (they take turns at DVC's lock)."""
    return run_steer(params, name, project, parent_run_id, dry_run)


def summary_rows(results: list[SteerResult]) -> list[dict]:
    """The table a user reads at the end: the control gained (by the labeller and by the independent judge), the
    fluency cost with its upper end, diversity, version and decision; and, per steer, the lines below it."""
    rows = []
    for r in results:
        h = r.headline or {}
        cand = h.get("candidate", {})
        two_sided = "positive_rate_plus" in cand
        fl = cand.get("fluency") or {}
        judges = cand.get("judges") or {}
        judge, judged = next(iter(judges.items()), (None, {}))
        rows.append({
            "steer": r.steer,
            "s": _fmt(cand.get("strength")) + (f"/{_fmt(cand['strength_minus'])}" if two_sided and
                                                 cand.get("strength_minus") is not None else ""),
            "gain": _signed(cand.get("gain")),
            "judge": _signed(judged.get("gain")),
            "fluency": (f"{100 * fl['increase']:+.0f}≤{100 * fl['high']:+.0f}%" if fl.get("high") is not None
                        else _fmt(100 * cand["ppl_increase"]) + "%" if "ppl_increase" in cand else ""),
            "distinct-2": _fmt(cand.get("distinct_2")),
            "version": r.version or "",
            "status": r.status,
            "ran": " ".join(s["stage"].split("@")[0] for s in r.stages if s["ran"]) or "none",
            "why": " ".join(r.reasons)[:600],
            "control": _control_text(h, cand, two_sided, judge),
            "vs_baseline": [x for x in (_versus_text(h, b) for b in BASELINES) if x],
        })
    return rows


def _control_text(h: dict, cand: dict, two_sided: bool, judge: str | None) -> str:
    """The control itself: base → steered, by the labeller; and which judge read it independently."""
    base = h.get("base_control")
    if base is None or not cand:
        return ""
    if two_sided:
        txt = (f"positive rate {cand.get('positive_rate_minus', float('nan')):.3f} at −s, {base:.3f} unsteered, "
               f"{cand.get('positive_rate_plus', float('nan')):.3f} at +s")
    else:
        txt = f"control {base:.3f} unsteered → {cand.get('control', float('nan')):.3f}"
        if "toxicity_probability" in cand:
            txt += f" (toxicity probability {cand['toxicity_probability']:.3f})"
    return txt + (f"; independent judge: {judge}" if judge else "")


def _versus_text(h: dict, baseline: str) -> str:
    """One line on the candidate against a baseline, each at its own budget strength ('' when not run)."""
    v, base = h.get(f"candidate_vs_{baseline}"), h.get(baseline, {})
    if not v:
        return ""
    name = {"actadd": "ActAdd", "prompting": "prompting"}.get(baseline, baseline)
    fl = base.get("fluency") or {}
    cost = fl.get("increase", base.get("ppl_increase", float("nan")))
    return (f"the {name} baseline at its budget strength reads {base.get('control', float('nan')):.3f} at "
            f"{100 * cost:+.1f} % fluency cost; steer minus baseline {v['difference']:+.3f} [{v['low']:+.3f}, "
            f"{v['high']:+.3f}] ({v['confidence']:.0%} paired interval over {v['prompts']} prompts)")


def _signed(x) -> str:
    return "" if x is None else f"{x:+.2f}"


def _fmt(x) -> str:
    return "" if x is None else f"{x:.3g}"


@flow(name="steer-pipeline", log_prints=True)
def steer_pipeline(params_path: str = "params.yaml", steers: list[str] | None = None, dry_run: bool = False,
                   root: str = ".", params: Params | None = None) -> list[dict]:
    """DVC's stages, then register and (when the gate passes) promote every configured steer. ``params``: the
    contents of ``params_path`` already parsed by the caller (``steer run``); a deployment passes only the path.
    ``root`` is relative to the working directory and ``params_path`` to ``root`` (a pool's deployment passes
    ``.`` and ``params.yaml``: the worker's own copy of the project)."""
    logger = get_run_logger()
    root_path = Path(root).resolve()
    params_path = str(root_path / params_path)  # an absolute path stays as it is
    params = params or load_params(params_path)
    names = steers or list(params.steers)
    preflight.check_run(params, root_path, names)
    # the executor (a Dask cluster for kind: dask) lives for the whole run: every steer's evaluation shards and
    # champion comparison use it, and its workers keep the base model loaded between them
    with run_lock.hold(root_path, log=logger.info), executors.executor(params, log=logger.info):
        return _run(params_path, params, names, root_path, dry_run)


def _run(params_path: str, params: Params, names: list[str], root_path: Path, dry_run: bool) -> list[dict]:
    logger = get_run_logger()
    project = dvc_stages.open_project(root_path, params.dvc.remote, log=logger.info)
    if not project.git:
        logger.warning(f"{root_path} is not a git work tree: lineage has no commit (tag git_commit=none); DVC runs "
                       f"without SCM and still versions every output by hash")
    mlflow_io.configure(params.tracking, root_path)
    results: list[SteerResult] = []
    with mlflow.start_run(run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        mlflow.set_tags({**lineage.run_tags(root_path, params), "dry_run": str(dry_run).lower(),
                         "dvc.remote": f"{project.remote} ({project.remote_url})"})
        mlflow.log_artifact(str(Path(params_path).resolve()), "params")
        if params.runtime.parallel_steers > 1 and len(names) > 1:
            # each steer's chain becomes a task of its own: Prefect's thread pool runs them side by side, and
            # each opens its nested MLflow run by parent id (MLflow's active run is per thread)
            logger.info(f"steers {names}, up to {params.runtime.parallel_steers} at a time")
            width = params.runtime.parallel_steers
            for i in range(0, len(names), width):
                futures = [steer_chain_task.submit(params, n, project, parent.info.run_id, dry_run)
                           for n in names[i : i + width]]
                results += [f.result() for f in futures]
        else:
            for name in names:
                logger.info(f"steer {name}")
                results.append(run_steer(params, name, project, parent.info.run_id, dry_run))
    rows = summary_rows(results)
    create_table_artifact(table=rows, key="steer-pipeline-summary", description="steer pipeline summary")
    return rows


def serve_scheduled(cron: str, name: str, params_path: str, root: str, log=print) -> None:
    """Serve ``steer_pipeline`` as a deployment on a cron schedule (blocks; SIGTERM stops it and pauses it)."""
    from flows.deployments import check_cron

    check_cron(cron)
    log(f"serving deployment steer-pipeline/{name} on cron {cron!r} (Ctrl-C or SIGTERM stops it)")
    steer_pipeline.serve(name=name, cron=cron, parameters={"params_path": params_path, "root": root})
