"""Labelled records and the files they come from: the error type of the data path, jsonl / csv / tsv / parquet
readers, and the user's training file for ``steer train --data``."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


class DataError(ValueError):
    """Data that cannot make a steer; the one-line message says what is wrong and what was found."""


@dataclass(frozen=True)
class Record:
    """One labelled text as a source yields it, before cleaning."""

    text: str
    label: str
    confidence: float | None = None
    topic: str | None = None


def load_jsonl(path: str | Path) -> list[dict]:
    """Records of a jsonl file (blank lines skipped); a bad line is an error naming its number."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
                out.append(row)
    return out


def read_table(path: str | Path) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a csv / tsv / jsonl / parquet file. csv is read as UTF-8, else Latin-1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = load_jsonl(path)
        columns = list(dict.fromkeys(k for r in rows for k in r))
    elif suffix in (".csv", ".tsv"):
        columns, rows = _read_csv(path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns, rows = list(table.column_names), table.to_pylist()
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv, .jsonl or .parquet")
    if not rows:
        raise DataError(f"{path}: the file holds no rows")
    return columns, rows


def _read_csv(path: Path, delimiter: str) -> tuple[list[str], list[dict]]:
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            with open(path, encoding=encoding, newline="") as f:
                reader = csv.DictReader(f, delimiter=delimiter)
                rows = list(reader)
                return list(reader.fieldnames or []), rows
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def read_training_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Texts and labels (as strings) of a user file with ``text`` and ``label`` columns, for ``steer train --data``."""
    columns, rows = read_table(path)
    require_columns(["text", "label"], columns, str(path))
    pairs = [(str(r["text"]), str(r["label"])) for r in rows if r.get("text") not in (None, "") and r.get("label") is not None]
    if not pairs:
        raise DataError(f"{path}: no row has both a text and a label")
    if len(labels := {lab for _, lab in pairs}) < 2:
        raise DataError(f"{path}: only one label ({labels.pop()!r}); a steer needs at least two")
    return [t for t, _ in pairs], [lab for _, lab in pairs]


def require_columns(wanted: Sequence[str], found: Sequence[str], where: str) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise DataError(f"{where}: missing column {', '.join(map(repr, missing))}; columns found: {list(found)}")

