"""DVC for real: the repo's dvc.yaml in a temp git repo, one tiny steer on the tiny pipeline's model, no mocks.

The module runs one full ``dvc repro`` (the ``reproduced`` fixture); every other test starts from its own copy of that
project: clean ``dvc status`` and a second repro that skips → an evaluate-only param change re-runs only
``evaluate@sentiment`` → ``dvc push`` to a local remote, outputs and cache deleted, ``dvc pull`` restores them byte for
byte → ``dvc exp run -S`` on a committed workspace. ``python -m steer_core.pipeline`` resolves to
this venv (its bin dir goes first on PATH); DVC's config, site cache and temp files stay inside the temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from projects import sha256
from tiny_pipeline import tiny_params

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAME = "sentiment"
STAGES = [f"prepare@{NAME}", f"train@{NAME}", f"evaluate@{NAME}"]

TINY_PARAMS = tiny_params(NAME)


def code_deps() -> list[str]:
    """The source files dvc.yaml's stages depend on (everything in deps that is not a pipeline output)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = {d for s in stages.values() for d in s["do"].get("deps", []) if "${" not in d}
    assert deps, "dvc.yaml names no code deps"
    return sorted(deps)


class Project:
    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env

    def run(self, *cmd: str, check: bool = True, timeout: int = 400) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                                 f"{proc.stderr[-3000:]}")
        return proc

    def dvc(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "dvc"), *args, **kw)

    def git(self, *args: str) -> str:
        return self.run("git", *args).stdout.strip()

    def status(self) -> dict:
        return json.loads(self.dvc("status", "--json").stdout or "{}")

    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def write_params(self, params: dict) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def path(self, rel: str) -> Path:
        return self.root / rel


OUTPUTS = [
    f"data/prepared/{NAME}/train.jsonl", f"data/prepared/{NAME}/val.jsonl", f"data/prepared/{NAME}/card.json",
    f"data/prompts/{NAME}.jsonl", f"artifacts/steers/{NAME}.safetensors", f"artifacts/steers/{NAME}.json",
    f"reports/{NAME}.html", f"reports/{NAME}.samples.jsonl", f"plots/{NAME}/control.png", f"plots/{NAME}/fluency.png",
    f"plots/{NAME}/frontier.png",
    f"metrics/{NAME}.json", f"plots/{NAME}/control.csv", f"plots/{NAME}/fluency.csv",
]
CACHED = [o for o in OUTPUTS if not (o.startswith("metrics/") or o.endswith(".csv"))]  # cache: false ones aside


