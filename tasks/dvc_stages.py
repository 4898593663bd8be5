"""DVC is the one judge of what changed: ``steer run`` executes the stages of ``dvc.yaml`` through DVC's Python API.

Each stage runs exactly as ``dvc repro`` runs it (the stage's ``cmd`` in a subprocess, ``dvc.lock`` written, outputs
cached), so ``steer run`` and ``dvc repro`` agree on what is up to date, and every output lands in the DVC cache and,
once pushed, in the remote. The repository lock is waited for, not failed on, so steer chains running side by side
take turns at DVC.

Also here: opening the project (``dvc init`` when it has none; no SCM outside a git work tree; the default remote
created on first use), pushing a steer's outputs, and reading back the hashes of a steer's cached outputs for its
lineage tags.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from steer_core.errors import SteerError

DEFAULT_REMOTE = "local"
DEFAULT_REMOTE_DIR = "dvc-storage"  # inside the project, ignored by git
HEARTBEAT_SECONDS = 30.0


class StageFailed(SteerError):
    """A DVC stage's command failed; nothing of it was recorded in dvc.lock."""


@dataclass(frozen=True)
class DvcProject:
    """Where a project's DVC state lives and where it pushes."""

    root: Path
    git: bool  # inside a git work tree (else DVC runs without SCM and lineage has no commit)
    remote: str  # the DVC remote this run pushes to
    remote_url: str


def git_toplevel(root: Path) -> Path | None:
    """The top of the git work tree holding ``root``; None outside git, or when ``root`` is a folder that its
    enclosing repository ignores (a project copied into a scratch folder is not that repository's content)."""
    try:
        proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        if proc.returncode != 0 or not proc.stdout.strip():
            return None
        top = Path(proc.stdout.strip()).resolve()
        if top != Path(root).resolve():
            ignored = subprocess.run(["git", "check-ignore", "-q", str(root)], cwd=top, timeout=10)
            if ignored.returncode == 0:
                return None
    except (OSError, subprocess.SubprocessError):
        return None
    return top


_CWD_LOCK = threading.Lock()
_cwd_users = 0
_cwd_before: str | None = None


@contextlib.contextmanager
def _in_root(root: Path) -> Iterator[None]:
    """Run with the project root as the working directory: parts of DVC (the run cache, stage addressing) resolve
    paths against it. Steer chains running side by side share one root, so the directory changes once and is
    restored when the last of them leaves; two different projects at once in one process are refused."""
    global _cwd_users, _cwd_before
    with _CWD_LOCK:
        if _cwd_users == 0:
            _cwd_before = os.getcwd()
            os.chdir(root)
        elif Path(os.getcwd()).resolve() != Path(root).resolve():
            raise RuntimeError(f"DVC is already working in {os.getcwd()}; one project at a time per process")
        _cwd_users += 1
    try:
        yield
    finally:
        with _CWD_LOCK:
            _cwd_users -= 1
            if _cwd_users == 0 and _cwd_before is not None:
                os.chdir(_cwd_before)


@contextlib.contextmanager
def repo(root: Path) -> Iterator:
    """A DVC repo handle for one operation; it waits for the repository lock instead of failing on it."""
    from dvc.repo import Repo

    with _in_root(root):
        r = Repo(str(root), _wait_for_lock=True)
        try:
            yield r
        finally:
            r.close()


