"""Batched steered sampling with the KV cache.

The steer is applied to the final hidden state through a forward pre-hook on the output embedding layer, so the
model is never copied and Hugging Face ``generate`` (KV cache, stopping, padding) runs unchanged. Each row of a
batch may carry its own steer values: one batch can sweep several strengths.

Sampling is ``steer_core.model.sampling.NucleusSampler`` (why: its docstring), run inside a greedy ``generate``.

With ``base_nll=True`` each generation also carries, per sampled token, its negative log-likelihood under the
*unsteered* model, read during sampling (a pre-hook registered ahead of the steer sees the unsteered h), so the
base model's perplexity of a steered text needs no second forward pass.

``nll="expected"`` records instead, per step, the NLL the unsteered model *expects* of that step's token: the mean
of −log p_base(x) over the distribution the token was drawn from (end-of-sequence excluded and the rest
renormalised, since a counted token is never EOS). Given the text so far, the sampled token's NLL averages to
exactly this, so a perplexity built from it estimates the same quantity with the token's own draw averaged out (a
Rao–Blackwellised estimate: less variance, the same mean).
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, ContextManager, Iterator, Literal, Sequence

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList

from steer_core.config import MAX_NEW_TOKENS, TEMPERATURE, TOP_P
from steer_core.model.lm import LoadedLM
from steer_core.model.sampling import NucleusSampler, row_uniforms
from steer_core.model.steer import Steer, primary_name

_INTERNAL = ("token_ids", "base_nll", "cost")

#: a change to the LM's body, scaled per row (0: that row unchanged), e.g. ``partial(actadd_steering, lm, vec, s)``
BodyChange = Callable[[torch.Tensor], ContextManager[None]]
#: the instructed prompt of a row, from its prompt's index and its strength (the prompting baseline's sweep)
Instruct = Callable[[int, float], str]


@dataclass
class Generation:
    """One sampled continuation; ``token_ids`` are the sampled tokens up to (not including) end-of-sequence."""

    prompt: str
    prompt_index: int
    sample_index: int
    strength: float
    text: str
    values: list[float] | None = None
    token_ids: list[int] = field(default_factory=list, repr=False)
    base_nll: list[float] | None = field(default=None, repr=False)
    cost: list[float] | None = field(default=None, repr=False)  # per step: the steer's paired NLL cost (nats)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in _INTERNAL}


class _SteerHook:
    """Pre-hook that replaces h by h + ε Σ s_i W_i h; ``values`` is (n,) or (rows, n)."""

    def __init__(self, steer: Steer, values: torch.Tensor) -> None:
        self.steer = steer
        self.values = values
        self.thread = threading.get_ident()  # the model may be shared by threads: steer only our own passes

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        if threading.get_ident() != self.thread:
            return None
        h = args[0]
        v = self.values
        if v.dim() == 2 and v.shape[0] != h.shape[0]:
            raise RuntimeError(f"steer values have {v.shape[0]} rows but the batch has {h.shape[0]}")
        return (self.steer.apply(h, v),) + tuple(args[1:])


class _BaseNLL:
    """Per step, the unsteered model's NLL of each row's sampled token.

    Its pre-hook runs before the steer's and keeps the unsteered logits of the last position for the steered rows
    (``module.forward`` bypasses the hooks); for unsteered rows the logits ``generate`` hands the sampler already
    are the base model's.
    """

    def __init__(self, steered_rows: torch.Tensor, expected: bool = False, eos_token_id: int | None = None,
                 twins: int = 0) -> None:
        self.steered = steered_rows
        self.twins = twins  # > 0: rows [twins, 2·twins) are unsteered twins of rows [0, twins) (see generate)
        self.expected, self.eos = expected, eos_token_id
        self.any_steered = bool(steered_rows.any())  # once, not per forward (a device sync on a GPU)
        self.base_logits: torch.Tensor | None = None
        self._step_base: tuple[torch.Tensor, torch.Tensor] | None = None  # (this step's scores, their base scores)
        self.steps: list[torch.Tensor] = []
        self.costs: list[torch.Tensor] = []
        self.thread = threading.get_ident()

    def pre_hook(self, module: torch.nn.Module, args: tuple) -> None:
        if self.any_steered and threading.get_ident() == self.thread:
            self.base_logits = module.forward(args[0][self.steered, -1]).float()

    def base_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """This step's unsteered logits for every row: ``scores`` with the steered rows' replaced (by the hook's
        logits, or by their twins' scores). Built once per step: the sampler's nucleus and :meth:`record` share it."""
        if self._step_base is None or self._step_base[0] is not scores:
            self._step_base = (scores, self._replace_steered(scores))
        return self._step_base[1]

    def _replace_steered(self, scores: torch.Tensor) -> torch.Tensor:
        if self.twins:
            out = scores.float().clone()
            out[: self.twins] = out[self.twins : 2 * self.twins]
            return out
        if self.base_logits is None:
            return scores.float()
        out = scores.float().clone()
        out[self.steered] = self.base_logits
        return out

    def record(self, scores: torch.Tensor, choice: torch.Tensor,
               dist: tuple[torch.Tensor, torch.Tensor] | None = None,
               base_dist: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """This step's NLL per row under the unsteered model: of the sampled ``choice``, or (``expected``) its mean
        over ``dist`` = (ids, probabilities) without EOS. With ``base_dist`` (the unsteered model's own sampling
        distribution at this context), also the step's paired cost: the expected NLL under ``dist`` minus under
        ``base_dist``, both from the same unsteered logits (exactly 0 for a row sampled as the base model samples)."""
        logp = torch.log_softmax(self.base_scores(scores), dim=-1)
        self.base_logits, self._step_base = None, None
        if not self.expected:
            self.steps.append(-logp.gather(1, choice[:, None]).squeeze(1))
            return
        if dist is None:
            raise RuntimeError("the expected NLL needs the step's sampling distribution")
        nll, mass = expected_nll(logp, dist, self.eos)
        # a row whose whole mass is EOS ends here, and its step is not counted; keep the sampled token's NLL
        self.steps.append(torch.where(mass > 0, nll, -logp.gather(1, choice[:, None]).squeeze(1)))
        if base_dist is not None:
            own, base_mass = expected_nll(logp, base_dist, self.eos)
            self.costs.append(torch.where((mass > 0) & (base_mass > 0), nll - own, torch.zeros_like(nll)))


def expected_nll(logp: torch.Tensor, dist: tuple[torch.Tensor, torch.Tensor], eos_token_id: int | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the mean of −``logp`` over ``dist`` = (ids, probabilities) with EOS left out and the rest
    renormalised (a counted token is never EOS), and the mass that was left to renormalise (0: only EOS)."""
    ids, w = dist
    if eos_token_id is not None:
        w = w.masked_fill(ids == eos_token_id, 0.0)
    mass = w.sum(-1)
    return -(w * logp.gather(1, ids)).sum(-1) / mass.clamp_min(1e-30), mass


def reads_base_nll(lm: LoadedLM) -> bool:
    """Whether the logits are exactly the output layer's (no soft-capping or scaling after it), which base-NLL
    recording during sampling assumes."""
    cfg = lm.model.config
    return (getattr(cfg, "final_logit_softcapping", None) in (None, 0) and getattr(cfg, "logit_scale", None) in (None, 1)
            and getattr(cfg, "logits_scaling", None) in (None, 1))


@contextlib.contextmanager
def steering(lm: LoadedLM, steer: Steer | None, values: torch.Tensor | None) -> Iterator[None]:
    """Within the block, every forward pass of ``lm`` is steered by ``steer`` at ``values``."""
    if steer is None or values is None:
        yield
        return
    steer.check_model(lm)
    steer.to(lm.device)
    handle = lm.output_embeddings.register_forward_pre_hook(_SteerHook(steer, values.to(lm.device)))
    try:
        yield
    finally:
        handle.remove()


def values_for(steer: Steer | None, strength: float | torch.Tensor | None) -> torch.Tensor | None:
    """A strength (float for the primary steer, or a full value vector) → a value vector; dummy stays 0."""
    if steer is None or strength is None:
        return None
    if isinstance(strength, torch.Tensor):
        return steer.values_tensor(strength)
    return steer.values_tensor({primary_name(steer): float(strength)})


def generate(
    lm: LoadedLM,
    prompts: Sequence[str],
    steer: Steer | None = None,
    values: float | torch.Tensor | Sequence[float] | None = None,
    *,
    num_samples: int = 1,
    max_new_tokens: int = MAX_NEW_TOKENS,
    top_p: float = TOP_P,
    temperature: float = TEMPERATURE,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
    base_nll: bool = False,
    base_nucleus: bool = False,
    nll: Literal["sampled", "expected"] = "sampled",
    body: BodyChange | None = None,
    instructed: Sequence[str] | Instruct | None = None,
    guidance: float = 1.0,
    workers: int = 1,
) -> list[Generation]:
    """Sample ``num_samples`` continuations per prompt, in batches across prompts, samples and strengths.

    ``values`` is a float strength, a list of float strengths or of value vectors (every prompt × sample is run at
    each), a value vector (n,), or per-row vectors (len(prompts) × num_samples, n) for arbitrary per-row settings.
    Row (prompt i, sample k) draws the same random numbers at every strength. ``base_nll`` also records each sampled
    token's NLL under the unsteered model; ``nll="expected"`` records the step's expected NLL instead (see the module
    docstring).

    ``body`` changes the LM's body instead of a steer (the ActAdd baseline: ``body(scales)`` is a context that
    changes each row by its scale, 0 leaving it unchanged). ``values`` (float strengths) then sweeps the body change
    as it sweeps a steer: each row's scale is its strength (without ``values``, 1). The base model's logits cannot be
    read off the output layer, so with ``base_nll`` or ``base_nucleus`` each row runs beside an unsteered twin in the
    same batch: the twin is fed the row's own draws, so its logits are the base model's for the same text (a second
    forward pass per token, half the rows per batch).

    ``instructed`` (the prompting baseline: one text per prompt, the prompt with an instruction, or a function of
    the prompt's index and the row's strength) runs each row on its instructed prompt beside an unsteered twin on
    the plain prompt, and draws from classifier-free guidance: twin logits + g × (row logits − twin logits), g =
    ``guidance``, or with ``values`` (float strengths, swept as a steer's) each row's |strength|. g = 0 is the base
    model, 1 plain prompting. The texts and their perplexities are those of continuations of the plain prompt.

    With ``nll="expected"`` and a base model beside each row (``base_nll``), each generation also carries the
    per-step paired cost (``cost``): the expected NLL of the step's sampling distribution minus that of the base
    model's own, under the same unsteered logits at the row's own context.

    ``workers`` > 1 samples that many batches at once, in threads sharing the model (at one torch thread each, two
    single-threaded batches use two cores better than one batch on two threads). The batches and their random
    numbers are the same, so are the samples.
    """
    if nll not in ("sampled", "expected"):
        raise ValueError(f"nll must be 'sampled' or 'expected', got {nll!r}")
    if sum(x is not None for x in (steer, body, instructed)) > 1:
        raise ValueError("generate takes one of a steer, a body change or instructed prompts")
    if instructed is not None and not callable(instructed) and len(instructed) != len(prompts):
        raise ValueError(f"{len(instructed)} instructed prompts for {len(prompts)} prompts")
    swept = steer is None and values is not None  # a body change or instructions swept over float strengths
    twinned = instructed is not None or (body is not None and (base_nll or base_nucleus))
    if twinned:
        batch_size = max(1, batch_size // 2)  # each row brings its twin: the same rows per forward pass
    rows = _plan_rows(prompts, steer, values, num_samples)
    if swept and (body is None and instructed is None):
        raise ValueError("values without a steer sweep a body change or instructed prompts: give one of them")

    def one(start: int) -> list[Generation]:
        chunk = rows[start : start + batch_size]
        vals = None if steer is None else torch.stack([r[3] for r in chunk])
        recorder = None
        if base_nll or base_nucleus or twinned:
            steered = torch.zeros(len(chunk), dtype=torch.bool) if vals is None else (vals != 0).any(1)
            recorder = _BaseNLL(steered.to(lm.device), expected=base_nll and nll == "expected",
                                eos_token_id=lm.tokenizer.eos_token_id, twins=len(chunk) if twinned else 0)
        uniforms = row_uniforms(seed, [(r[0], r[1]) for r in chunk], max_new_tokens)
        texts = [prompts[r[0]] for r in chunk]
        strengths = torch.tensor([r[2] if swept else 1.0 for r in chunk])
        if twinned:  # rows, then their unsteered twins, which draw nothing of their own (the sampler copies)
            rows_text = texts if instructed is None else [
                instructed(r[0], r[2]) if callable(instructed) else instructed[r[0]] for r in chunk]
            texts, uniforms = rows_text + texts, torch.cat([uniforms, uniforms])
        row_guidance = None
        if instructed is not None:
            row_guidance = strengths.abs() if swept else torch.full((len(chunk),), float(guidance))
        with contextlib.nullcontext() if body is None else body(_row_scales(strengths, twinned)):
            outs = _sample_batch(lm, texts, steer, vals, max_new_tokens=max_new_tokens, top_p=top_p,
                                 temperature=temperature, uniforms=uniforms, recorder=recorder,
                                 base_nucleus=base_nucleus, guidance=row_guidance,
                                 shared_prefix_rows=len(chunk) if instructed is not None else 0)
        return [Generation(prompts[pi], pi, si, strength if swept or instructed is None else guidance, text,
                           None if vec is None else vec.tolist(), ids, nlls if base_nll else None,
                           cost if base_nll else None)
                for (pi, si, strength, vec), (text, ids, nlls, cost) in zip(chunk, outs)]

    starts = list(range(0, len(rows), batch_size))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(starts), desc="generate", unit="batch")
    def counted(start: int) -> list[Generation]:
        part = one(start)
        if bar is not None:
            bar.update(1)
        return part

    gens: list[Generation] = []
    try:
        if workers <= 1 or len(starts) == 1:
            for start in starts:
                gens += counted(start)
        else:  # the batches side by side in threads; each is the same computation, so the same samples
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="generate") as pool:
                for part in pool.map(counted, starts):
                    gens += part
    finally:
        if bar is not None:
            bar.close()
    return gens


