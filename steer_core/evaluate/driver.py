"""The one evaluation driver: prompts × samples × strengths of every system → the metrics document.

The prompts are split into a fixed plan of shards that run anywhere (in this process, on Dask workers, on other
machines), then gathered; the metrics are computed only after gathering (``steer_core.evaluate.document``). After
the grid, rounds of strength search add more shards of the same plan (``steer_core.evaluate.search``).

Why a *fixed* plan: a sample's random numbers are keyed by (seed, prompt index, sample index)
(``steer_core.model.sampling.row_uniforms``), but its floating-point numbers are not quite independent of its batch:
a batch is left-padded to its longest prompt, and a different padding changes logits in the last bits, which can
flip a nucleus draw and always moves perplexities. So the shards are a function of the prompts alone (:func:`plan`:
``PROMPTS_PER_SHARD`` contiguous prompts each, never of the executor or its worker count), and every executor
evaluates exactly these shards. Results are then equal bit for bit whatever runs them (``tests/test_dask.py``).

No orchestration here: shards run through the process's *runner* (:func:`use_runner`), by default in this process;
``flows.executors`` installs one that runs each shard as a Prefect task on a Dask cluster.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from steer_core.config import EvalConfig
from steer_core.evaluate.document import document
from steer_core.evaluate.protocol import (Sample, System, control_scorer, judge_scorers, judged_in_sampling,
                                          reused_base, sample_and_score)
from steer_core.evaluate.search import search_strengths
from steer_core.model.lm import LoadedLM, available_cores
from steer_core.scorers import cuts_of

_KEY_MULT = 1_000_003  # steer_core.model.sampling.row_uniforms: seed * 1_000_003 + prompt * 10_007 + sample (mod 2**63)
_PROMPT_MULT = 10_007
_MOD = 2**63

PROMPTS_PER_SHARD = 6  # part of the evaluation's definition (it fixes each batch's padding): not an executor setting


def keyed_seed(seed: int, offset: int) -> int:
    """The seed that makes prompt ``i`` of a slice starting at ``offset`` draw what prompt ``offset + i`` draws in
    the whole run: ``row_uniforms`` keys a row by ``seed·1000003 + p·10007 + s (mod 2^63)`` and 1000003 is odd, so
    it is invertible mod 2^63."""
    if offset == 0:
        return seed
    return ((seed * _KEY_MULT + offset * _PROMPT_MULT) * pow(_KEY_MULT, -1, _MOD)) % _MOD


def contiguous(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous (start, stop) slices of ``n`` prompts, sizes differing by at most one, none empty."""
    k = max(1, min(shards, n))
    base, extra = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


@dataclass
class Shard:
    """What one worker needs to sample and score one slice of the prompts (picklable)."""

    index: int
    start: int
    prompts: list[dict]
    systems: list[System]
    cfg: EvalConfig
    seed: int
    sample_base: bool = True  # strength 0 (the base model's samples) is part of every shard
    meta: dict = field(default_factory=dict)


@dataclass
class ShardResult:
    index: int
    samples: list[Sample]
    seconds: float
    worker: str = ""
    load_seconds: float = 0.0  # time this shard's worker spent loading models for it (0 when already loaded)


def sample_shard(lm: LoadedLM, shard: Shard, judge: LoadedLM | None = None) -> list[Sample]:
    """Sample and score one shard exactly as ``evaluate`` does for those prompts (``protocol.sampling_plan``).
    Returned samples carry the prompts' indices in the whole run."""
    cfg, judge = shard.cfg, judge or lm
    in_sampling = judged_in_sampling(lm, judge, cfg)
    base, per_system = sample_and_score(lm, shard.prompts, shard.systems, cfg, control_scorer(cfg),
                                        sample_base=shard.sample_base, judge=None if in_sampling else judge,
                                        seed=keyed_seed(shard.seed, shard.start))
    samples = base + [s for part in per_system for s in part]
    return [replace(s, prompt_index=s.prompt_index + shard.start) for s in samples]


def _order(samples: list[Sample], strengths: Sequence[float]) -> list[Sample]:
    """A system's samples in the order one ``generate`` call over all prompts yields them: strength (as listed),
    then prompt, then sample (shards are contiguous and gathered in order, so a stable sort restores it)."""
    pos = {float(s): i for i, s in enumerate(strengths)}
    return sorted(samples, key=lambda s: (pos.get(float(s.strength), math.inf), s.prompt_index))


def merge_shards(lm: LoadedLM, prompts: Sequence[dict], systems: Sequence[System], cfg: EvalConfig,
                 samples: Sequence[Sample], *, judge: LoadedLM | None = None, seed: int = 0) -> tuple[dict, list[Sample]]:
    """The metrics document from every shard's samples: the same computation ``evaluate`` does after sampling."""
    judge = judge or lm
    scorer = control_scorer(cfg)
    in_sampling = judged_in_sampling(lm, judge, cfg)
    base_samples = sorted([s for s in samples if s.system == "base"], key=lambda s: s.prompt_index)
    if {s.prompt_index for s in base_samples} != set(range(len(prompts))):
        raise ValueError("the gathered shards do not cover every evaluation prompt")
    per_system = [_order([s for s in samples if s.system == system.name and s.strength != 0.0],
                         [x for x in system.strengths if x != 0]) for system in systems]
    judge_cuts = {j.name: cuts_of(j) for j in judge_scorers(cfg)}
    return document(prompts, systems, cfg, base_samples, per_system, cuts=cuts_of(scorer), judge_spec=judge.spec,
                    judge_cuts=judge_cuts,
                    in_sampling=in_sampling, seed=seed)


