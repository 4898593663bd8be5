"""Lineage: what a run and a registered steer version came from, as tags that are enough to restore it.

A version's tags name its git commit (and whether the work tree was dirty), the hash of the params that define the
steer, and the DVC md5 of every cached output of its prepare and train stages (prepared data, prompts, steer file
and card) plus its evaluation outputs. ``steer checkout NAME@VERSION`` reads them back and restores the files
through DVC.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from steer_core.config import Params

from .dvc_stages import git_toplevel

NO_GIT = "none"
DVC_TAG = "dvc."  # dvc.<path relative to the project root> = md5 of that cached output


def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(root: Path) -> str:
    """HEAD's commit, or ``none`` outside a git work tree (or in a repository with no commit yet, or in a folder
    its enclosing repository ignores: the same notion of "in git" as the DVC project's)."""
    if git_toplevel(root) is None:
        return NO_GIT
    proc = _git(root, "rev-parse", "HEAD")
    return proc.stdout.strip() if proc is not None and proc.returncode == 0 and proc.stdout.strip() else NO_GIT


def git_dirty(root: Path) -> bool | None:
    """Whether tracked files differ from HEAD (untracked files do not count); None outside git."""
    if git_toplevel(root) is None:
        return None
    proc = _git(root, "status", "--porcelain", "--untracked-files=no")
    if proc is None or proc.returncode != 0:
        return None
    return bool(proc.stdout.strip())


def params_sha256(params: Params, name: str | None = None) -> str:
    """Hash of the settings that define one steer (base model, seed and its own block), or of all params."""
    if name is None:
        body = params.model_dump(mode="json")
    else:
        body = {"model": params.model, "seed": params.runtime.seed,
                "steer": params.steers[name].model_dump(mode="json")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def run_tags(root: Path, params: Params) -> dict[str, str]:
    """Tags of a pipeline run: code and settings."""
    dirty = git_dirty(root)
    return {"git_commit": git_commit(root), "git_dirty": "unknown" if dirty is None else str(dirty).lower(),
            "lineage.params_sha256": params_sha256(params)}


def steer_tags(root: Path, params: Params, name: str, outputs: dict[str, str]) -> dict[str, str]:
    """Tags of one steer's run and of its model version: code, settings and the DVC hash of each output."""
    tags = run_tags(root, params)
    tags["lineage.params_sha256"] = params_sha256(params, name)
    tags.update({f"{DVC_TAG}{path}": md5 for path, md5 in sorted(outputs.items())})
    return tags


def outputs_from_tags(tags: dict[str, str]) -> dict[str, str]:
    """``{path: md5}`` back from a version's ``dvc.<path>`` tags."""
    return {k[len(DVC_TAG):]: v for k, v in tags.items() if k.startswith(DVC_TAG) and v}
