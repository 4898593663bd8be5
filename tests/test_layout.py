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


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str, known: set[str]) -> str | None:
    """The deepest known module that ``name`` (a module, or a module's attribute) names."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(package: str) -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports anywhere (top level or inside a function); ``from a import b``
    counts as an import of ``a.b`` when that is a module, else of ``a``."""
    files = {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            targets |= {t for n in names if (t := resolve(n, known)) and t != mod}
        graph[mod] = targets
    return graph


def test_steer_core_has_no_import_cycles() -> None:
    """A newcomer can read the library bottom-up: no module depends on one that depends back on it."""
    graph = import_graph("steer_core")
    # a package's __init__ re-exporting its own submodules is not a dependency of those submodules on it
    edges = {m: {t for t in ts if not (m == t.rpartition(".")[0] and (ROOT / m.replace(".", "/")).is_dir())}
             for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_one_function_evaluates_a_system() -> None:
    """The pipeline, the CLI, transfer and every bench script evaluate through ``steer_core.evaluate.driver``."""
    defs = [str(p.relative_to(ROOT)) for p in (ROOT / "steer_core").rglob("*.py")
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.FunctionDef) and node.name == "evaluate" and p.name != "cli.py"]
    assert defs == ["steer_core/evaluate/driver.py"], defs
    samplers = {str(p.relative_to(ROOT)) for d in ("steer_core", "tasks", "flows", "bench")
                for p in (ROOT / d).rglob("*.py") if "sample_and_score(" in p.read_text()}
    assert samplers <= {"steer_core/evaluate/driver.py", "steer_core/evaluate/protocol.py"}, samplers


def test_every_dvc_stage_enters_through_one_module() -> None:
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {s["do"]["cmd"].split()[:3][2] for s in stages.values()} == {"flows.stages"}
    assert all(s["do"]["cmd"].split()[3] == name for name, s in stages.items())


def project_references(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) for every name a script takes from this project's packages: ``from steer_core.x
    import name`` and ``alias.name`` where ``import steer_core.x as alias`` (at any depth, read or patched)."""
    tree = ast.parse(path.read_text())
    roots = ("steer_core", "tasks", "flows")
    aliases: dict[str, str] = {}
    refs: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in roots and a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in roots:
            refs += [(node.lineno, node.module, a.name) for a in node.names if a.name != "*"]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            refs.append((node.lineno, aliases[node.value.id], node.attr))
    return refs


def test_every_project_name_a_bench_script_uses_exists() -> None:
    """Benchmarks and studies run outside CI (minutes to hours each), so a function moved between modules breaks
    them silently: every project name they import or patch must exist where they look for it."""
    import importlib
    import importlib.util

    missing = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for line, module, name in project_references(path):
            mod = importlib.import_module(module)
            submodule = hasattr(mod, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None
            if not hasattr(mod, name) and not submodule:
                missing.append(f"{path.relative_to(ROOT)}:{line}: {module}.{name}")
    assert not missing, missing
