"""The tests' one tiny-Llama builder and one random-steer builder (conftest's tiny model and every test file use them).

Both seed torch's global RNG, as the copies they replace did, so each test builds the very same weights as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from steer_core.model.steer import Steer


def tiny_llama(vocab_size: int, *, hidden: int = 32, heads: int = 2, kv_heads: int = 1, max_positions: int = 256,
               seed: int = 0, **config: Any):
    """A random 2-layer ``LlamaForCausalLM`` (intermediate size 2·hidden) built after ``torch.manual_seed(seed)``;
    ``config`` adds LlamaConfig fields (token ids, tie_word_embeddings, initializer_range…)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions, **config,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def random_steer(dim: Any, rank: int | None = None, names: Sequence[str] = ("style", "dummy"), eps: float = 1e-2, *,
                 scale: float = 1.0, seed: int = 0, fp: str | None = None, base_model: str | None = None,
                 metadata: dict[str, Any] | None = None) -> Steer:
    """A steer whose every parameter is drawn N(0, scale²) after ``torch.manual_seed(seed)`` (a low-rank steer's
    constructor draws its A first, from the same stream). ``dim``: a width, or a loaded LM (its width, and its
    fingerprint unless ``fp`` is given). ``fp`` and ``base_model`` go into the metadata (the base fingerprint a steer
    is checked against; the base model's name)."""
    if not isinstance(dim, int):
        fp = dim.fingerprint if fp is None else fp
        dim = dim.dim
    meta = dict(metadata or {})
    if fp is not None:
        meta["base_fingerprint"] = fp
    if base_model is not None:
        meta["base_model"] = base_model
    torch.manual_seed(seed)
    st = Steer(list(names), dim, rank, eps, meta)
    with torch.no_grad():
        for p in st.parameters():
            p.normal_(0.0, scale)
    return st


def build_tiny_model_dir(path: Path, tokenizer_dir: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A tiny random Llama with the default tokenizer, saved as a normal HF model directory."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = tiny_llama(len(tok), hidden=hidden, seed=seed, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path
