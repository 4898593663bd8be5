"""Temp projects for the pipeline tests: this repo's dvc.yaml and the steer_core code its stages depend on, a params
file, and (optionally) a git repository with one commit. ``steer run`` does the rest (``dvc init``, the default
local remote) as it does for a user."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


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
                                     "artifacts/champions/\n.steer-run.lock\n.steer-run.json\n")
    write_params(root / "params.yaml", params)
    (root / ".dvc").mkdir()  # like a clone (or a copy) of this repo: .dvc/ with its default local remote
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, root / ".dvc" / name)
    if with_git:
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "project")
    return root
