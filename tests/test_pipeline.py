"""The real Prefect flow, end to end, on the tiny pipeline params (tests/tiny_pipeline.py: a tiny random model), in
temp projects.

The module starts from the first run (the ``first`` fixture: tests/first_run.py, shared with test_lineage) in a temp
project (its own git repo, sqlite MLflow store and artifact folder); the tests that only read what that run left read
it there, and each test that runs the flow again gets its own copy of that project (``project``), so every test runs
alone and in any order:

1. first run: prepare → train → evaluate → register v1 → promote (alias ``champion`` → 1);
2. the MLflow record of that run (parent run, nested steer run: params, tags, metrics, artifacts);
3. rerun with nothing changed: "unchanged", DVC runs no stage (steer file untouched), no new version (``steer run
   --json`` in a new process: tests/test_cluster.py's second run);
4. one scenario of four runs: a changed train param, ``dry_run=True``: retrained, v2 registered, champion alias does
   not move; then a gate that cannot pass (``min_margin: 5`` against a champion): v2 judged, tagged
   gate.passed=false, champion still 1; then a rerun: the rejected steer is neither re-evaluated nor re-registered;
   then the gate loosened: the same v2 is judged again (its verdict rested on other settings) and promoted;
5. two steers in parallel, in a project copied outside any git work tree: each gets its own nested run and model, and
   their lineage says there is no commit.

Two quick checks come first: ``tracking.configure`` follows each project's params within one process (mlflow exports
the URI it is given as MLFLOW_TRACKING_URI), and ``steer run`` on a typo'd params key exits 2 before touching anything.

Prefect runs against ``prefect_test_harness`` (one temporary API server for the module).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from first_run import EXPERIMENT, NAME, TINY_PARAMS, first_run, run_flow as timed_run_flow
from projects import (MLFLOW_URI_VARS, copy_project, forget_tracking, isolated_tracking, make_project, prefect_home,
                      sha256, without_mlflow_uris, write_params)

ROOT = Path(__file__).resolve().parents[1]
STEER_BIN = Path(sys.executable).with_name("steer")


def cli_env(tmp: Path) -> dict[str, str]:
    """The subprocess's environment: no inherited MLflow URI (the params decide), its own Prefect home."""
    env = without_mlflow_uris(os.environ)
    env.update(PREFECT_HOME=prefect_home(tmp / ".prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1",
               TMPDIR=str(tmp / "tmp"), PYTHONWARNINGS="ignore")
    env.pop("PREFECT_API_URL", None)
    (tmp / "tmp").mkdir(exist_ok=True)
    return env


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory, harness) -> dict[str, Any]:
    """The first run (tests/first_run.py, shared with test_lineage): a temp project, a git repo with one commit, and
    what that run left. No test changes this project: a test that runs the flow again gets its own copy
    (``project``)."""
    return first_run(tmp_path_factory)


@pytest.fixture
def project(first: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """This test's own copy of the first run's project (files with their mtimes, git, DVC cache, MLflow store)."""
    with isolated_tracking():
        root = copy_project(first["root"], tmp_path / "project")
        yield {**first, "root": root, "params": root / "params.yaml", "uri": f"sqlite:///{root / 'mlflow.db'}"}


def client_for(state: dict[str, Any]):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=state["uri"], registry_uri=state["uri"])


@pytest.fixture
def client(project):
    return client_for(project)


def run_flow(project: dict, **kwargs) -> tuple[list[dict], float]:
    return timed_run_flow(project["root"], **kwargs)


def versions(client) -> list[str]:
    return sorted((str(v.version) for v in client.search_model_versions(f"name='{NAME}'")), key=int)


def champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def steer_runs(client, parent_id: str):
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def latest_parent(client):
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents[0]


def paths(root: Path) -> dict[str, Path]:
    return {
        "train": root / "data" / "prepared" / NAME / "train.jsonl",
        "steer": root / "artifacts" / "steers" / f"{NAME}.safetensors",
        "metrics": root / "metrics" / f"{NAME}.json",
        "report": root / "reports" / f"{NAME}.html",
        "plot": root / "plots" / NAME / "control.png",
        "card": root / "data" / "prepared" / NAME / "card.json",
    }


