"""Batched steered sampling with the KV cache.

The steer is applied to the final hidden state through a forward pre-hook on the output embedding layer, so the
model is never copied and Hugging Face ``generate`` (KV cache, top-p, temperature) runs unchanged. Each row of a
batch may carry its own steer values: one batch can sweep several strengths.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import torch

from .lm import LoadedLM
from .steer import Steer, primary_name


@dataclass
class Generation:
    """One sampled continuation."""

    prompt: str
    prompt_index: int
    sample_index: int
    strength: float
    text: str
    values: list[float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


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
) -> list[Generation]:
    """Sample ``num_samples`` continuations per prompt, in batches across prompts, samples and strengths.

    ``values`` is a float strength, a list of float strengths (every prompt × sample is run at each), a value
    vector (n,), or per-row vectors (len(prompts) × num_samples, n) for arbitrary per-row settings.
    """
    rows = _plan_rows(prompts, steer, values, num_samples)
    gens: list[Generation] = []
    torch.manual_seed(seed)
    batches = range(0, len(rows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="generate", unit="batch")
    for start in batches:
        chunk = rows[start : start + batch_size]
        texts = _sample_batch(
            lm, [prompts[r[0]] for r in chunk], steer,
            None if steer is None else torch.stack([r[3] for r in chunk]),
            max_new_tokens=max_new_tokens, top_p=top_p, temperature=temperature,
        )
        for (pi, si, strength, vec), text in zip(chunk, texts):
            gens.append(Generation(prompts[pi], pi, si, strength, text, None if vec is None else vec.tolist()))
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
def _sample_batch(lm, prompts, steer, values, *, max_new_tokens, top_p, temperature) -> list[str]:
    tok = lm.tokenizer
    enc = tok(list(prompts), return_tensors="pt", padding=True).to(lm.device)
    with steering(lm, steer, values):
        out = lm.model.generate(
            **enc,
            do_sample=True,
            top_p=top_p,
            temperature=temperature,
            top_k=0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    new = out[:, enc["input_ids"].shape[1] :]
    return [t for t in tok.batch_decode(new, skip_special_tokens=True)]
