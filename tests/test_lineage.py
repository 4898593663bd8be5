"""One production loop, for real: ``steer run``'s flow executes dvc.yaml's stages through DVC, versions every output
(``dvc.lock``, cache, the project's local remote), tags each model version with its lineage, and ``steer checkout``
restores any version's data and steer byte for byte. Real DVC, git, MLflow and Prefect in temp dirs; the tiny
pipeline params (tests/tiny_pipeline.py: a tiny random model).

The module starts from the first run that test_pipeline starts from too (tests/first_run.py: one run a suite); the
``first`` fixture records what that run left. Every test that changes a project gets its own copy of it
(``project``), so each test runs alone and in any order. A run outside git: test_pipeline's two-steers test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from first_run import NAME, V1_FILES, first_run, run_flow as timed_run_flow
from projects import copy_project, git, sha256, without_mlflow_uris, write_params

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STAGES = [f"{s}@{NAME}" for s in ("prepare", "train", "evaluate")]


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=root, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def steer_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = without_mlflow_uris(os.environ)
    return subprocess.run([str(BIN / "steer"), *args, "--params", str(root / "params.yaml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def run_flow(root: Path) -> list[dict]:
    return timed_run_flow(root)[0]


def client(root: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def versions(root: Path) -> list[int]:
    return sorted(int(v.version) for v in client(root).search_model_versions(f"name='{NAME}'"))


def lock_md5s(root: Path) -> dict[str, str]:
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for body in stages.values() for o in body.get("outs", [])}


def ran(row: dict) -> list[str]:
    return row["ran"].split() if row["ran"] != "none" else []


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory, harness) -> dict[str, Any]:
    """The git project after its first ``steer run`` (tests/first_run.py), and what DVC and MLflow say of it."""
    run = first_run(tmp_path_factory)
    root = run["root"]
    mv = client(root).get_model_version(NAME, "1")
    return {**run, "lock": lock_md5s(root), "tags": dict(mv.tags), "status": dvc(root, "status", "--json").stdout,
            "cloud": dvc(root, "status", "-c").stdout, "repro": dvc(root, "repro").stdout}


@pytest.fixture
def project(first, tmp_path: Path) -> Path:
    """A copy of the first run's project (git, DVC cache and remote, MLflow store) for one test to change."""
    return copy_project(first["root"], tmp_path / "project")


# ------------------------------------------------------------------------------------------------ tests
def test_first_run_writes_the_lock_fills_the_remote_and_tags_the_version(first) -> None:
    root, (row,) = first["root"], first["rows"]
    assert row["status"] == "promoted" and row["version"] == "1", row
    assert ran(row) == ["prepare", "train", "evaluate"]
    assert json.loads(first["status"] or "{}") == {}  # dvc status: up to date
    assert "in sync" in first["cloud"]  # dvc status -c: the default local remote holds everything
    assert (root / "dvc-storage" / "files" / "md5").is_dir()  # created on first use, inside the project
    for stage in STAGES:  # dvc repro after steer run: a no-op
        assert "Running stage" not in first["repro"], first["repro"]
    tags, lock = first["tags"], first["lock"]
    for rel in V1_FILES:  # the version names its data, prompts and steer by their dvc.lock md5
        assert tags[f"dvc.{rel}"] == lock[rel], rel
    assert tags["steer.sha256"] == sha256(first["snapshot"] / f"artifacts/steers/{NAME}.safetensors")
    assert tags["git_commit"] == first["commit"] and tags["git_dirty"] == "false"
    assert len(tags["lineage.params_sha256"]) == 64
    run = client(root).get_run(client(root).get_model_version(NAME, "1").run_id)
    assert run.data.tags["dvc.data/prompts/sentiment.jsonl"] == lock[f"data/prompts/{NAME}.jsonl"]
    parent = client(root).get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["git_commit"] == first["commit"] and "lineage.params_sha256" in parent.data.tags


def test_a_code_change_reruns_exactly_the_stages_that_run_that_code(project) -> None:
    root = project
    before = versions(root)
    with open(root / "steer_core" / "evaluate" / "metrics.py", "a") as f:
        f.write("\n# a code change\n")
    (row,) = run_flow(root)
    assert ran(row) == ["evaluate"], row
    with open(root / "steer_core" / "train.py", "a") as f:
        f.write("\n# a code change\n")
    (row,) = run_flow(root)
    # train re-runs; its steer is byte-identical (deterministic fit), so DVC has nothing new for evaluate
    assert ran(row) == ["train"], row
    assert versions(root) == before  # the same steer file: no new version
    assert "up to date" in dvc(root, "status").stdout


