"""Atomic file writes: readers (DVC, MLflow, a user's `cat`) never see half a file, and a failed write leaves none."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping


@contextmanager
def file_atomic(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write (by any writer that takes a path); renamed into place as ``path``
    when the block ends without an error, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write via a temporary sibling, then rename into place; the temporary file is removed on failure."""
    with file_atomic(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_together(contents: Mapping[Path, str | bytes]) -> list[Path]:
    """Write several files as one output: every file goes to a temporary sibling first, and only when all are
    written are they renamed into place. A failure before that (bad data, a full disk, a kill) leaves every
    previous file as it was and no temporary file behind."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in contents.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [path for _, path in temps]


@contextmanager
def dir_atomic(path: Path, replace: bool = True) -> Iterator[Path]:
    """Build a directory in the temporary sibling this yields; when the block ends without an error it is renamed
    into place as ``path``, else removed. An existing ``path`` is swapped out for it (``replace``) or, when not
    ``replace``, kept: the first finished writer wins and this one's directory is discarded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()  # the usual permissions (mkdtemp's would be owner-only)
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        elif replace:
            backup = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, backup)
            os.replace(tmp, path)
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file's bytes, read in chunks (model weights are hundreds of MB): how steers, models and
    caches are addressed everywhere."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
