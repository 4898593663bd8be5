"""The frozen LM's final hidden states of a text set, computed once and kept on disk.

The body is frozen, so its final hidden states h of a text set never change for a model: fitting a steer
(``steer_core.train``) and a self-labelled source's probe (``steer_core.scorers.probe``) read them from here, keyed
by the model's fingerprint and the texts' hash, instead of running the body again. A truncated or garbled cache
file is discarded and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steer_core.files import file_atomic
from steer_core.model.lm import LoadedLM

log = logging.getLogger(__name__)


@dataclass
class HiddenCache:
    """Final hidden states of every predicting position, with its next token and its text's index."""

    h: torch.Tensor  # (N, d)
    targets: torch.Tensor  # (N,)
    text_index: torch.Tensor  # (N,)

    @property
    def tokens(self) -> int:
        return int(self.targets.numel())


def texts_hash(texts: Sequence[str], values: torch.Tensor | None = None) -> str:
    """Content hash of a training set (texts and their steer values)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    if values is not None:
        h.update(values.float().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def cache_hidden_states(
    lm: LoadedLM,
    texts: Sequence[str],
    max_length: int = 64,
    batch_tokens: int = 512,
    progress: bool = False,
) -> HiddenCache:
    """Run the frozen body once over ``texts`` (sorted by length, right-padded) and keep only real positions."""
    tok = lm.tokenizer
    ids = [tok(t, add_special_tokens=True)["input_ids"][:max_length] for t in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    hs, ys, xs = [], [], []
    batches = _length_batches(order, ids, batch_tokens)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="cache hidden states", unit="batch")
    pad = tok.pad_token_id or 0
    for batch in batches:
        width = max(len(ids[i]) for i in batch)
        inp = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            inp[r, : len(ids[i])] = torch.tensor(ids[i])
            mask[r, : len(ids[i])] = 1
        out = lm.body(input_ids=inp.to(lm.device), attention_mask=mask.to(lm.device)).last_hidden_state.float().cpu()
        for r, i in enumerate(batch):
            n = len(ids[i]) - 1
            if n <= 0:
                continue
            hs.append(out[r, :n])
            ys.append(torch.tensor(ids[i][1 : n + 1]))
            xs.append(torch.full((n,), i, dtype=torch.long))
    if not hs:
        raise ValueError("no text has two or more tokens: nothing to train on")
    return HiddenCache(torch.cat(hs), torch.cat(ys), torch.cat(xs))


def _length_batches(order: list[int], ids: list[list[int]], batch_tokens: int) -> list[list[int]]:
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * len(ids[i]) > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def save_cache(cache: HiddenCache, path: Path) -> None:
    with file_atomic(path) as tmp:
        save_file({"h": cache.h.contiguous(), "targets": cache.targets, "text_index": cache.text_index}, str(tmp))


def load_cache(path: Path) -> HiddenCache:
    """Read a hidden-state cache; a truncated or inconsistent file raises ``CorruptCache``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            cache = HiddenCache(f.get_tensor("h"), f.get_tensor("targets"), f.get_tensor("text_index"))
    except Exception as exc:  # safetensors raises its own errors on a short or garbled file
        raise CorruptCache(f"{path}: {exc.__class__.__name__}: {exc}") from exc
    n = cache.h.shape[0]
    if cache.h.ndim != 2 or cache.targets.shape != (n,) or cache.text_index.shape != (n,):
        raise CorruptCache(f"{path}: tensors of inconsistent shapes")
    return cache


class CorruptCache(Exception):
    """A cache file that cannot be used as it is (it is discarded and rebuilt, never used)."""


def default_hidden_cache() -> Path:
    """Where hidden states are kept between runs: $STEER_HIDDEN_CACHE_DIR, else <model cache>/hidden."""
    from steer_core.model.lm import cache_dir

    return Path(os.environ.get("STEER_HIDDEN_CACHE_DIR") or cache_dir() / "hidden")


def cached_hidden_states(
    lm: LoadedLM, texts: Sequence[str], max_length: int, cache_dir: Path | None, progress: bool = False
) -> tuple[HiddenCache, bool]:
    """Hidden states for ``texts``, read from ``cache_dir`` when this model and text set were cached before."""
    if cache_dir is None:
        return cache_hidden_states(lm, texts, max_length, progress=progress), False
    key = hashlib.sha256(f"{lm.fingerprint}|{max_length}|{texts_hash(texts)}".encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"hidden-{key}.safetensors"
    if path.is_file():
        try:
            return load_cache(path), True
        except CorruptCache as exc:
            log.warning("discarding a corrupt hidden-state cache and rebuilding it: %s", exc)
            path.unlink(missing_ok=True)
    cache = cache_hidden_states(lm, texts, max_length, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_cache(cache, path)
    return cache, False
