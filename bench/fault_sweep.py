"""The full fault sweep: ``steer run`` killed (SIGKILL to its process group, or to its main process alone) at every
kill point of ``tests/faults.py``, then run again; each case must leave no process of the killed run alive 5 s
after the kill, and end in the state of an undisturbed run. CI runs one crash scenario a run (two of these points
and a tracking server killed mid-run rotate by commit: tests/test_faults.py); this runs every point and prints one
line per point. The base model is the pipeline tests' tiny random model (tests/tiny_pipeline.py), built if missing.

    source env.sh && .venv/bin/python bench/fault_sweep.py [--points train-mid,after-push] [--executor dask]

~1.5 min per point on a 2-core CPU (a partial run plus a full rerun of the tiny pipeline).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from faults import GONE_WITHIN_S, KILL_POINTS, PARAMS, fresh_project, run, run_killed_at, state  # noqa: E402
from tiny_pipeline import ensure_tiny_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", help="comma-separated kill point names (default: all)")
    parser.add_argument("--executor", choices=("local", "dask"), default="local",
                        help="dask: the evaluation's shards on a LocalCluster of 2 worker processes, whose workers "
                        "must end with the run too")
    args = parser.parse_args()
    ensure_tiny_model()
    params = copy.deepcopy(PARAMS)
    if args.executor == "dask":
        params["runtime"]["executor"] = {"kind": "dask", "workers": 2, "threads_per_worker": 1}
    points = KILL_POINTS
    if args.points:
        wanted = set(args.points.split(","))
        unknown = wanted - {p.name for p in KILL_POINTS}
        if unknown:
            print(f"error: unknown kill point(s) {sorted(unknown)}; known: {[p.name for p in KILL_POINTS]}",
                  file=sys.stderr)
            return 2
        points = [p for p in KILL_POINTS if p.name in wanted]
    with tempfile.TemporaryDirectory(prefix="fault-sweep-") as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        ref_root = fresh_project(base / "reference", params)
        done = run(ref_root)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        reference = state(ref_root)
        print(f"reference run: {time.perf_counter() - t0:.0f} s; champion {reference['champion']}, "
              f"versions {[v[0] for v in reference['versions']]}")
        failures = 0
        for point in points:
            t0 = time.perf_counter()
            root = fresh_project(base / point.name, params)
            killed = run_killed_at(root, point, base / f"{point.name}.log")
            again = run(root)
            got = state(root)
            same = again.returncode == 0 and got == reference and not killed.survivors
            failures += not same
            diff = [k for k in reference if got.get(k) != reference[k]]
            left = (f"{len(killed.survivors)} process(es) alive {GONE_WITHIN_S:.0f} s later: {killed.survivors}"
                    if killed.survivors else f"none alive {GONE_WITHIN_S:.0f} s later")
            print(f"{point.name:22s} {point.scope:5s} kill {'landed' if killed.landed else 'too late'}, {left}; "
                  f"rerun exit {again.returncode}; "
                  f"{'same state as undisturbed' if got == reference else f'DIFFERS in {diff}'} "
                  f"({time.perf_counter() - t0:.0f} s)")
        print(f"{len(points) - failures}/{len(points)} kill points ended in the undisturbed state")
        return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
