"""The package layout the user fixed: steer_core is the library and imports no orchestration (Prefect, MLflow,
DVC) and nothing from flows/ or tasks/, even inside a function; tasks/ never imports flows/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_roots(package: str) -> dict[str, set[str]]:
    """Top-level module names each file of ``package`` imports (absolute imports, at any depth)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


def test_steer_core_imports_no_orchestration_and_nothing_above_it() -> None:
    forbidden = {"prefect", "mlflow", "dvc", "dvc_data", "flows", "tasks"}
    bad = {f: sorted(n & forbidden) for f, n in imported_roots("steer_core").items() if n & forbidden}
    assert not bad, bad


def test_tasks_do_not_import_flows() -> None:
    bad = {f: "flows" for f, n in imported_roots("tasks").items() if "flows" in n}
    assert not bad, bad
