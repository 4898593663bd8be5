"""The orchestration commands, added onto the library's ``steer`` app: ``run``, ``deploy``, ``checkout`` and
``playground``.

They live here, not in ``steer_core``, because they need Prefect, MLflow and DVC (the playground: Gradio); the
console script ``steer`` points at this module's ``app``, which is ``steer_core.cli.app`` plus these commands. Prefect
reads PREFECT_HOME when it is imported, so each command sets the project's tool state (``project_env``) before
importing the flow.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer

from steer_core.cli import app, cli_errors, err, out

__all__ = ["app", "main"]


def project_env(root: Path) -> None:
    """Keep Prefect's, MLflow's and DVC's state inside the project unless the user set otherwise.

    Must run before prefect is imported (it reads PREFECT_HOME at import)."""
    defaults = {
        "PREFECT_HOME": root / ".prefect",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": root / ".dvc-site",
        "TOKENIZERS_PARALLELISM": "false",
        "MPLCONFIGDIR": root / ".cache" / "matplotlib",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, str(value))


def print_summary(rows: list[dict]) -> None:
    """The run's table, readable at 80 columns: short columns that never truncate; per steer, the control, the DVC
    stages that ran, the gate's reasons and the comparison with each baseline below it."""
    from rich import box
    from rich.table import Table

    table = Table(title="steer run", box=box.SIMPLE_HEAD, caption="gain: control gained over the unsteered model "
                  "(sentiment: the ±s swing in positive rate; toxicity: 1 − avg max toxicity), cross-fitted, by the "
                  "labeller; judge: the same by the independent judge; fluency: cost ≤ its 95 % upper end; s: "
                  "recommended strength (+side/−side)", caption_justify="left")
    cols = [("steer", "steer"), ("s", "s"), ("gain", "gain"), ("judge", "judge"), ("fluency", "fluency"),
            ("distinct-2", "d-2"), ("version", "v"), ("status", "status")]
    for key, title in cols:
        cells = [str(r.get(key, "")) for r in rows]
        # a cell may wrap between words, never inside one
        width = max([len(title)] + [len(w) for c in cells for w in (c.split() if key == "status" else [c])])
        table.add_column(title, no_wrap=key != "status", overflow="fold", min_width=width)
    for row in rows:
        table.add_row(*[str(row.get(key, "")) for key, _ in cols])
    out.print(table)
    for row in rows:
        if row.get("control"):
            out.print(f"[bold]{row['steer']}[/bold]: {row['control']}", highlight=False)
        out.print(f"[bold]{row['steer']}[/bold] (DVC ran: {row.get('ran', '')}): {row.get('why', '')}",
                  highlight=False)
        for line in row.get("vs_baseline") or []:
            out.print(f"[bold]{row['steer']}[/bold] vs {line}", highlight=False)


def _project(params_file: Path):
    from steer_core.config import load_params

    params = load_params(params_file)  # fail on a bad params file before anything starts
    root = params_file.resolve().parent
    project_env(root)
    return params, root


