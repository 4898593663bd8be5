"""Evaluation throughput on a Dask cluster: 1 vs 2 worker processes (1 torch thread each), side by side in one run,
against the ideal 2×; and what a worker spends loading the base model once against sampling.

The evaluation is the pipeline's own (``steer_core.evaluate.driver.evaluate`` with ``flows.executors.dask_runner``: every shard
a Prefect task on a ``DaskTaskRunner``): P prompts × K samples × strengths (−S, 0, +S) of a random steer on the
default model, N new tokens, VADER and the base model as judge, cut into the fixed plan of 6-prompt shards. For each
cluster size, a LocalCluster is started, then:

- round 0 (cold): each worker loads the model on its first shard (the load time is reported per worker);
- rounds 1..R (warm): the same evaluation again, models kept; samples/s = samples / wall seconds of the evaluation
  (submit, sample, score, gather, metrics), the median over rounds. The two cluster sizes alternate round by round,
  so a busy machine (colleagues' tests) disturbs both alike. Every round's document is checked to equal round 0's.

    python bench/dask_eval.py [--rounds 2] [--prompts 24] [--samples 4] [--new-tokens 20] [--strength 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import NEUTRAL_PROMPTS, ROOT, header, pin_threads  # noqa: E402

for key, value in {"PREFECT_HOME": ROOT / ".prefect", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PREFECT_LOGGING_LEVEL": "WARNING",
                   "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}.items():
    os.environ.setdefault(key, str(value))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--strength", type=float, default=2.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from flows.executors import dask_runner, start_local_cluster
    from steer_core.evaluate import driver as shards
    from steer_core.config import EvalConfig, Params
    from steer_core.evaluate.protocol import System
    from steer_core.model.lm import load_lm
    from steer_core.model.steer import Steer

    pin_threads(1)
    header("dask_eval: evaluation on 1 vs 2 Dask worker processes (1 thread each)")
    lm = load_lm("default", device="cpu")  # the driver's copy: the document's metadata, never sampled here
    steer = Steer(["sentiment", "dummy"], lm.dim, None, 1e-3)
    with torch.no_grad():
        steer.W.copy_(torch.randn(steer.W.shape, generator=torch.Generator().manual_seed(0)) * 0.3)
    prompts = [{"set": "neutral", "prompt": NEUTRAL_PROMPTS[i % len(NEUTRAL_PROMPTS)] + ("" if i < 16 else " the")}
               for i in range(args.prompts)]
    s = args.strength
    cfg = EvalConfig(control="sentiment", scorer="vader", strengths=[-s, 0.0, s], samples=args.samples,
                     max_new_tokens=args.new_tokens, batch_size=64, bootstrap=200, activation_addition=False)
    systems = [System("candidate", cfg.strengths, steer=steer)]
    n_samples = args.prompts * args.samples * len(cfg.strengths)
    plan = shards.plan(args.prompts)
    print(f"# {args.prompts} prompts x {args.samples} samples x {len(cfg.strengths)} strengths = {n_samples} samples "
          f"of {args.new_tokens} tokens; {len(plan)} shards of {'/'.join(str(b - a) for a, b in plan)} prompts")
    params = Params.model_validate({"model": "default", "runtime": {"device": "cpu", "threads": 1, "executor": {
        "kind": "dask", "workers": 2, "threads_per_worker": 1}}})

    clusters = {w: start_local_cluster(w, 1) for w in (1, 2)}  # their workers report to this process's Prefect API
    try:
        reference = None
        stats: dict[int, dict] = {w: {"walls": [], "shard_s": [], "loads": []} for w in clusters}
        for rnd in range(args.rounds + 1):
            for w in (clusters if rnd % 2 == 0 else list(reversed(list(clusters)))):
                shards.use_runner(dask_runner(params, clusters[w].scheduler_address))
                lines: list[str] = []
                t0 = time.perf_counter()
                doc, _ = shards.evaluate(lm, prompts, systems, cfg, seed=0, log=lines.append)
                wall = time.perf_counter() - t0
                shards.use_runner(None)
                text = json.dumps(doc, default=float)
                reference = reference or text
                assert text == reference, "a round's document differs from the first one"
                shard_lines = [ln for ln in lines if ln.startswith("shard ")]
                if rnd == 0:
                    for ln in shard_lines:
                        if "loading the model" in ln:
                            stats[w]["loads"].append(float(ln.split("(+")[1].split(" s")[0]))
                            stats[w]["first_shard_s"] = float(ln.split(" samples in ")[1].split(" s")[0])
                    print(f"round 0 (cold), {w} worker(s): {wall:6.1f} s wall, incl. model loads "
                          f"{', '.join(f'{x:.1f} s' for x in stats[w]['loads'])}")
                    continue
                stats[w]["walls"].append(wall)
                stats[w]["shard_s"] += [float(ln.split(" samples in ")[1].split(" s")[0]) for ln in shard_lines]
                print(f"round {rnd} (warm), {w} worker(s): {wall:6.1f} s wall = {n_samples / wall:5.2f} samples/s")
    finally:
        shards.use_runner(None)
        for c in clusters.values():
            c.close()

    med = {w: statistics.median(stats[w]["walls"]) for w in stats}
    rate = {w: n_samples / med[w] for w in med}
    shard = statistics.median(stats[1]["shard_s"] + stats[2]["shard_s"])
    load = statistics.median(stats[1]["loads"] + stats[2]["loads"])
    print()
    print(f"{'workers':>8} {'wall s (median)':>16} {'samples/s':>10} {'speed-up':>9} {'ideal':>6}")
    for w in (1, 2):
        print(f"{w:>8} {med[w]:>16.1f} {rate[w]:>10.2f} {rate[w] / rate[1]:>8.2f}x {w:>5}x")
    print(f"efficiency of 2 workers: {rate[2] / rate[1] / 2:.0%} of the ideal 2x")
    print(f"per worker: loading the model once {load:.1f} s vs sampling+scoring one {len(plan)}-way shard "
          f"({args.prompts // len(plan)} prompts, {n_samples // len(plan)} samples) {shard:.1f} s (median, warm) "
          f"-> the load is paid once per worker process and amortised over every later shard and steer")
    if args.json:
        args.json.write_text(json.dumps({"samples": n_samples, "median_wall_s": med, "samples_per_s": rate,
                                         "load_s": load, "shard_s": shard}, indent=2))


if __name__ == "__main__":
    main()