def _row_scales(strengths: torch.Tensor, twinned: bool) -> torch.Tensor:
    """Each batch row's scale of the body change: the rows' strengths, then (twinned) zeros for their twins."""
    return torch.cat([strengths, torch.zeros(len(strengths) if twinned else 0)])


def _plan_rows(prompts, steer, values, num_samples) -> list[tuple[int, int, float, torch.Tensor | None]]:
    """(prompt index, sample index, strength, value vector) for every row to sample."""
    if not prompts:
        raise ValueError("no prompts to generate from")
    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
    pairs = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    if steer is None:
        if values is None:
            return [(p, s, 0.0, None) for p, s in pairs]
        sweep = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
        return [(p, s, v, None) for v in sweep for p, s in pairs]
    idx = steer.names.index(primary_name(steer))
    if values is None or isinstance(values, (int, float)):
        values = [0.0 if values is None else float(values)]
    if not isinstance(values, torch.Tensor):  # a sweep: strengths of the primary steer, or whole value vectors
        vecs = [values_for(steer, v if isinstance(v, torch.Tensor) else float(v)) for v in values]
        return [(p, s, float(v[idx]), v) for v in vecs for p, s in pairs]
    t = steer.values_tensor(values.float())
    if t.dim() == 1:
        return [(p, s, float(t[idx]), t) for p, s in pairs]
    if t.shape[0] != len(pairs):
        raise ValueError(f"per-row values need {len(pairs)} rows (prompts × samples), got {t.shape[0]}")
    return [(p, s, float(t[i, idx]), t[i]) for i, (p, s) in enumerate(pairs)]