@pytest.mark.slow  # creates two MLflow sqlite stores (16 s at load 7.5)
# ------------------------------------------------------------------------------------------------ quick checks
def test_tracking_configure_follows_each_projects_params_within_one_process(tmp_path: Path, monkeypatch) -> None:
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; configure, and the preflight check of the store, must
    not take its own export for the user's."""
    import shutil

    from steer_core.config import TrackingConfig
    from tasks import mlflow_io as tracking
    from tasks.preflight import check_tracking

    for var in MLFLOW_URI_VARS:
        monkeypatch.delenv(var, raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    try:
        cfg = TrackingConfig(experiment="configure-test")
        assert tracking.configure(cfg, a) == f"sqlite:///{a.resolve()}/mlflow.db"
        assert tracking.configure(cfg, b) == f"sqlite:///{b.resolve()}/mlflow.db"
        c = tmp_path / "c"
        c.mkdir()
        shutil.rmtree(b)  # the last project's store is gone: checking project c's must not look there
        check_tracking(cfg.uri, c, cfg.artifact_location)
        user = f"sqlite:///{tmp_path.resolve()}/user.db"
        os.environ["MLFLOW_TRACKING_URI"] = user  # a user's explicit choice still wins, every time
        assert tracking.configure(cfg, a) == user
        assert tracking.configure(cfg, b) == user
    finally:
        forget_tracking()  # configure's exports and the user's URI: none is left for the next test in this worker


def test_json_runs_keep_stdout_for_the_document(capfd) -> None:
    """``steer run --json`` sends what this process and its children (DVC, the stage commands) write to stdout to
    stderr while it runs, so stdout holds the JSON document alone."""
    from flows.cli import stdout_to_stderr

    with stdout_to_stderr():
        print("from this process")
        subprocess.run([sys.executable, "-c", "print('from a stage command')"], check=True)
    print('{"rows": []}')
    out, err = capfd.readouterr()
    assert out == '{"rows": []}\n', out
    assert "from this process" in err and "from a stage command" in err


@pytest.mark.slow  # a `steer run` subprocess
def test_cli_run_with_typod_params_key_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(TINY_PARAMS))
    bad["steers"][NAME]["train"] = {"epocs": 1}
    params = write_params(tmp_path / "params.yaml", bad)
    proc = subprocess.run([str(STEER_BIN), "run", "--params", str(params)], cwd=tmp_path, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "steers.sentiment.train.epocs" in lines[0] and lines[0].startswith("error:"), lines
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip() == ""
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "mlartifacts").exists()


# ------------------------------------------------------------------------------------------------ the flow
@pytest.mark.slow
def test_first_run_trains_evaluates_registers_and_promotes_v1(first) -> None:
    client = client_for(first)
    assert [r["steer"] for r in first["rows"]] == [NAME]
    row = first["rows"][0]
    assert row["status"] == "promoted", row
    assert row["version"] == "1"
    assert versions(client) == ["1"]
    assert champion(client) == "1"
    mv = client.get_model_version(NAME, "1")
    assert mv.tags["gate.passed"] == "true"
    p = paths(first["root"])
    for key in ("train", "steer", "metrics", "report", "plot"):
        assert p[key].is_file() and p[key].stat().st_size > 0, p[key]
    assert mv.tags["steer.sha256"] == sha256(p["steer"])
    assert json.loads(p["metrics"].read_text())["steer"] == NAME
    assert p["steer"].stat().st_mtime_ns == first["steer_mtime"] and sha256(p["steer"]) == first["steer_sha"]


@pytest.mark.slow
def test_first_run_is_recorded_as_parent_and_nested_steer_run(first) -> None:
    client = client_for(first)
    parent = latest_parent(client)
    assert parent.data.tags["git_commit"] == first["commit"]
    assert parent.data.tags["dry_run"] == "false"
    assert "params.yaml" in [a.path.split("/")[-1] for a in client.list_artifacts(parent.info.run_id, "params")]
    (run,) = steer_runs(client, parent.info.run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    card = json.loads(paths(first["root"])["card"].read_text())
    assert tags["steer"] == NAME
    assert tags["data.content_hash"] == card["content_hash"] and len(card["content_hash"]) >= 16
    assert tags["git_commit"] == first["commit"]
    assert tags["trained"] == "true"
    assert tags["steer.sha256"] == first["steer_sha"]
    assert tags["gate.passed"] == "true" and tags["registered_version"] == "1"
    assert params["model"] == TINY_PARAMS["model"]
    assert params["train.epochs"] == "1" and params["train.tokens_per_batch"] == "512"
    assert params["evaluate.max_new_tokens"] == "6"
    for key in ("candidate/s4/control", "candidate/s-4/control", "candidate/s0/ppl", "base/ppl", "base/control"):
        assert key in metrics, sorted(metrics)
    assert not any(k.startswith("champion/") for k in metrics)  # no champion to compare with on a first run
    listed = {
        folder: {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, folder)}
        for folder in ("steer", "evaluation", "data")
    }
    assert f"{NAME}.safetensors" in listed["steer"]
    assert {f"{NAME}.json", f"{NAME}.html"} <= listed["evaluation"]
    assert "card.json" in listed["data"]
    assert client.get_model_version(NAME, "1").run_id == run.info.run_id


