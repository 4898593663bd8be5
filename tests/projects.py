"""Temp projects for the pipeline tests: this repo's dvc.yaml and the steer_core code its stages depend on, a params
file, and (optionally) a git repository with one commit. ``steer run`` does the rest (``dvc init``, the default
local remote) as it does for a user."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


_MIGRATED_PREFECT_DB: Path | None = None


def prefect_home(home: Path) -> str:
    """``home`` as a Prefect home whose database already holds Prefect's schema: a copy of one migrated once per
    test process. A new Prefect database runs every migration (~7 s) when ``steer run`` starts its temporary server
    (or a test starts ``prefect server``); with the copy it starts as on a machine that has run before. The tests
    check the run, not Prefect's migrations, which the first of them still runs in full."""
    global _MIGRATED_PREFECT_DB
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "prefect.db").exists():
        if _MIGRATED_PREFECT_DB is None:
            template = Path(tempfile.mkdtemp(prefix="prefect-home-"))
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env.update(PREFECT_HOME=str(template), PREFECT_SERVER_ANALYTICS_ENABLED="false")
            subprocess.run([sys.executable, "-m", "prefect", "server", "database", "reset", "-y"], env=env,
                           check=True, capture_output=True, timeout=300)
            _MIGRATED_PREFECT_DB = template / "prefect.db"
        shutil.copy(_MIGRATED_PREFECT_DB, home / "prefect.db")
    return str(home)


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def make_project(root: Path, params: dict, with_git: bool = True) -> Path:
    """``root`` as a steer project: dvc.yaml, .dvcignore, steer_core/ (the stages' code deps), params.yaml, and the
    repo's committed .dvc/ (config with the default local remote)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "steer_core", root / "steer_core", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.prefect/\n.dvc-site/\ndvc-storage/\n.tmp/\n"
                                     "artifacts/champions/\n.steer-run.lock\n.steer-run.json\n.steer-run.stages.lock\n")
    write_params(root / "params.yaml", params)
    (root / ".dvc").mkdir()  # like a clone (or a copy) of this repo: .dvc/ with its default local remote
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, root / ".dvc" / name)
    if with_git:
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "project")
    return root


def copy_project(src: Path, dst: Path) -> Path:
    """A copy of a project that has run, for one test to change: every file (mtimes kept), its git repo, DVC cache
    and MLflow store. The store's absolute paths (the experiment's artifact location, runs' artifact URIs) are
    rewritten to point into the copy, so nothing a test does reaches ``src``."""
    src, dst = Path(src).resolve(), Path(dst)
    shutil.copytree(src, dst)
    db = dst / "mlflow.db"
    if db.is_file():
        replace_in_sqlite(db, str(src), str(dst.resolve()))
    return dst


def replace_in_sqlite(db: Path, old: str, new: str) -> None:
    """``old`` → ``new`` in every text column of every table of ``db`` (whatever MLflow's schema is)."""
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for _, col, kind, *_ in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                if any(t in kind.upper() for t in ("CHAR", "TEXT", "CLOB")):
                    con.execute(f'UPDATE "{table}" SET "{col}" = REPLACE("{col}", ?, ?) WHERE instr("{col}", ?) > 0',
                                (old, new, old))
        con.commit()
    finally:
        con.close()


#: The environment variables that name an MLflow store (MLflow exports the URI it is given as the first)
MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def without_mlflow_uris(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without a store URI: a subprocess reads its store from the project's params."""
    return {k: v for k, v in env.items() if k not in MLFLOW_URI_VARS}


def forget_tracking() -> None:
    """No active MLflow run, no global tracking or registry URI, and neither URI left in the environment
    (``set_registry_uri(None)`` leaves its variable set): the next test in this worker starts from nothing."""
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for var in MLFLOW_URI_VARS:
        os.environ.pop(var, None)


@contextmanager
def isolated_tracking() -> Iterator[None]:
    """For in-process flow runs: no inherited MLflow URI (each project's params decide); afterwards no active run,
    no global tracking/registry URI, the environment and torch's thread count (the params set 1) put back."""
    import torch

    threads = torch.get_num_threads()
    mp = pytest.MonkeyPatch()
    for var in MLFLOW_URI_VARS:  # another test module may have left one
        mp.delenv(var, raising=False)
    try:
        yield
    finally:
        forget_tracking()
        mp.undo()  # then puts back what was there before
        torch.set_num_threads(threads)


CODE = ("steer_core", "flows", "tasks")


def second_machine(dest: Path, clone_of: Path | None = None) -> Path:
    """A copy of the project standing in for a second machine: in its own folder (a ``git clone`` of ``clone_of``
    when given, as a team clones its repository there), with its own copy of the code (steer_core, flows, tasks:
    the same package version), its own tool state, and its own model cache holding the converted default model,
    which ``setup.sh`` leaves on a machine (hard-linked from this one's: the same bytes, without 500 MB copied)."""
    from steer_core.model.lm import cache_dir

    if clone_of is not None:
        subprocess.run(["git", "clone", "-q", str(clone_of), str(dest)], check=True, capture_output=True)
    dest.mkdir(parents=True, exist_ok=True)
    for name in CODE:
        if not (dest / name).exists():
            shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("dvc.yaml", ".dvcignore"):
        if not (dest / name).exists():
            shutil.copy(ROOT / name, dest / name)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(cache_dir() / "models", dest / ".cache" / "steer" / "models", copy_function=link)
    for sub in (".tmp", ".cache/hf", ".prefect"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    return dest


def machine_env(machine: Path, **extra: str) -> dict[str, str]:
    """The environment of a process on ``machine`` (a :func:`second_machine`): what its env.sh sets, pointing into
    that folder, and nothing of this machine's state (no Prefect API, tracking URI or caches of this checkout)."""
    drop = ("PREFECT_", "MLFLOW_TRACKING", "MLFLOW_REGISTRY", "STEER_", "HF_", "DVC_", "DASK_", "PYTEST_", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PYTHONPATH=str(machine), STEER_PROJECT=str(machine), STEER_CACHE_DIR=str(machine / ".cache" / "steer"),
               HF_HOME=str(machine / ".cache" / "hf"), TMPDIR=str(machine / ".tmp"),
               PREFECT_HOME=str(machine / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(machine / ".dvc-site"),
               MPLCONFIGDIR=str(machine / ".cache" / "matplotlib"), MLFLOW_DISABLE_TELEMETRY="true",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    return env