def dvc_env(state: Path) -> dict[str, str]:
    """The DVC subprocesses' environment: this venv first on PATH; config, site cache and temp files in ``state``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "GIT_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(state / "site"),
        DVC_GLOBAL_CONFIG_DIR=str(state / "global"),
        DVC_SYSTEM_CONFIG_DIR=str(state / "system"),
        TMPDIR=str(state / "tmp"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=str(state / "gitconfig"),
        PYTHONWARNINGS="ignore",
    )
    return env


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The module's one full ``dvc repro``, in ``<base>/project`` (a git repo with the pipeline committed) beside
    ``<base>/state`` (DVC's config, site cache, temp files and the local remote, which the project names by a
    relative path); no test changes it: a test that runs DVC again gets its own copy of ``<base>`` (``project``)."""
    base = tmp_path_factory.mktemp("dvc")
    root, state = base / "project", base / "state"
    root.mkdir()
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(ROOT / ".dvcignore", root / ".dvcignore")
    for rel in code_deps():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_dir():
            shutil.copytree(ROOT / rel, root / rel, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            shutil.copy(ROOT / rel, root / rel)
    (state / "tmp").mkdir(parents=True)
    (state / "gitconfig").write_text("[user]\n\tname = test\n\temail = test@example.com\n[init]\n"
                                     "\tdefaultBranch = main\n")
    p = Project(root, dvc_env(state))
    p.write_params(TINY_PARAMS)
    p.git("init", "-q")
    p.dvc("init", "-q")
    p.dvc("config", "core.analytics", "false")
    p.dvc("config", "core.check_update", "false")
    p.dvc("remote", "add", "-d", "local", os.path.relpath(state / "remote", root))  # a copy of base has its own
    p.git("add", "-A")
    p.git("commit", "-q", "-m", "pipeline")
    t0 = time.perf_counter()
    proc = p.dvc("repro")
    print(f"dvc repro (all stages) {time.perf_counter() - t0:.1f}s")
    return {"base": base, "project": p, "stdout": proc.stdout}


@pytest.fixture
def project(reproduced: dict, tmp_path: Path) -> Project:
    """This test's own copy of the reproduced project and its DVC state (mtimes kept)."""
    base = shutil.copytree(reproduced["base"], tmp_path / "dvc")
    return Project(base / "project", dvc_env(base / "state"))


# ------------------------------------------------------------------------------------------------ tests
def test_repro_runs_every_stage_and_locks_them(reproduced: dict) -> None:
    project, stdout = reproduced["project"], reproduced["stdout"]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in stdout, stdout
    lock = yaml.safe_load(project.path("dvc.lock").read_text())["stages"]
    assert sorted(lock) == sorted(STAGES)
    assert lock[f"train@{NAME}"]["params"]["params.yaml"][f"steers.{NAME}.train"]["epochs"] == 1
    locked_outs = {o["path"] for body in lock.values() for o in body.get("outs", [])}
    assert set(OUTPUTS) <= locked_outs
    for rel in OUTPUTS:
        assert project.path(rel).is_file() and project.path(rel).stat().st_size > 0, rel
    metrics = json.loads(project.path(f"metrics/{NAME}.json").read_text())
    assert metrics["steer"] == NAME and "headline" in metrics
    assert "mlflow.db" not in os.listdir(project.root)  # the DVC stages do not touch the registry


def test_status_is_clean_and_a_second_repro_skips_everything(project: Project) -> None:
    assert project.status() == {}
    assert "up to date" in project.dvc("status").stdout
    proc = project.dvc("repro")
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in proc.stdout, proc.stdout
    assert "Running stage" not in proc.stdout


def test_changing_an_evaluate_param_reruns_only_evaluate(project: Project) -> None:
    steer = project.path(f"artifacts/steers/{NAME}.safetensors")
    train_jsonl = project.path(f"data/prepared/{NAME}/train.jsonl")
    before = {p: p.stat().st_mtime_ns for p in (steer, train_jsonl)}
    steer_sha = sha256(steer)
    report_sha = sha256(project.path(f"reports/{NAME}.html"))
    params = project.params()
    params["steers"][NAME]["evaluate"]["max_new_tokens"] = 5
    project.write_params(params)

    status = project.status()
    assert list(status) == [f"evaluate@{NAME}"], status
    assert status[f"evaluate@{NAME}"] == [
        {"changed deps": {"params.yaml": {f"steers.{NAME}.evaluate": "modified"}}}
    ], status

    t0 = time.perf_counter()
    proc = project.dvc("repro")
    print(f"dvc repro (evaluate only) {time.perf_counter() - t0:.1f}s")
    assert f"Stage 'prepare@{NAME}' didn't change, skipping" in proc.stdout, proc.stdout
    assert f"Stage 'train@{NAME}' didn't change, skipping" in proc.stdout, proc.stdout
    assert f"Running stage 'evaluate@{NAME}'" in proc.stdout
    assert f"Running stage 'train@{NAME}'" not in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before  # prepare and train outputs untouched
    assert sha256(steer) == steer_sha
    assert sha256(project.path(f"reports/{NAME}.html")) != report_sha
    lock = yaml.safe_load(project.path("dvc.lock").read_text())["stages"]
    assert lock[f"evaluate@{NAME}"]["params"]["params.yaml"][f"steers.{NAME}.evaluate"]["max_new_tokens"] == 5
    assert project.status() == {}


def test_push_then_pull_restores_deleted_outputs_byte_identical(project: Project) -> None:
    shas = {rel: sha256(project.path(rel)) for rel in CACHED}
    project.dvc("push")
    for rel in CACHED:
        project.path(rel).unlink()
    shutil.rmtree(project.path(".dvc/cache"))  # so pull has to fetch from the remote, not just check out
    assert project.status() != {}
    project.dvc("pull")
    for rel, sha in shas.items():
        assert project.path(rel).is_file(), rel
        assert sha256(project.path(rel)) == sha, rel
    assert project.status() == {}


def test_exp_run_with_set_param_reruns_evaluate_and_records_the_experiment(project: Project) -> None:
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "repro")
    steer_mtime = project.path(f"artifacts/steers/{NAME}.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    proc = project.dvc("exp", "run", "-n", "tokens4", "-S", f"steers.{NAME}.evaluate.max_new_tokens=4")
    print(f"dvc exp run (evaluate only) {time.perf_counter() - t0:.1f}s")
    assert f"Running stage 'evaluate@{NAME}'" in proc.stdout, proc.stdout
    assert f"Running stage 'train@{NAME}'" not in proc.stdout
    assert project.path(f"artifacts/steers/{NAME}.safetensors").stat().st_mtime_ns == steer_mtime
    assert project.params()["steers"][NAME]["evaluate"]["max_new_tokens"] == 4  # left in the workspace
    assert "tokens4" in project.dvc("exp", "list", "--name-only").stdout
    shown = json.dumps(json.loads(project.dvc("exp", "show", "--json").stdout))
    assert "tokens4" in shown
