"""The long run of the front-door fuzz test (tests/test_fuzz_front_door.py runs 500 derandomized examples of each
in CI): random mutations of the shipped params.yaml through ``steer run --check``, and bad arguments to the
``steer`` commands, all in this process. Prints what was tried (by kind and outcome) and every example that breaks
the property (tests/fuzzing.py); exit 1 if any does.

    source env.sh && nice .venv/bin/python bench/fuzz_front_door.py [--params 2000] [--cli 2000] [--seed 1]

About 15 ms an example on a 2-core CPU: the default 2,000 + 2,000 take ~2 min (more when the machine is busy).
A failure is printed as a ``Mutation(...)`` / ``CliCase(...)``: add it to the tests as an ``@example``.
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

from fuzzing import check_cli_case, check_params_mutation, cli_cases, cli_workdir, mutations  # noqa: E402


def run(strategy, check, examples: int, rng_seed: int) -> tuple[dict, list[str], float]:
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
    args = parser.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="fuzz-front-door-") as tmp:
        base = Path(tmp)
        if args.params:
            tally, failures, seconds = run(mutations(), lambda m, t: check_params_mutation(m, base, t), args.params,
                                           args.seed)
            report("params.yaml mutations through `steer run --check`", tally, failures, seconds)
            failed += len(failures)
        if args.cli:
            work = cli_workdir(base / "cli")
            tally, failures, seconds = run(cli_cases(), lambda c, t: check_cli_case(c, work, t), args.cli, args.seed)
            report("bad command lines", tally, failures, seconds)
            failed += len(failures)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
