"""Restore a registered steer version from its lineage: ``steer checkout sentiment@champion`` (or ``@3``).

The version's tags name the DVC md5 of each of its files (prepared data, prompts, steer file and card); DVC
fetches what the local cache lacks from the remote, the steer's sha256 is checked against the registered
artifact's, and only then are the files moved into the workspace (or ``--out DIR``) together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from steer_core.config import Params
from steer_core.files import file_sha256

from . import dvc_stages, lineage, tracking


def resolve(name: str, which: str):
    """The model version for ``NAME@VERSION`` or ``NAME@ALIAS``; a clear error when there is none."""
    client = MlflowClient()
    try:
        if which.isdigit():
            return client.get_model_version(name, which)
        return client.get_model_version_by_alias(name, which)
    except MlflowException:
        try:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        except MlflowException:
            versions = []
        if not versions:
            raise ValueError(f"no registered model named {name!r}") from None
        raise ValueError(f"{name}@{which}: no such version or alias (versions: {versions})") from None


def restore_version(ref: str, params: Params, root: Path, out_dir: Path | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """Restore the files of ``ref`` into ``out_dir`` (default: the project root) and return what was done."""
    name, _, which = ref.partition("@")
    if not name or not which:
        raise ValueError(f"{ref!r} is not NAME@VERSION or NAME@ALIAS (e.g. sentiment@champion, sentiment@3)")
    tracking.configure(params.tracking, root, create=False)
    mv = resolve(name, which)
    files = lineage.outputs_from_tags(mv.tags)
    want = mv.tags.get("steer.sha256", "")
    steer_files = [p for p in files if p.endswith(".safetensors")]
    if not files or not steer_files or not want:
        raise ValueError(f"{name} version {mv.version} has no DVC lineage tags (registered before lineage was "
                         f"recorded?): it cannot be restored through DVC")
    project = dvc_stages.open_project(root, params.dvc.remote, log=log)

    def verify(staged: Path) -> None:
        got = file_sha256(staged / steer_files[0])
        if got != want:
            raise ValueError(f"{steer_files[0]} restored from DVC has sha256 {got[:12]}…, but {name} version "
                             f"{mv.version} was registered with {want[:12]}…: refusing to restore it")

    dest = (out_dir or root).resolve()
    written = dvc_stages.restore_objects(project, files, dest, verify=verify, log=log)
    return {"name": name, "version": str(mv.version), "dest": str(dest), "sha256": want,
            "files": [str(p.relative_to(dest)) for p in written], "git_commit": mv.tags.get("git_commit", "unknown"),
            "git_dirty": mv.tags.get("git_dirty", "unknown"),
            "params_sha256": mv.tags.get("lineage.params_sha256", "")}