@pytest.mark.slow
def test_second_run_with_nothing_changed_skips_training_and_registers_nothing(project, client) -> None:
    rows, seconds = run_flow(project)
    print(f"first run {project['first_seconds']:.1f}s, unchanged rerun {seconds:.1f}s")
    assert rows[0]["status"] == "unchanged" and rows[0]["ran"] == "none", rows  # DVC ran no stage
    assert rows[0]["version"] == "1"
    assert versions(client) == ["1"]
    assert champion(client) == "1"
    steer = paths(project["root"])["steer"]
    assert steer.stat().st_mtime_ns == project["steer_mtime"]  # train skipped: the file was not rewritten
    (run,) = steer_runs(client, latest_parent(client).info.run_id)
    assert run.data.tags["trained"] == "false"
    assert run.data.tags["data.content_hash"]
    assert "candidate/s4/control" not in run.data.metrics  # not re-evaluated


@pytest.mark.slow
def test_changed_steer_dry_run_v2_then_failing_gate_then_not_judged_again(project, client) -> None:
    """One scenario, four runs: a changed train param in a dry run registers v2 but keeps the champion; a gate that
    cannot pass (``min_margin: 5``) judges that same v2, tags it failed and keeps the champion; a third run neither
    re-evaluates nor re-registers the rejected steer; a fourth, with the gate loosened, judges it again and promotes
    it."""
    # 1. a changed train param, dry run: retrained, v2 registered, the champion alias does not move
    params = json.loads(json.dumps(TINY_PARAMS))
    params["steers"][NAME]["train"]["lr"] = 0.05  # default 0.01: same cost as the first fit, different steer
    write_params(project["params"], params)
    rows, _ = run_flow(project, dry_run=True)
    row = rows[0]
    assert row["status"] in ("would promote (dry run)", "kept champion"), row
    assert row["version"] == "2"
    steer = paths(project["root"])["steer"]
    assert steer.stat().st_mtime_ns != project["steer_mtime"]  # retrained
    assert sha256(steer) != project["steer_sha"]
    assert versions(client) == ["1", "2"]
    assert champion(client) == "1"  # a dry run moves no alias
    mv2 = client.get_model_version(NAME, "2")
    assert mv2.tags["steer.sha256"] == sha256(steer)
    assert "gate.passed" not in mv2.tags  # a dry run writes nothing to the registry beyond the new version
    parent = latest_parent(client)
    assert parent.data.tags["dry_run"] == "true"
    (run,) = steer_runs(client, parent.info.run_id)
    assert run.data.tags["trained"] == "true" and run.data.params["train.lr"] == "0.05"
    assert "champion/s4/control" in run.data.metrics  # evaluated beside the champion on the same prompts

    # 2. a failing gate reuses v2, tags it failed, keeps the champion
    params = yaml.safe_load(project["params"].read_text())
    params["steers"][NAME]["gate"]["min_margin"] = 5.0  # control is a rate in [0, 1]: cannot beat champion + 5
    write_params(project["params"], params)
    mtime = paths(project["root"])["steer"].stat().st_mtime_ns
    rows, _ = run_flow(project)
    row = rows[0]
    assert row["status"] == "kept champion", row
    assert row["version"] == "2"  # the same steer file as the dry run's version: registered once
    assert "min_margin" in row["why"]
    assert paths(project["root"])["steer"].stat().st_mtime_ns == mtime  # gate settings do not retrain
    assert versions(client) == ["1", "2"]
    assert champion(client) == "1"
    mv2 = client.get_model_version(NAME, "2")
    assert mv2.tags["gate.passed"] == "false" and mv2.tags["gate.champion"] == "1"
    assert "min_margin" in mv2.tags["gate.reasons"]
    assert "gate failed" in (mv2.description or "")
    (run,) = steer_runs(client, latest_parent(client).info.run_id)
    assert run.data.tags["gate.passed"] == "false" and run.data.tags["registered_version"] == "2"

    # 3. the rejected steer is not re-evaluated or re-registered
    rows, _ = run_flow(project)
    row = rows[0]
    assert row["status"] == "unchanged", row
    assert row["version"] == "2" and "already judged" in row["why"] and "min_margin" in row["why"]
    assert versions(client) == ["1", "2"]
    assert champion(client) == "1"
    basis = client.get_model_version(NAME, "2").tags["gate.basis"]

    # 4. a loosened gate judges the same v2 again (the old verdict rested on other settings) and promotes it
    params["steers"][NAME]["gate"] = {"max_ppl_increase": 1e9, "min_distinct_2": 0.0, "min_gain": -1.0,
                                      "min_margin": -5.0}
    write_params(project["params"], params)
    rows, _ = run_flow(project)
    row = rows[0]
    assert row["status"] == "promoted" and row["version"] == "2", row
    assert paths(project["root"])["steer"].stat().st_mtime_ns == mtime  # still not retrained
    assert versions(client) == ["1", "2"] and champion(client) == "2"
    mv2 = client.get_model_version(NAME, "2")
    assert mv2.tags["gate.passed"] == "true" and mv2.tags["gate.basis"] != basis


