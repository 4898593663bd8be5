"""How the evaluation samples and scores: the systems, the sampling calls, the prompts' identity and folds.

For each evaluated *system* (the candidate steer, the current champion, the activation-addition baseline) and each
strength of its sweep (0 = the base model is always included), P prompts get K sampled continuations of N new
tokens, generated in batches across prompts, samples and strengths. Each sample gets a control score (sentiment or
toxicity) and a judge-LM conditional perplexity.

When the judge is the base model itself (the default), it scores the sampled tokens and reads their log-likelihoods
while sampling, with no second forward pass for a steer (``protocol.judge_scores = "sampled tokens"``, or
``"expected per step"``); the ActAdd baseline reads them from an unsteered twin of each row
(``steer_core.model.generate``). Any other judge re-reads the decoded text (``"re-tokenised text"``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Sequence

from steer_core.config import EvalConfig, PromptingConfig
from steer_core.evaluate.baselines import ActAdd, actadd_steering
from steer_core.model.generate import generate, reads_base_nll
from steer_core.model.lm import LoadedLM
from steer_core.model.steer import Steer
from steer_core.scorers import get_scorer
from steer_core.scorers.perplexity import conditional_perplexity


@dataclass
class Sample:
    """One generated continuation with its scores."""

    system: str
    prompt_set: str
    prompt_index: int
    prompt: str
    strength: float
    text: str
    control: float = math.nan
    ppl: float = math.nan
    cost: float = math.nan  # the paired per-step cost: mean over steps, nats (0 for the base model's own samples)
    judged: dict[str, float] = field(default_factory=dict)  # independent judges' scores of the text


@dataclass
class System:
    """Something to evaluate over a strength sweep: a steer, the activation-addition baseline, or the prompting
    baseline (an instruction, its strength a guidance weight)."""

    name: str
    strengths: list[float]
    steer: Steer | None = None
    actadd: ActAdd | None = None
    meta: dict = field(default_factory=dict)
    prompting: PromptingConfig | None = None


def instructed_prompt(lm: LoadedLM, prompt: str, instruction: str, template: str = "chat") -> str:
    """``prompt`` preceded by ``instruction``: as the user's turn of the model's chat template with the prompt as the
    start of the answer (``chat``, when the tokenizer has a template), else as a line before it (``prefix``)."""
    tok = lm.tokenizer
    if template == "chat" and getattr(tok, "chat_template", None):
        head = tok.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                       add_generation_prompt=True)
        return head + prompt
    return f"{instruction}\n{prompt}"


def judged_in_sampling(lm: LoadedLM, judge: LoadedLM, cfg: EvalConfig) -> bool:
    """Whether the judge is the generating model and reads the sampled tokens' NLLs while sampling (no second pass).
    ``ppl_estimate: expected`` exists only there: a model whose logits are scaled after the output layer is refused
    with the reason."""
    in_sampling = judge is lm and reads_base_nll(lm)
    if cfg.ppl_estimate == "expected" and not in_sampling:
        raise ValueError(f"evaluate.ppl_estimate 'expected' needs the base model judged while sampling, and "
                         f"{lm.spec!r} {'is not the judge' if judge is not lm else 'scales its logits after the output layer'}"
                         f"; use ppl_estimate 'sampled'")
    return in_sampling


def sample_system(
    lm: LoadedLM, system: System, prompts: Sequence[dict], cfg: EvalConfig, seed: int = 0, progress: bool = False,
    judge_in_sampling: bool = False,
) -> list[Sample]:
    """Generate cfg.samples continuations for every prompt at every strength of the system, batched.

    ``judge_in_sampling`` (the judge is ``lm`` itself): fill each sample's perplexity under the unsteered ``lm``
    now, read during sampling (``generate(base_nll=True)``). Both methods are sampled and judged the same way
    (``base_nucleus``, ``ppl_estimate``): a steer reads the unsteered logits at the output layer; the ActAdd
    baseline changes the body, so each of its rows runs beside an unsteered twin (``generate(body=...)``).
    """
    texts = [p["prompt"] for p in prompts]
    kw = dict(num_samples=cfg.samples, max_new_tokens=cfg.max_new_tokens, top_p=cfg.top_p,
              temperature=cfg.temperature, seed=seed, batch_size=cfg.batch_size, progress=progress,
              base_nll=judge_in_sampling, base_nucleus=cfg.base_nucleus, nll=cfg.ppl_estimate)
    strengths = [float(s) for s in system.strengths]
    if system.actadd is not None:  # one sweep: each row's strength scales the vector it adds
        gens = generate(lm, texts, values=strengths, body=partial(actadd_steering, lm, system.actadd, 1.0), **kw)
    elif system.prompting is not None:
        pc = system.prompting
        for s in strengths:
            if (pc.plus if s > 0 else pc.minus) is None:
                raise ValueError(f"prompting strength {s:g} needs the − instruction (evaluate.prompting.minus)")
        instructed = {sign: [instructed_prompt(lm, x, pc.plus if sign > 0 else pc.minus, pc.template) for x in texts]
                      for sign in {1 if s > 0 else -1 for s in strengths}}
        # one sweep: each row reads the instruction of its strength's side at guidance |s|
        gens = generate(lm, texts, values=strengths, instructed=lambda i, s: instructed[1 if s > 0 else -1][i], **kw)
    else:
        gens = generate(lm, texts, system.steer, None if system.steer is None else strengths, **kw)
    return [Sample(system.name, prompts[g.prompt_index]["set"], g.prompt_index, g.prompt, g.strength, g.text,
                   ppl=_mean_exp(g.base_nll), cost=_mean(g.cost)) for g in gens]


def _mean(steps: list[float] | None) -> float:
    return sum(steps) / len(steps) if steps else math.nan


def _mean_exp(steps: list[float] | None) -> float:
    return math.exp(_mean(steps)) if steps else math.nan


def score_samples(samples: list[Sample], scorer, judge: LoadedLM | None, batch_size: int = 16,
                  judges: Sequence = ()) -> None:
    """Fill in control scores (one batched scorer call), the independent ``judges``' scores (one call each) and
    judge perplexities (batched; ``judge=None``: the perplexities were filled while sampling)."""
    if not samples:
        return
    texts = [s.text for s in samples]
    for s, c in zip(samples, scorer.score(texts)):
        s.control = float(c)
    for other in judges:
        for s, c in zip(samples, other.score(texts)):
            s.judged[other.name] = float(c)
    if judge is None:
        return
    ppl = conditional_perplexity(judge.model, judge.tokenizer, [s.prompt for s in samples],
                                 [s.text for s in samples], batch_size=batch_size, device=judge.device)
    for s, p in zip(samples, ppl):
        s.ppl = float(p)


def _prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def prompt_id(prompt: str) -> str:
    """A prompt's stable identity: the first 12 hex digits of the SHA-256 of its text."""
    return _prompt_sha256(prompt)[:12]