@torch.no_grad()
def _sample_batch(lm, prompts, steer, values, *, max_new_tokens, top_p, temperature, uniforms: torch.Tensor,
                  recorder: _BaseNLL | None, base_nucleus: bool = False, guidance: torch.Tensor | None = None,
                  shared_prefix_rows: int = 0) -> list[tuple[str, list[int], list[float] | None, list[float] | None]]:
    """(text, sampled token ids up to EOS, their base NLLs or None, their paired costs or None) per prompt row, drawn
    at ``uniforms`` (rows × max_new_tokens, :func:`~steer_core.model.sampling.row_uniforms`). ``shared_prefix_rows``:
    the first rows share a token prefix (an instruction), computed once (:func:`_prefix_cache`)."""
    tok = lm.tokenizer
    enc = tok(list(prompts), return_tensors="pt", padding=True).to(lm.device)
    extra = {}
    if shared_prefix_rows:
        cache = _prefix_cache(lm, enc["input_ids"], enc["attention_mask"], shared_prefix_rows)
        if cache is not None:
            extra["cache"] = cache
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    sampler = NucleusSampler(top_p, temperature, uniforms, prompt_length=enc["input_ids"].shape[1], recorder=recorder,
                             base_nucleus=base_nucleus, twins=0 if recorder is None else recorder.twins,
                             guidance=guidance)
    handle = (None if recorder is None or recorder.twins
              else lm.output_embeddings.register_forward_pre_hook(recorder.pre_hook))
    try:  # the recorder's hook is registered first, so it sees h before the steer changes it
        with steering(lm, steer, values):  # greedy over the sampler's one-hot scores = a draw from the nucleus
            out = lm.model.generate(**enc, generation_config=config, logits_processor=LogitsProcessorList([sampler]),
                                    **extra)
    finally:
        if handle is not None:
            handle.remove()
    new = out[:, enc["input_ids"].shape[1] :].cpu()
    if recorder is not None and recorder.twins:
        new = new[: recorder.twins]  # the twins' texts are their rows' own
    nll = torch.stack(recorder.steps, 1).cpu() if recorder is not None and recorder.steps else None
    cost = torch.stack(recorder.costs, 1).cpu() if recorder is not None and recorder.costs else None
    results = []
    for r, row in enumerate(new.tolist()):
        n = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
        ids = row[:n]
        results.append((tok.decode(ids, skip_special_tokens=True), ids,
                        None if nll is None else nll[r, :n].tolist(), None if cost is None else cost[r, :n].tolist()))
    return results