def open_project(root: Path, remote: str | None = None, log: Callable[[str], None] = print) -> DvcProject:
    """Make ``root`` a DVC project ready to run and push: ``dvc init`` if needed, no SCM outside git, a remote.

    ``remote`` names a configured DVC remote (``dvc remote add NAME URL``); None uses the project's default
    remote, and a project without one gets ``local`` → ``<root>/dvc-storage`` as its default. The stage commands
    (``python -m flows.stages``) must resolve to this interpreter, so its bin directory goes first on PATH.
    """
    from dvc.repo import Repo

    import logging

    root = Path(root).resolve()
    logging.getLogger("dvc").propagate = False  # DVC prints its own lines once; not again through Prefect's handler
    logging.getLogger("dvc.repo.scm_context").setLevel(logging.WARNING)  # no "git add dvc.lock" advice every stage
    top = git_toplevel(root)
    git = top is not None
    if not (root / ".dvc").is_dir():
        with _in_root(root):  # a project in a subfolder of a git repository is a DVC subdir project of it
            Repo.init(str(root), no_scm=not git, subdir=git and top != root)
        log(f"initialised DVC in {root} ({'with git' if git else 'without SCM: not a git work tree'})")
    elif not git:  # a copied project: DVC without SCM, in config.local (this copy only, never committed)
        from dvc.config import Config

        with _in_root(root), Config(dvc_dir=str(root / ".dvc")).edit("local") as conf:
            conf["core"]["no_scm"] = True
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    with repo(root) as r:
        remotes = dict(r.config.get("remote", {}))
        name = remote or r.config["core"].get("remote")
        if name is None:
            with r.config.edit("repo") as conf:
                conf["remote"][DEFAULT_REMOTE] = {"url": str(root / DEFAULT_REMOTE_DIR)}  # saved relative
                conf["core"]["remote"] = DEFAULT_REMOTE
            name, remotes = DEFAULT_REMOTE, {DEFAULT_REMOTE: {"url": str(root / DEFAULT_REMOTE_DIR)}}
            log(f"DVC remote: none configured, so '{DEFAULT_REMOTE}' → {root / DEFAULT_REMOTE_DIR} is now the default")
        if name not in remotes:
            raise ValueError(f"dvc.remote {name!r} is not a DVC remote of this project (configured: "
                             f"{sorted(remotes) or 'none'}); add it with `dvc remote add {name} URL`")
        url = str(remotes[name]["url"])
    if "://" not in url and not os.path.isabs(url):
        url = str((root / url).resolve())
    return DvcProject(root, git, name, url)


def stage_name(stage: str, steer: str) -> str:
    """``train`` + ``sentiment`` → ``train@sentiment`` (dvc.yaml's foreach stages)."""
    return f"{stage}@{steer}"


def target(project: DvcProject, stage: str) -> str:
    """An absolute stage address: DVC resolves a bare ``train@sentiment`` against the current directory."""
    return f"{project.root / 'dvc.yaml'}:{stage}"


def changes(status: dict) -> str:
    """DVC's status of one stage as a short phrase: what changed, so the log says why a stage runs."""
    parts: list[str] = []
    for entries in status.values():
        for entry in entries:
            if isinstance(entry, str):
                parts.append(entry)
                continue
            for kind, items in entry.items():
                if isinstance(items, dict):
                    for path, what in items.items():
                        if isinstance(what, dict):  # params: {file: {key: modified}}
                            parts += [f"param {k} {v}" for k, v in what.items()]
                        else:
                            parts.append(f"{path} {what}")
                else:
                    parts.append(f"{kind}: {items}")
    if not parts:
        return "changed"
    more = f"; and {len(parts) - 3} more" if len(parts) > 3 else ""
    return "; ".join(parts[:3]) + more


def outputs_missing_only(status: dict) -> bool:
    """Whether DVC's status of a stage says only that outputs are missing here (``deleted`` from the workspace, or
    ``not in cache``, as in a fresh clone): the case a pull can serve. A modified output or any changed dependency
    runs the stage."""
    entries = [e for es in status.values() for e in es]
    return bool(entries) and all(
        isinstance(e, dict) and set(e) == {"changed outs"}
        and set(e["changed outs"].values()) <= {"deleted", "not in cache"} for e in entries)


