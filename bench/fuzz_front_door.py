"""The long run of the front-door fuzz test (tests/test_fuzz_front_door.py runs 250 derandomized examples of each
in CI): random mutations of the shipped params.yaml through ``steer run --check``, and bad arguments to the
``steer`` commands, all in this process. Prints what was tried (by kind and outcome) and every example that breaks
the property (tests/fuzzing.py); exit 1 if any does.

    source env.sh && nice .venv/bin/python bench/fuzz_front_door.py [--params 2000] [--cli 2000] [--seed 1] [--real 10]

About 15 ms an example on a 2-core CPU: the default 2,000 + 2,000 take ~2-5 min (more when the machine is busy).
A failure is printed as a ``Mutation(...)`` / ``CliCase(...)``: add it to the tests as an ``@example``.

``--real N`` checks the other half of the property the fast way only trusts an oracle for: N mutations of the tiny
pipeline's params (tests/tiny_pipeline.py) that ``steer run --check`` accepts are run for real (``steer run``, about
a minute each on the default model); each must finish with exit 0, or fail for a reason that has nothing to do with
the mutation (shown, for a person to judge).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

import fuzzing  # noqa: E402
from fuzzing import check_cli_case, check_params_mutation, cli_cases, cli_workdir, mutations  # noqa: E402


def run_examples(strategy, check, examples: int, rng_seed: int) -> tuple[dict, list[str], float]:
    """``examples`` draws of ``strategy`` through ``check`` (no shrinking: every failure is kept, not the first)."""
    tally: dict = {}
    failures: list[str] = []

    @seed(rng_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def each(example) -> None:
        failures.extend(p for p in check(example, tally) if p not in failures)

    t0 = time.perf_counter()
    each()
    return tally, failures, time.perf_counter() - t0


def report(title: str, tally: dict, failures: list[str], seconds: float) -> None:
    total = sum(tally.values())
    print(f"{title}: {total} examples in {seconds:.0f} s, {len(failures)} failure(s)")
    groups = sorted({k[0] for k in tally})
    for g in groups:
        parts = ", ".join(f"{n} {what}" for (k, what), n in sorted(tally.items()) if k == g)
        print(f"  {g:10s} {parts}")
    for f in failures:
        print(f"  FAIL {f[:1000]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=2000, help="params.yaml mutations (0: none)")
    parser.add_argument("--cli", type=int, default=2000, help="command lines (0: none)")
    parser.add_argument("--seed", type=int, default=1, help="Hypothesis seed (the CI test is derandomized)")
    parser.add_argument("--real", type=int, default=0, help="accepted mutations of the tiny params to run for real")
    args = parser.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="fuzz-front-door-") as tmp:
        base = Path(tmp)
        if args.params:
            tally, failures, seconds = run_examples(mutations(), lambda m, t: check_params_mutation(m, base, t),
                                                    args.params, args.seed)
            report("params.yaml mutations through `steer run --check`", tally, failures, seconds)
            failed += len(failures)
        if args.cli:
            work = cli_workdir(base / "cli")
            tally, failures, seconds = run_examples(cli_cases(), lambda c, t: check_cli_case(c, work, t), args.cli,
                                                    args.seed)
            report("bad command lines", tally, failures, seconds)
            failed += len(failures)
        if args.real:
            failed += real_runs(base / "real", args.real, args.seed)
    return 1 if failed else 0


def real_runs(base: Path, n: int, rng_seed: int) -> int:
    """``n`` accepted mutations of the tiny params, each run for real in its own project; the number that failed."""
    import yaml

    from faults import PARAMS, run
    from projects import make_project
    from tiny_pipeline import ensure_tiny_model

    ensure_tiny_model()  # the tiny params' base model

    base.mkdir(parents=True)
    tiny = base / "tiny-params.yaml"
    tiny.write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    fuzzing.SHIPPED = tiny  # the mutations start from the tiny params
    accepted: list = []

    def collect(m, tally) -> list[str]:
        if len(accepted) >= n or m.op in ("duplicate", "yaml", "params"):
            return []
        probe: dict = {}
        problems = check_params_mutation(m, base / "probe", probe)
        if not problems and probe.get((m.op, "accepted")) and m not in accepted:
            accepted.append(m)
        return problems

    (base / "probe").mkdir()
    run_examples(mutations(fuzzing.shipped_tree()), collect, 40 * n, rng_seed)
    failed = 0
    for i, m in enumerate(accepted):
        root = make_project(base / f"run{i}", PARAMS)
        fuzzing.apply(m, root)
        t0 = time.perf_counter()
        done = run(root, timeout=1800)
        why = next((ln for ln in reversed(done.stderr.splitlines()) if ln.startswith("error")), done.stderr[-300:])
        failed += done.returncode != 0
        print(f"  real run {i}: {m}: exit {done.returncode} in {time.perf_counter() - t0:.0f} s"
              + ("" if done.returncode == 0 else f": {why}"), flush=True)
    print(f"real runs of accepted mutations: {len(accepted) - failed}/{len(accepted)} ended with exit 0")
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
