"""Batched steered sampling with the KV cache.

The steer is applied to the final hidden state through a forward pre-hook on the output embedding layer, so the
model is never copied and Hugging Face ``generate`` (KV cache, stopping, padding) runs unchanged. Each row of a
batch may carry its own steer values: one batch can sweep several strengths.

Sampling is our :class:`NucleusSampler`, not ``generate``'s own top-p. HF sorts the whole vocabulary for every row
at every step and then draws over the whole vocabulary; at batch 48 on a CPU that costs more than the model's
forward pass (sort 144 ms + multinomial 49 ms against ~100 ms for SmolLM2-135M, one thread). The sampler finds the
nucleus with ``topk`` (widening only for rows whose nucleus is larger) and hands ``generate`` (run greedy) a one-hot
score row. Its random numbers are per row, keyed by (seed, prompt, sample): a row's draw does not depend on which
other rows share its batch or thread, so the same steer evaluated twice, as candidate and as champion, yields the
same samples, and every strength of a sweep uses the same random numbers (paired samples: lower-variance
differences between strengths and between steers).

With ``base_nll=True`` each generation also carries, per sampled token, its negative log-likelihood under the
*unsteered* model, read during sampling (a pre-hook registered ahead of the steer sees the unsteered h), so the
base model's perplexity of a steered text needs no second forward pass.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from .lm import LoadedLM
from .steer import Steer, primary_name

_INTERNAL = ("token_ids", "base_nll")


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

    def __init__(self, steered_rows: torch.Tensor) -> None:
        self.steered = steered_rows
        self.any_steered = bool(steered_rows.any())  # once, not per forward (a device sync on a GPU)
        self.base_logits: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []
        self.thread = threading.get_ident()

    def pre_hook(self, module: torch.nn.Module, args: tuple) -> None:
        if self.any_steered and threading.get_ident() == self.thread:
            self.base_logits = module.forward(args[0][self.steered, -1]).float()

    def record(self, scores: torch.Tensor, choice: torch.Tensor) -> None:
        logp = torch.log_softmax(scores.float(), dim=-1)
        if self.base_logits is not None:
            logp[self.steered] = torch.log_softmax(self.base_logits, dim=-1)
            self.base_logits = None
        self.steps.append(-logp.gather(1, choice[:, None]).squeeze(1))


def reads_base_nll(lm: LoadedLM) -> bool:
    """Whether the logits are exactly the output layer's (no soft-capping or scaling after it), which base-NLL
    recording during sampling assumes."""
    cfg = lm.model.config
    return (getattr(cfg, "final_logit_softcapping", None) in (None, 0) and getattr(cfg, "logit_scale", None) in (None, 1)
            and getattr(cfg, "logits_scaling", None) in (None, 1))


def row_uniforms(seed: int, keys: Sequence[tuple[int, int]], steps: int) -> torch.Tensor:
    """(rows, steps) uniforms in (0, 1), one reproducible stream per (prompt index, sample index) key."""
    out = torch.empty(len(keys), steps, dtype=torch.float64)
    for r, (p, s) in enumerate(keys):
        g = torch.Generator().manual_seed((seed * 1_000_003 + p * 10_007 + s) % (2**63))
        out[r] = torch.rand(steps, generator=g, dtype=torch.float64)
    return out.clamp_(1e-12, 1 - 1e-12)


class NucleusSampler(LogitsProcessor):
    """Top-p (nucleus) sampling at temperature T as a logits processor that returns one-hot scores.

    The nucleus is HF's: tokens in descending probability order are kept while the mass *before* them is below
    ``top_p`` (so at least one is kept). ``topk(first_k)`` suffices for a row when its top-k mass already reaches
    ``top_p``; other rows retry with 8× more candidates, up to the whole vocabulary. The draw inverts the nucleus'
    cumulative distribution at the row's uniform for this step (``uniforms``: rows × max steps).
    """

    def __init__(self, top_p: float, temperature: float, uniforms: torch.Tensor, first_k: int = 256,
                 recorder: _BaseNLL | None = None) -> None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.top_p, self.temperature, self.uniforms, self.first_k = top_p, temperature, uniforms, first_k
        self.recorder = recorder
        self.step = 0

    def sample(self, scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One token id per row of ``scores`` (rows × vocab logits), drawn at uniforms ``u`` (rows,)."""
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        u = u.to(probs.device, torch.float32)
        if self.top_p >= 1.0:
            cdf = probs.cumsum(-1)
            return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(1).clamp_(max=probs.shape[1] - 1)
        rows, vocab = probs.shape
        choice = torch.empty(rows, dtype=torch.long, device=probs.device)
        todo = torch.arange(rows, device=probs.device)
        k = min(self.first_k, vocab)
        while todo.numel():
            top, idx = probs[todo].topk(k, dim=-1)  # descending
            before = top.cumsum(-1) - top  # mass strictly before each candidate
            done = (before[:, -1] + top[:, -1] >= self.top_p) if k < vocab else torch.ones_like(todo, dtype=torch.bool)
            if done.any():
                cdf = torch.where(before[done] < self.top_p, top[done], torch.zeros_like(top[done])).cumsum(-1)
                pick = torch.searchsorted(cdf, (u[todo[done]] * cdf[:, -1])[:, None]).clamp_(max=k - 1)
                choice[todo[done]] = idx[done].gather(1, pick).squeeze(1)
            todo = todo[~done]
            k = min(k * 8, vocab)
        return choice

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        choice = self.sample(scores, self.uniforms[:, self.step])
        self.step += 1
        if self.recorder is not None:
            self.recorder.record(scores, choice)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, choice[:, None], 0.0)


