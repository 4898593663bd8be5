"""`steer run` on the embedded defaults, in a fresh project folder: wall time and peak memory (issue target: under
15 minutes and under 4 GB on the 2-core machine). Then a second run with nothing changed (should be fast, promote
nothing).

    python bench/steer_run.py [--params params.yaml] [--keep DIR]

Memory is the peak of the summed RSS of the whole process tree (the CLI and Prefect's temporary server), sampled
every 0.2 s. The converted model cache ($STEER_CACHE_DIR) is shared with the user's, so a first-ever run adds the
one-time GGUF conversion (~25 s); the hidden-state cache is pointed at a fresh folder so training starts cold.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def run_measured(cmd: list[str], cwd: Path, env: dict) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak summed RSS in GB, last output lines)."""
    t0 = time.perf_counter()
    log = cwd / "steer-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-14:])
    return proc.returncode, wall, peak / 1e9, tail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--keep", default=None, help="run in this folder and keep it (default: a temp folder)")
    args = ap.parse_args()
    work = (Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="steer-run-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.params, work / "params.yaml")
    env = dict(os.environ)
    env.setdefault("STEER_CACHE_DIR", str(ROOT / ".cache" / "steer"))
    env["STEER_HIDDEN_CACHE_DIR"] = str(work / ".hidden")  # cold training cache
    env["PREFECT_HOME"] = str(work / ".prefect")
    steer = str(Path(sys.executable).parent / "steer")
    print(f"project: {work}\nmachine: {os.cpu_count()} cores, torch threads default")
    rows = []
    for label in ("first run (fresh project)", "second run (nothing changed)"):
        code, wall, peak, tail = run_measured([steer, "run", "--params", str(work / "params.yaml")], work, env)
        rows.append((label, code, wall, peak))
        print(f"\n== {label}: exit {code}, {wall / 60:.1f} min, peak RSS {peak:.2f} GB\n{tail}")
        if code != 0:
            break
    print("\n| run | exit | wall | peak memory |\n| --- | --- | --- | --- |")
    for label, code, wall, peak in rows:
        print(f"| {label} | {code} | {wall / 60:.1f} min | {peak:.2f} GB |")
    if len(rows) == 2:
        print(f"second / first wall time: {rows[1][2] / rows[0][2]:.3f}; targets: first < 15 min, peak < 4 GB")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