def front_door(params_file: Path, only: Optional[list[str]] = None):
    """Everything ``steer run`` checks before it takes the run lock or starts any work: the params file parses and
    validates, and the run's preflight passes (steers, model, data and prompt files, scorers, tracking store, DVC
    remote). Writes nothing; raises one of ``USER_ERRORS`` (one line) on the first problem. Returns
    ``(params, root, names)``."""
    params, root = _project(params_file)
    from tasks import preflight

    names = list(only or params.steers)
    preflight.check_run(params, root, names, params_file)  # before any model, sample or registry write
    return params, root, names


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send whatever is written to stdout meanwhile, by this process or a child (DVC's stage lines, a stage command's
    output), to stderr, so that ``--json`` leaves stdout to the JSON document alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # and Python's own sys.stdout, whatever file it writes to
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@app.command()
@cli_errors
def run(
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    only: Optional[list[str]] = typer.Option(None, "--steer", help="run only these steers (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="evaluate and gate, but move no registry alias"),
    check: bool = typer.Option(False, "--check", help="only validate params.yaml and the project (what a run "
                               "checks before any work), then exit: nothing is run or written"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The whole job: DVC's stages (prepare → train → evaluate), push, register, gated promotion, for every steer."""
    params, root, names = front_door(params_file, only)
    if check:
        err.print(f"{params_file}: ok, ready to run {', '.join(names)}", highlight=False, soft_wrap=True)
        return
    from tasks import run_lock

    quiet_stdout = stdout_to_stderr() if as_json else contextlib.nullcontext()
    with quiet_stdout, run_lock.hold(root, log=err.print):  # one run per project; a second one is refused at once
        from flows.steer_pipeline import steer_pipeline

        rows = steer_pipeline(params_path=str(params_file.resolve()), steers=only or None, dry_run=dry_run,
                              root=str(root), params=params)
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
    else:
        print_summary(rows)


@app.command()
@cli_errors
def deploy(
    cron: Optional[str] = typer.Option(None, "--cron", help='schedule, e.g. "0 3 * * 1" (Mondays 03:00)'),
    pool: Optional[str] = typer.Option(None, "--pool", help="deploy to this Prefect work pool (created as type "
                                       "process if missing); its workers run the flow. Without it, serve from here"),
    name: str = typer.Option("steer-production", "--name"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
) -> None:
    """Deploy the pipeline (needs a Prefect server: PREFECT_API_URL): to a work pool's workers (--pool), or served
    from this process on a cron schedule (--cron alone; blocks)."""
    params, root = _project(params_file)
    if pool is None and cron is None:
        raise ValueError("give --cron SCHEDULE (serve from this machine) or --pool NAME (a work pool's workers run "
                         "it), or both")
    from flows.deployments import check_cron, prefect_api, shared_tracking_uri

    if pool is not None:
        shared_tracking_uri(params)  # before Prefect is touched
    prefect_api()  # a deployment outlives this command only on a real Prefect server
    if cron is not None:
        check_cron(cron)
    if pool is None:
        from flows.steer_pipeline import serve_scheduled

        serve_scheduled(cron, name, str(params_file.resolve()), str(root), log=err.print)
        return
    from flows.deployments import deploy_to_pool

    ref = deploy_to_pool(pool, name, params, str(params_file.resolve()), str(root), cron=cron, log=err.print)
    out.print(ref, highlight=False)


@app.command()
@cli_errors
def checkout(
    ref: str = typer.Argument(..., help="NAME@VERSION or NAME@ALIAS, e.g. sentiment@champion or sentiment@3"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="restore here instead of the project's workspace"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Restore a registered version's prepared data, prompts and steer file through DVC, from its lineage tags."""
    name, at, which = ref.partition("@")
    if not name or not at or not which or "@" in which:
        raise ValueError(f"{ref!r} is not NAME@VERSION or NAME@ALIAS (e.g. sentiment@champion, sentiment@3)")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; expected a folder to restore into")
    params, root = _project(params_file)
    from tasks.mlflow_io import restore_version

    doc = restore_version(ref, params, root, out_dir, log=err.print)
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    out.print(f"restored {doc['name']} version {doc['version']} into {doc['dest']} (steer sha256 {doc['sha256'][:12]}… "
              f"verified)", highlight=False)
    for path in doc["files"]:
        out.print(f"  {path}", highlight=False)
    out.print(f"code: git commit {doc['git_commit']} (dirty: {doc['git_dirty']}); params sha256 "
              f"{doc['params_sha256'][:12]}…", highlight=False)


@app.command()
@cli_errors
def playground(
    port: int = typer.Option(7860, "--port", min=1, max=65535),
    host: str = typer.Option("127.0.0.1", "--host", help="the address to serve on (0.0.0.0: every interface)"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: params.yaml's "
                                          "runtime.threads, else 1)"),
) -> None:
    """Serve a local page that puts the base model and registered steers (default: each steer's champion beside its
    newest version) side by side on your prompts, with the same random numbers in every column."""
    params, root = _project(params_file)
    from flows.playground import serve

    serve(params, root, port=port, host=host, threads=threads, log_line=lambda m: err.print(m, highlight=False))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