def test_checkout_fails_clearly_when_the_remote_lacks_the_data(project, tmp_path) -> None:
    root = project
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)
    empty = tmp_path / "empty-remote"
    empty.mkdir()
    dvc(root, "remote", "add", "--local", "-f", "local", str(empty))  # config.local overrides the project's remote
    out = tmp_path / "out"
    proc = steer_cli(root, "checkout", f"{NAME}@1", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "lacks" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))  # nothing half-restored
    bad = steer_cli(root, "checkout", f"{NAME}@99")
    assert bad.returncode == 2 and "no such version" in bad.stderr, bad.stderr


def test_stage_deps_cover_every_module_a_stage_loads(project) -> None:
    """dvc.yaml must list all the code a stage runs: run each stage outside DVC and compare its loaded modules
    (all of them from the project's own steer_core, as under DVC)."""
    root = project
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for stage in ("prepare", "train", "evaluate"):
        deps = [d for d in stages[stage]["do"]["deps"] if d.startswith("steer_core")]
        code = ("import sys\nfrom pathlib import Path\nfrom steer_core.config import load_params\n"
                "from steer_core.stages import run_stage\n"
                f"run_stage({stage!r}, load_params('params.yaml'), {NAME!r}, Path('.'), progress=False)\n"
                "print(sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('steer_core')))")
        proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        # run from the project root, a stage imports the project's own steer_core: the very files DVC hashes
        files = eval(proc.stdout.strip().splitlines()[-1])
        loaded = {str(Path(f).resolve().relative_to(root.resolve())) for f in files}
        missing = [m for m in loaded if not any(m == d or m.startswith(d.rstrip("/") + "/") for d in deps)]
        assert not missing, f"{stage}: dvc.yaml deps lack {missing}"
    # the stages wrote the same bytes again, but for the steer's card, which holds this fit's timings
    changed = [ln.split()[-1] for ln in dvc(root, "status").stdout.splitlines() if "modified:" in ln]
    assert set(changed) <= {f"artifacts/steers/{NAME}.json"}, changed
    dvc(root, "checkout", "--force", f"artifacts/steers/{NAME}.json")
    assert "up to date" in dvc(root, "status").stdout


def test_new_data_registers_a_version_and_checkout_restores_v1_byte_identically(first, project, tmp_path) -> None:
    root, snap = project, first["snapshot"]
    git(root, "add", "-A")  # dvc.lock, metrics and plot data go to git; DVC git-ignores what it caches
    git(root, "commit", "-q", "-m", "a run")
    committed = [p for p in git(root, "ls-files").splitlines()
                 if p.startswith(("data/", "artifacts/", "reports/")) and not p.endswith(".gitignore")]
    assert not committed, f"cached outputs committed to git: {committed}"
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["steers"][NAME]["data"]["max_per_label"] = 24
    write_params(root / "params.yaml", params)
    (row,) = run_flow(root)
    assert ran(row) == ["prepare", "train", "evaluate"], row
    diff = json.loads(dvc(root, "metrics", "diff", "HEAD", "--json").stdout)  # the candidate's figures, by commit
    assert f"metrics/{NAME}.json" in diff and diff[f"metrics/{NAME}.json"], diff
    new = max(versions(root))
    assert row["version"] == str(new) and new > 1
    steer = f"artifacts/steers/{NAME}.safetensors"
    assert sha256(root / steer) != sha256(snap / steer)

    shutil.rmtree(root / ".dvc" / "cache")  # restore must come from the remote, not the local cache
    out = tmp_path / "restored"
    proc = steer_cli(root, "checkout", f"{NAME}@1", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["version"] == "1" and sorted(doc["files"]) == sorted(V1_FILES)
    for rel in V1_FILES:
        assert sha256(out / rel) == sha256(snap / rel), rel

    proc = steer_cli(root, "checkout", f"{NAME}@1")  # into the workspace
    assert proc.returncode == 0, proc.stderr
    for rel in V1_FILES:
        assert sha256(root / rel) == sha256(snap / rel), rel