#: shortest shared prefix worth computing once (below it the batched prefill costs about as much)
MIN_SHARED_PREFIX = 8


@torch.no_grad()
def _prefix_cache(lm: LoadedLM, ids: torch.Tensor, mask: torch.Tensor, rows: int) -> DynamicCache | None:
    """A KV cache of the batch's first P columns, built from one pass over the token prefix that the first ``rows``
    rows share (the prompting baseline's chat template and instruction: most of each row's prompt), or None when
    there is too little to share.

    Left padding puts a row's prefix at columns [pads, pads + len) with positions 0, 1, …, exactly as the prefix
    alone has them, so the alone pass's keys and values, shifted to each row's offset, are the ones the batched
    prefill would compute (to the last bits); padding columns hold zeros, which the attention mask hides. P is the
    largest column count that is prefix or padding in every row (the other rows, the plain-prompt twins, are
    padding there). ``generate`` then runs the prefill only on the columns after P."""
    pads = (mask == 0).sum(1).tolist()
    real = [ids[r, pads[r]:].tolist() for r in range(rows)]
    common = real[0]
    for other in real[1:]:
        n = next((i for i, (a, b) in enumerate(zip(common, other)) if a != b), min(len(common), len(other)))
        common = common[:n]
    width = min([pads[r] + len(common) for r in range(rows)] + pads[rows:] + [ids.shape[1] - 1])
    if width - max(pads[:rows]) < MIN_SHARED_PREFIX:
        return None
    alone = lm.model(input_ids=torch.tensor([common[:width]], device=ids.device), use_cache=True).cache
    cache = DynamicCache(config=lm.model.config)
    for index, layer in enumerate(alone.layers):
        keys = layer.keys.new_zeros(ids.shape[0], layer.keys.shape[1], width, layer.keys.shape[3])
        values = layer.values.new_zeros(ids.shape[0], layer.values.shape[1], width, layer.values.shape[3])
        for r in range(rows):
            n = width - pads[r]
            keys[r, :, pads[r]:width], values[r, :, pads[r]:width] = layer.keys[0, :, :n], layer.values[0, :, :n]
        cache.update(keys, values, index)
    return cache