@contextlib.contextmanager
def steering(lm: LoadedLM, steer: Steer | None, values: torch.Tensor | None) -> Iterator[None]:
    """Within the block, every forward pass of ``lm`` is steered by ``steer`` at ``values``."""
    if steer is None or values is None:
        yield
        return
    steer.check_base(lm.fingerprint)
    if steer.dim != lm.dim:
        raise ValueError(f"steer dimension {steer.dim} does not match the model's hidden size {lm.dim}")
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
    max_new_tokens: int = 20,
    top_p: float = 0.9,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
    base_nll: bool = False,
) -> list[Generation]:
    """Sample ``num_samples`` continuations per prompt, in batches across prompts, samples and strengths.

    ``values`` is a float strength, a list of float strengths (every prompt × sample is run at each), a value
    vector (n,), or per-row vectors (len(prompts) × num_samples, n) for arbitrary per-row settings. Row (prompt i,
    sample k) draws the same random numbers at every strength. ``base_nll`` also records each sampled token's NLL
    under the unsteered model (see the module docstring).
    """
    rows = _plan_rows(prompts, steer, values, num_samples)
    gens: list[Generation] = []
    batches = range(0, len(rows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="generate", unit="batch")
    for start in batches:
        chunk = rows[start : start + batch_size]
        vals = None if steer is None else torch.stack([r[3] for r in chunk])
        recorder = None
        if base_nll:
            steered = torch.zeros(len(chunk), dtype=torch.bool) if vals is None else (vals != 0).any(1)
            recorder = _BaseNLL(steered.to(lm.device))
        sampler = NucleusSampler(top_p, temperature, row_uniforms(seed, [(r[0], r[1]) for r in chunk], max_new_tokens),
                                 recorder=recorder)
        outs = _sample_batch(lm, [prompts[r[0]] for r in chunk], steer, vals, max_new_tokens=max_new_tokens,
                             sampler=sampler)
        for (pi, si, strength, vec), (text, ids, nll) in zip(chunk, outs):
            gens.append(Generation(prompts[pi], pi, si, strength, text, None if vec is None else vec.tolist(), ids, nll))
    return gens


def _plan_rows(prompts, steer, values, num_samples) -> list[tuple[int, int, float, torch.Tensor | None]]:
    """(prompt index, sample index, strength, value vector) for every row to sample."""
    if not prompts:
        raise ValueError("no prompts to generate from")
    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
    pairs = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    if steer is None:
        return [(p, s, 0.0, None) for p, s in pairs]
    idx = steer.names.index(primary_name(steer))
    if values is None or isinstance(values, (int, float)):
        values = [0.0 if values is None else float(values)]
    if not isinstance(values, torch.Tensor):  # a sweep of strengths for the primary steer
        vecs = [values_for(steer, float(v)) for v in values]
        return [(p, s, float(v[idx]), v) for v in vecs for p, s in pairs]
    t = steer.values_tensor(values.float())
    if t.dim() == 1:
        return [(p, s, float(t[idx]), t) for p, s in pairs]
    if t.shape[0] != len(pairs):
        raise ValueError(f"per-row values need {len(pairs)} rows (prompts × samples), got {t.shape[0]}")
    return [(p, s, float(t[i, idx]), t[i]) for i, (p, s) in enumerate(pairs)]


@torch.no_grad()
def _sample_batch(lm, prompts, steer, values, *, max_new_tokens, sampler: NucleusSampler
                  ) -> list[tuple[str, list[int], list[float] | None]]:
    """(text, sampled token ids up to EOS, their base NLLs or None) per prompt row."""
    tok = lm.tokenizer
    enc = tok(list(prompts), return_tensors="pt", padding=True).to(lm.device)
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    recorder = sampler.recorder
    handle = None if recorder is None else lm.output_embeddings.register_forward_pre_hook(recorder.pre_hook)
    try:  # the recorder's hook is registered first, so it sees h before the steer changes it
        with steering(lm, steer, values):  # greedy over the sampler's one-hot scores = a draw from the nucleus
            out = lm.model.generate(**enc, generation_config=config, logits_processor=LogitsProcessorList([sampler]))
    finally:
        if handle is not None:
            handle.remove()
    new = out[:, enc["input_ids"].shape[1] :].cpu()
    nll = torch.stack(recorder.steps, 1).cpu() if recorder is not None and recorder.steps else None
    results = []
    for r, row in enumerate(new.tolist()):
        n = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
        ids = row[:n]
        results.append((tok.decode(ids, skip_special_tokens=True), ids,
                        None if nll is None else nll[r, :n].tolist()))
    return results
