"""Atomic file writes: readers (DVC, MLflow, a user's `cat`) never see half a file, and a failed write leaves none."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Mapping


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write via a temporary sibling, then rename into place; the temporary file is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file's bytes, read in chunks (model weights are hundreds of MB): how steers, models and
    caches are addressed everywhere."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
