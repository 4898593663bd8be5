"""The Dask executor: a LocalCluster of 2 worker processes evaluates a tiny steer through Prefect's DaskTaskRunner,
and the metrics document and the samples equal the local executor's bit for bit; each worker loads the model once.
Also the shard plan's pieces: a slice's keyed seed draws the whole run's random numbers for its prompts."""

from __future__ import annotations

import json
import re

import pytest
import torch

from steer_core.evaluate import driver as shards
from steer_core.config import EvalConfig, Params
from steer_core.evaluate.protocol import System
from steer_core.model.sampling import row_uniforms

from builders import random_steer

PROMPTS = [{"set": "neutral" if i % 3 else "negative", "prompt": p} for i, p in enumerate([
    "The weather today", "I think that the", "Our flight was", "The news said", "My friend told me",
    "Yesterday the market", "A new study shows", "The airline staff", "In the morning we"])]


def test_keyed_seed_draws_the_whole_runs_numbers_for_a_slice() -> None:
    for seed in (0, 3, 12345):
        for offset in (1, 6, 1000):
            keys = [(p, s) for p in range(3) for s in range(2)]
            whole = row_uniforms(seed, [(p + offset, s) for p, s in keys], 5)
            assert torch.equal(row_uniforms(shards.keyed_seed(seed, offset), keys, 5), whole)


def test_the_plan_depends_on_the_prompts_alone() -> None:
    assert shards.plan(4) == [(0, 4)]
    assert shards.plan(9) == [(0, 5), (5, 9)]
    assert shards.plan(24) == [(0, 6), (6, 12), (12, 18), (18, 24)]
    for n in (1, 7, 13, 100):
        p = shards.plan(n)
        assert p[0][0] == 0 and p[-1][1] == n and all(a[1] == b[0] for a, b in zip(p, p[1:]))
        assert max(b - a for a, b in p) - min(b - a for a, b in p) <= 1


def test_the_local_executor_reports_each_shard_as_it_finishes(tiny_lm) -> None:
    """A long local evaluation shows progress: each shard's line is logged when that shard ends, not after all."""
    import time

    cfg = EvalConfig(control="sentiment", scorer="vader", strengths=[-2.0, 0.0, 2.0], samples=2, max_new_tokens=4,
                     batch_size=8, bootstrap=20, search_steps=0)
    steer = random_steer(tiny_lm, names=("sentiment", "dummy"), eps=1e-3, scale=50.0, seed=1)
    logs: list[tuple[float, str]] = []
    shards.use_runner(None)
    shards.evaluate(tiny_lm, PROMPTS, [System("candidate", cfg.strengths, steer=steer)], cfg, seed=3,
                    log=lambda m: logs.append((time.perf_counter(), m)), per_shard=3)
    lines = [(t, m) for t, m in logs if m.startswith("shard ")]
    assert sorted(m.split(" on ")[0] for _, m in lines) == ["shard 0 of 3", "shard 1 of 3", "shard 2 of 3"], logs
    assert all(" samples in " in m for _, m in lines), lines
    # the first line came before the last shard ended: at least that shard's own seconds before the last line
    last = float(re.search(r"in ([0-9.]+) s", lines[-1][1]).group(1))
    assert lines[-1][0] - lines[0][0] >= 0.9 * last, lines


def test_shards_at_once_in_threads_give_the_bytes_of_one_after_another(tiny_lm) -> None:
    """The local executor runs shards side by side in threads at the protocol's thread count: the samples are the
    ones the same shards give one after another (every hook steers its own thread's passes only)."""
    cfg = EvalConfig(control="sentiment", scorer="vader", strengths=[-2.0, 0.0, 2.0], samples=2, max_new_tokens=5,
                     batch_size=8, bootstrap=20, search_steps=0, ppl_estimate="expected", base_nucleus=True)
    steer = random_steer(tiny_lm, names=("sentiment", "dummy"), eps=1e-3, scale=50.0, seed=1)
    parts = [shards.Shard(i, a, list(PROMPTS[a:b]), [System("candidate", cfg.strengths, steer=steer)], cfg, 3)
             for i, (a, b) in enumerate(shards.plan(len(PROMPTS), 2))]
    one = shards.run_here(parts, tiny_lm, workers=1)
    two = shards.run_here(parts, tiny_lm, workers=2)
    assert [r.samples for r in one] == [r.samples for r in two]
    assert len(parts) >= 2 and all(r.samples for r in one)


@pytest.fixture(scope="module")
def cluster():
    import os

    from flows.executors import start_local_cluster

    saved = os.environ.get("PREFECT_API_URL")
    try:
        with start_local_cluster(workers=2, threads_per_worker=1) as c:  # its workers report to this process's API
            yield c
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