def split_folds(prompts: Sequence[str]) -> list[int]:
    """Fold 0 or 1 of every prompt, for choosing the strength on one fold and reporting it on the other.

    A prompt's fold is the last bit of the SHA-256 of its text, so it never depends on the order or on the other
    prompts. Only when that leaves a fold empty (a handful of prompts), the prompts sorted by hash alternate
    between the folds instead (still the same folds for the same prompts).
    """
    ids = [_prompt_sha256(p) for p in prompts]
    folds = [int(h, 16) & 1 for h in ids]
    if len(prompts) >= 2 and len(set(folds)) < 2:
        order = sorted(range(len(prompts)), key=lambda i: (ids[i], i))
        folds = [0] * len(prompts)
        for rank, i in enumerate(order):
            folds[i] = rank % 2
    return folds



def control_scorer(cfg: EvalConfig):
    """The scorer of ``cfg.scorer``, checked to measure the control metric ``cfg.control``."""
    return _of_control(cfg.scorer, cfg, "evaluate.scorer")


def judge_scorers(cfg: EvalConfig) -> list:
    """The independent judges of ``cfg.judges``, each checked to measure the control metric and to differ from the
    labeller (a judge that is the scorer itself is no independent reading)."""
    out = []
    for name in cfg.judges:
        if name == cfg.scorer:
            raise ValueError(f"evaluate.judges lists {name!r}, which is evaluate.scorer itself: a judge must be another "
                             f"scorer of {cfg.control}")
        out.append(_of_control(name, cfg, "evaluate.judges"))
    return out