def reproduce(project: DvcProject, stage: str, log: Callable[[str], None] = print) -> dict:
    """Run one stage through DVC if, and only if, DVC says it changed. Returns ``{stage, ran, why, seconds}``. A
    stage that changed only because its outputs are missing here is pulled from the DVC remote instead (``ran``
    False), as ``dvc repro --pull`` does: a copy of the project on another machine reuses what was computed.

    The stage's command prints its own progress (fit epochs, sampling batches) on stderr; a heartbeat line with the
    elapsed time is logged every 30 s, so a long stage never looks hung.
    """
    t0 = time.perf_counter()
    with repo(project.root) as r:
        status = r.status(targets=[target(project, stage)])
    if not status:
        log(f"{stage}: up to date (DVC), skipped")
        return {"stage": stage, "ran": False, "why": "up to date", "seconds": 0.0}
    why = changes(status)
    log(f"{stage}: running ({why})")
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            log(f"{stage}: still running, {time.perf_counter() - t0:.0f} s")

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    from dvc.exceptions import ReproductionError

    try:
        with repo(project.root) as r:
            # `dvc repro --pull`: a stage whose only change is that its outputs are not here, as in a fresh copy of
            # the project on another machine, gets them from the DVC remote instead of re-running (and any input
            # tracked by DVC that is missing); the run cache is not used (every output is `persist`)
            pull = {"pull": True, "run_cache": False} if outputs_missing_only(status) else {}
            ran = r.reproduce(targets=[target(project, stage)], single_item=True, **pull)
            if not ran and r.status(targets=[target(project, stage)]):
                # what a pull cannot bring (an uncached output such as metrics/, or nothing on the remote): run it
                ran = r.reproduce(targets=[target(project, stage)], single_item=True)
    except ReproductionError as exc:
        cause = exc.__cause__
        why = f": {str(cause).splitlines()[0]}" if cause is not None and str(cause).strip() else ""
        raise StageFailed(f"{stage} failed{why} (the stage's own error is printed above); its previous outputs and "
                          f"dvc.lock entry are as they were") from exc
    finally:
        done.set()
    seconds = round(time.perf_counter() - t0, 1)
    if not ran:
        log(f"{stage}: pulled its outputs from DVC remote {project.remote!r} ({why}) in {seconds:.0f} s, not re-run")
        return {"stage": stage, "ran": False, "why": f"pulled from DVC remote {project.remote!r}", "seconds": seconds}
    log(f"{stage}: done in {seconds:.0f} s")
    return {"stage": stage, "ran": True, "why": why, "seconds": seconds}


def push(project: DvcProject, stages: list[str]) -> int:
    """Push these stages' cached outputs to the project's remote; raise unless the remote then holds them all."""
    targets = [target(project, s) for s in stages]
    with repo(project.root) as r:
        pushed = r.push(targets=targets, remote=project.remote)
        missing = r.status(targets=targets, cloud=True, remote=project.remote)
    if missing:
        raise StageFailed(f"DVC remote {project.remote!r} ({project.remote_url}) still lacks {sorted(missing)} "
                           f"after the push")
    return int(pushed or 0)


def cached_outputs(project: DvcProject, stages: list[str]) -> dict[str, str]:
    """``{path relative to the root: md5}`` of every cached output of these stages, as ``dvc.lock`` records them."""
    out: dict[str, str] = {}
    with repo(project.root) as r:
        for name in stages:
            for stage in r.stage.collect(target(project, name)):
                for o in stage.outs:
                    if o.use_cache and o.hash_info and o.hash_info.value:
                        out[str(Path(o.fs_path).relative_to(project.root))] = o.hash_info.value
    return out


def restore_objects(project: DvcProject, files: dict[str, str], dest: Path,
                    verify: Callable[[Path], None] | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Copy the files ``{relative path: md5}`` out of the DVC cache into ``dest``, fetching what the cache lacks from
    the remote first. The files are staged first and ``verify(staged_dir)`` may refuse them: nothing is written to
    ``dest`` unless every file is there and verified."""
    import shutil
    import tempfile

    from dvc_data.hashfile.hash_info import HashInfo

    with repo(project.root) as r:
        odb = r.cache.local
        lacking = {p: md5 for p, md5 in files.items() if not odb.exists(md5)}
        if lacking:
            log(f"fetching {len(lacking)} file(s) from DVC remote {project.remote!r} ({project.remote_url})")
            result = r.cloud.pull([HashInfo("md5", md5) for md5 in lacking.values()], remote=project.remote)
            failed = {h.value for h in getattr(result, "failed", set())}
            gone = [p for p, md5 in lacking.items() if md5 in failed or not odb.exists(md5)]
            if gone:
                raise FileNotFoundError(
                    f"DVC remote {project.remote!r} ({project.remote_url}) lacks {', '.join(sorted(gone))} "
                    f"(md5 {lacking[sorted(gone)[0]]}): it was never pushed there, or the remote was cleaned")
        dest.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=".restore-", dir=dest))
        try:
            for rel, md5 in files.items():
                (staged / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(odb.oid_to_path(md5), staged / rel)
            if verify is not None:
                verify(staged)
            written = []
            for rel in files:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged / rel, dest / rel)
                written.append(dest / rel)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    return written