@pytest.mark.slow
def test_two_steers_in_parallel_outside_git_each_get_their_own_nested_run_model_and_lineage(request, harness) -> None:
    """runtime.parallel_steers: 2 runs both chains as concurrent tasks; each steer still ends in its own nested
    MLflow run and its own registered model. The project is a copy outside any git work tree: DVC runs without SCM
    (in config.local, this copy only), and each version's lineage says there is no commit while still naming its
    steer by its dvc.lock md5."""
    from mlflow.tracking import MlflowClient

    params = json.loads(json.dumps(TINY_PARAMS))
    params["runtime"]["parallel_steers"] = 2
    params["steers"]["pos2"] = json.loads(json.dumps(params["steers"][NAME]))
    params["steers"]["pos2"]["train"]["lr"] = 0.05
    for spec in params["steers"].values():  # this test is about concurrency, not quality: any steer passes
        spec["gate"] = {"max_ppl_increase": 1e9, "min_distinct_2": 0.0, "min_gain": -1.0}
    outside = Path(tempfile.mkdtemp(prefix="steer-nogit-", dir="/tmp"))  # the tests' TMPDIR is inside this repo
    request.addfinalizer(lambda: shutil.rmtree(outside, ignore_errors=True))
    project = make_project(outside / "copied", params, with_git=False)
    rows, _ = timed_run_flow(project)  # in isolated tracking: the module's project store must not leak in
    uri = f"sqlite:///{project / 'mlflow.db'}"
    assert sorted(r["steer"] for r in rows) == sorted([NAME, "pos2"])
    assert all(r["status"] == "promoted" for r in rows), [(r["steer"], r["status"], r["why"]) for r in rows]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    md5 = {o["path"]: o["md5"] for body in lock.values() for o in body.get("outs", [])}
    for name in (NAME, "pos2"):
        v1 = client.get_model_version_by_alias(name, "champion")
        assert str(v1.version) == "1"
        assert v1.tags["git_commit"] == "none" and v1.tags["git_dirty"] == "unknown", v1.tags
        assert v1.tags[f"dvc.artifacts/steers/{name}.safetensors"] == md5[f"artifacts/steers/{name}.safetensors"]
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and sorted(r.data.tags["steer"] for r in children) == sorted([NAME, "pos2"])
    assert "no_scm = True" in (project / ".dvc" / "config.local").read_text()
    dvc = Path(sys.executable).with_name("dvc")
    status = subprocess.run([str(dvc), "status"], cwd=project, capture_output=True, text=True, timeout=300)
    cloud = subprocess.run([str(dvc), "status", "-c"], cwd=project, capture_output=True, text=True, timeout=300)
    assert "up to date" in status.stdout and "in sync" in cloud.stdout, status.stdout + cloud.stdout