def evaluate(
    lm: LoadedLM,
    prompts: Sequence[dict],
    systems: Sequence[System],
    cfg: EvalConfig,
    *,
    judge: LoadedLM | None = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda _msg: None,
    base_samples: Sequence[Sample] | None = None,
    map_shards: Callable[[list[Shard]], list[ShardResult]] | None = None,
    per_shard: int = PROMPTS_PER_SHARD,
    progress: bool = False,
) -> tuple[dict, list[Sample]]:
    """Run the protocol for every system on the same prompts; return the metrics document and all samples.

    ``prompts`` are dicts with ``set`` and ``prompt``. Strength 0 (the base model) is sampled once and shared, so
    every system is compared against the same base samples. The shards of :func:`plan` are sampled and scored
    through ``map_shards`` (default: the process's runner, :func:`use_runner`), then the document is computed from
    them all. ``base_samples``: strength-0 samples already generated and scored on these prompts with this seed and
    config (the candidate's, read back for the champion comparison): only the systems are sampled, against these.
    ``progress`` is accepted and unused: each shard logs one line through ``log`` as it finishes."""
    if not prompts:
        raise ValueError("no evaluation prompts")
    control_scorer(cfg)  # fail before sampling when a scorer does not measure the control metric
    judge_scorers(cfg)
    base_samples = reused_base(base_samples, prompts)
    reuse_base = base_samples is not None
    t0 = time.perf_counter()
    slices = plan(len(prompts), per_shard)

    def run(round_systems: list[System], sample_base: bool) -> list[Sample]:
        """One round: every shard of the plan for ``round_systems``, gathered in shard order."""
        parts = [Shard(i, a, list(prompts[a:b]), list(round_systems), cfg, seed, sample_base=sample_base)
                 for i, (a, b) in enumerate(slices)]
        log(f"evaluating {[s.name for s in round_systems]} at strengths {[s.strengths for s in round_systems]} in "
            f"{len(parts)} shard(s) of {'/'.join(str(len(p.prompts)) for p in parts)} prompts")
        here = map_shards is None and _RUNNER is None
        if here:  # in this process: each shard reports as it finishes
            results = run_here(parts, lm, judge, log=log)
        else:
            results = map_shards(parts) if map_shards is not None else _RUNNER(parts, lm, judge)
        results = sorted(results, key=lambda r: r.index)
        if [r.index for r in results] != [p.index for p in parts]:
            raise RuntimeError(f"expected shards {[p.index for p in parts]}, got {[r.index for r in results]}")
        if not here:  # elsewhere: each shard's line once all are back, in shard order
            for r in results:
                log(shard_line(r, len(results)))
        return [s for r in results for s in r.samples]

    gathered = run(list(systems), not reuse_base) + list(base_samples or [])
    doc, samples = merge_shards(lm, prompts, systems, cfg, gathered, judge=judge, seed=seed)

    def redo(new_systems: list[System]) -> dict:  # the document over every round's samples
        nonlocal samples
        new_doc, samples = merge_shards(lm, prompts, new_systems, cfg, gathered, judge=judge, seed=seed)
        return new_doc

    # the strength search's rounds: more shards of the same plan, placed by the document so far
    _, doc = search_strengths(systems, cfg, prompts, doc, lambda probes: gathered.extend(run(probes, False)), redo,
                              log)
    log(f"evaluated {len(samples)} samples in {time.perf_counter() - t0:.1f} s")
    return doc, samples


# ------------------------------------------------------------------------------------------ the plan and the runner


def plan(n_prompts: int, per_shard: int = PROMPTS_PER_SHARD) -> list[tuple[int, int]]:
    """The (start, stop) prompt slices every executor evaluates: ceil(n / per_shard) balanced contiguous shards."""
    return contiguous(n_prompts, max(1, -(-n_prompts // per_shard)))


def run_here(shards: list[Shard], lm: LoadedLM, judge: LoadedLM | None = None,
             log: Callable[[str], None] = lambda _msg: None, workers: int | None = None) -> list[ShardResult]:
    """The local runner: the shards in this process on the already loaded model, as many at once as the cores allow
    at the protocol's thread count (``cfg.threads``: torch's threads are pinned to it for the run, so each shard's
    numbers are the ones any executor computes); each is logged as it finishes (a long evaluation shows its
    progress). The model is shared by the shards' threads: every hook of the library acts in its own thread only.
    ``workers``: shards at once (default: the cores over the thread count)."""
    if not shards:
        return []
    threads = shards[0].cfg.threads
    workers = max(1, min(len(shards), workers or available_cores() // threads))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)

    def one(shard: Shard) -> ShardResult:
        t0 = time.perf_counter()
        result = ShardResult(shard.index, sample_shard(lm, shard, judge), time.perf_counter() - t0,
                             "this process" if workers == 1 else f"thread {shard.index % workers + 1} of {workers}")
        log(shard_line(result, len(shards)))
        return result

    try:
        if workers == 1:
            return [one(s) for s in shards]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard") as pool:
            return list(pool.map(one, shards))
    finally:
        torch.set_num_threads(before)


def shard_line(r: ShardResult, n_shards: int) -> str:
    """One shard's log line: where it ran, how many samples, how long."""
    return (f"shard {r.index} of {n_shards} on {r.worker or 'this process'}: {len(r.samples)} samples in "
            f"{r.seconds:.1f} s" + (f" (+{r.load_seconds:.1f} s loading the model)" if r.load_seconds else ""))


#: ``runner(shards, lm, judge) -> [ShardResult]``; None = :func:`run_here`
_RUNNER: Callable[..., list[ShardResult]] | None = None


def use_runner(runner: Callable[..., list[ShardResult]] | None) -> None:
    """Run this process's evaluation shards with ``runner`` (None: in this process)."""
    global _RUNNER
    _RUNNER = runner