@pytest.mark.slow  # starts a 2-worker Dask cluster
def test_local_cluster_workers_report_to_this_processs_prefect_api_and_keep_quiet(cluster) -> None:
    """Else each worker starts a temporary Prefect server of its own, which then competes for the CPU; and Dask's
    housekeeping is slowed down in the workers (flows.executors.QUIET_CLUSTER)."""
    import os

    from distributed import Client

    import dask

    with Client(cluster.scheduler_address) as client:
        urls = client.run(lambda: os.environ.get("PREFECT_API_URL"))
        profiling = client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    assert len(urls) == 2 and set(urls.values()) == {os.environ["PREFECT_API_URL"]}, urls
    assert set(profiling.values()) == {False}  # no 10 ms stack sampling next to the sampling (QUIET_CLUSTER)


def same_samples(a: list, b: list) -> bool:
    """Sample for sample, field for field, NaN equal to NaN (a sample without a paired cost carries NaN)."""
    return json.dumps([s.__dict__ for s in a], default=float) == json.dumps([s.__dict__ for s in b], default=float)


@pytest.mark.slow  # starts a 2-worker Dask cluster
def test_two_dask_workers_evaluate_exactly_like_the_local_executor(tiny_lm, tiny_dir, cluster) -> None:
    from steer_core.evaluate.baselines import fit_actadd
    from flows.executors import dask_runner

    torch.set_num_threads(1)  # as each worker (threads_per_worker: 1)
    params = Params.model_validate({"model": str(tiny_dir), "runtime": {
        "device": "cpu", "threads": 1, "executor": {"kind": "dask", "workers": 2, "threads_per_worker": 1}}})
    cfg = EvalConfig(control="sentiment", scorer="vader", strengths=[-2.0, 0.0, 2.0], samples=2, max_new_tokens=5,
                     batch_size=8, bootstrap=50, search_steps=1)  # one round of strength search, also on the workers
    actadd = fit_actadd(tiny_lm, ["a good day", "a bad day", "great", "awful"], [1.0, -1.0, 1.0, -1.0], None)
    steer = random_steer(tiny_lm, names=("sentiment", "dummy"), eps=1e-3, scale=50.0, seed=1)
    systems = [System("candidate", cfg.strengths, steer=steer),
               System("actadd", [-1.0, 1.0], actadd=actadd, meta={"layer": actadd.layer})]

    shards.use_runner(None)
    local_doc, local_samples = shards.evaluate(tiny_lm, PROMPTS, systems, cfg, seed=3)
    shards.use_runner(dask_runner(params, cluster.scheduler_address))
    try:
        logs: list[str] = []
        doc, samples = shards.evaluate(tiny_lm, PROMPTS, systems, cfg, seed=3, log=logs.append)
        again: list[str] = []
        doc2, _ = shards.evaluate(tiny_lm, PROMPTS, systems, cfg, seed=3, log=again.append)
        # the champion comparison's path (base samples reused) runs on the workers too
        base = [s for s in local_samples if s.system == "base"]
        champ = [System("champion", cfg.strengths, steer=systems[0].steer)]
        shards.use_runner(None)
        local_c, local_cs = shards.evaluate(tiny_lm, PROMPTS, champ, cfg, seed=3, base_samples=base)
        shards.use_runner(dask_runner(params, cluster.scheduler_address))
        dask_c, dask_cs = shards.evaluate(tiny_lm, PROMPTS, champ, cfg, seed=3, base_samples=base)
    finally:
        shards.use_runner(None)

    assert json.dumps(doc, default=float) == json.dumps(local_doc, default=float)
    assert same_samples(samples, local_samples)
    assert json.dumps(doc2, default=float) == json.dumps(local_doc, default=float)
    assert json.dumps(dask_c, default=float) == json.dumps(local_c, default=float)
    assert same_samples(dask_cs, local_cs)
    probes = {name: d["search"]["probes"] for name, d in local_doc["systems"].items()}
    assert local_doc["systems"]["candidate"]["search"]["rounds"] == 1 and probes["candidate"]
    # base + ±2 + ActAdd ±1 + the search's probes, 2 samples each
    assert len(local_samples) == len(PROMPTS) * 2 * (5 + sum(map(len, probes.values())))

    shard_lines = [m for m in logs if m.startswith("shard ")]
    assert len(shard_lines) == 4  # 2 shards for the grid, 2 for the search's round
    workers = {re.search(r"on (.+?) \(pid", m).group(1) for m in shard_lines}
    assert len(workers) == 2, shard_lines  # the two shards ran on the two workers
    # the second evaluation reused each worker's model: no shard spent time loading it
    assert not any("loading the model" in m for m in again if m.startswith("shard ")), again