def _of_control(name: str, cfg: EvalConfig, key: str):
    scorer = get_scorer(name)
    if scorer.kind != cfg.control:
        raise ValueError(f"{key} {name!r} measures {scorer.kind}, but the control metric is {cfg.control!r}")
    return scorer


def reused_base(base_samples: Sequence[Sample] | None, prompts: Sequence[dict]) -> list[Sample] | None:
    """Given base samples (``evaluate(base_samples=...)``) as the base model's, checked to cover every prompt."""
    if base_samples is None:
        return None
    base = [replace(s, system="base", strength=0.0) for s in base_samples]
    if {s.prompt_index for s in base} != set(range(len(prompts))):
        raise ValueError("the given base samples do not cover the evaluation prompts: re-run the evaluate stage")
    return base


@dataclass
class Call:
    """One ``sample_system`` call of an evaluation: ``system`` at its strengths, for ``systems[index]`` (``None``:
    the base model alone). Rows at strength 0 are the base model's samples."""

    index: int | None
    system: System


def sampling_plan(systems: Sequence[System], sample_base: bool) -> list[Call]:
    """The sampling calls of an evaluation, in order: each system at its non-zero strengths, and (``sample_base``)
    strength 0, the base model, once.

    Strength 0 rides in the first steer system's call: one generate call fills larger batches, and at strength 0
    the steer hook adds exact zeros, so those rows are the base model's samples (and, rows drawing their random
    numbers by prompt and sample, the very samples a separate call would give). Without a steer system the base
    model is a call of its own. The calls fix the batches, hence the bits of every number: ``evaluate`` and a shard
    (``shards.sample_shard``) both sample by this plan.
    """
    nonzero = [replace(s, strengths=[x for x in s.strengths if x != 0]) for s in systems]
    first = next((i for i, s in enumerate(nonzero) if s.steer is not None), None) if sample_base else None
    calls = []
    if sample_base and first is None:
        calls.append(Call(None, System("base", [0.0])))
    for i, s in enumerate(nonzero):
        if i == first:
            calls.append(Call(i, System(s.name, [0.0, *s.strengths], s.steer)))
        elif s.strengths:
            calls.append(Call(i, s))
    return calls


def sample_and_score(
    lm: LoadedLM, prompts: Sequence[dict], systems: Sequence[System], cfg: EvalConfig, scorer, *,
    sample_base: bool, judge: LoadedLM | None, seed: int = 0, progress: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> tuple[list[Sample], list[list[Sample]]]:
    """Sample and score the calls of :func:`sampling_plan`, each call's samples scored together (``judge=None``:
    the judge is ``lm``, read while sampling). Returns the base model's samples (empty unless ``sample_base``) and
    each system's samples at its non-zero strengths."""
    base: list[Sample] = []
    per_system: list[list[Sample]] = [[] for _ in systems]
    for call in sampling_plan(systems, sample_base):
        log(f"evaluating {call.system.name} at strengths {call.system.strengths}")
        samples = sample_system(lm, call.system, prompts, cfg, seed, progress, judge_in_sampling=judge is None)
        score_samples(samples, scorer, judge, cfg.batch_size, judge_scorers(cfg))
        base += [replace(s, system="base") for s in samples if s.strength == 0.0]
        if call.index is not None:
            per_system[call.index] = [s for s in samples if s.strength != 0.0]
    return base, per_system


def judge_scores(cfg: EvalConfig, in_sampling: bool) -> str:
    """What the judge's perplexity is computed from, for the document's protocol."""
    if not in_sampling:
        return "re-tokenised text"
    return "expected per step" if cfg.ppl_estimate == "expected" else "sampled tokens"


