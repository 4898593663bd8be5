"""Fluency: perplexity of a continuation given its prompt under a judge causal LM.

Only continuation tokens count: the judge reads the prompt as context, so a steer is charged for what it wrote,
not for the prompt it was given.

Boundary approximation: texts are tokenised jointly (``prompt + continuation``, concatenated as given: put any
separating space in the continuation, as decoded generations have it), because tokenising the two parts apart
would create a token boundary the judge never sees in running text. The prompt's share is the longest common
prefix of ``tokenize(prompt)`` and ``tokenize(prompt + continuation)`` (at most ``len(tokenize(prompt))``). When
BPE merges across the boundary ("hel" + "lo" -> "hello") the merged token counts as continuation. With no BOS and
an empty prompt the first continuation token has no context and is not scored.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def conditional_perplexity(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    continuations: list[str],
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> list[float]:
    """exp(mean NLL of the continuation tokens | prompt) per pair, batched with right padding; NaN for an empty
    continuation (nothing to score). Texts are length-sorted so batches carry little padding."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = 0 if pad_id is None else int(pad_id)  # padding is masked out: any id works

    items: list[tuple[int, list[int], int]] = []  # (index, joint ids, number of masked prefix tokens)
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        if not c:
            continue
        p_ids = tokenizer(p)["input_ids"]
        ids = tokenizer(p + c)["input_ids"]
        items.append((i, list(ids), max(_common_prefix(p_ids, ids), 1)))  # position 0 is never a target
    return _score(model, items, len(prompts), batch_size, device, pad_id)


def token_perplexity(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    continuation_ids: Sequence[Sequence[int]],
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> list[float]:
    """exp(mean NLL of the given continuation tokens | the prompt tokens) per pair: the judge scores exactly the
    tokens that were sampled (same tokenizer as the generator). NaN for an empty continuation."""
    if len(prompt_ids) != len(continuation_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(continuation_ids)} continuations")
    items = [(i, [*p, *c], max(len(p), 1)) for i, (p, c) in enumerate(zip(prompt_ids, continuation_ids)) if c]
    return _score(model, items, len(prompt_ids), batch_size, device, 0)


#: judge positions whose output-layer logits are materialised at once: bounds the judge's memory by this many ×
#: its vocabulary (Gemma 3: 262k logits a position, ~1 GB in fp32 for 1,024 positions), whatever the batch size
LOGIT_CHUNK = 1024


def _score(model: Any, items: list[tuple[int, list[int], int]], n: int, batch_size: int,
           device: str | torch.device | None, pad_id: int, logit_chunk: int = LOGIT_CHUNK) -> list[float]:
    """Perplexity of ids[n_mask:] given ids[:n_mask] for each (index, ids, n_mask); NaN where nothing is scored.

    Length-sorted right-padded batches. The transformer body runs once per batch; the output layer runs only on
    the positions that predict a scored token, ``logit_chunk`` of them at a time, so a judge with a large
    vocabulary never holds a whole batch's logits (batch × length × vocabulary) in memory."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = [math.nan] * n
    items = sorted((it for it in items if len(it[1]) > it[2]), key=lambda it: len(it[1]))
    body, head = model.base_model, model.get_output_embeddings()
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)  # Gemma 2 style heads
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start : start + batch_size]
            width = max(len(ids) for _, ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            targets = torch.full((len(chunk), width), -100, dtype=torch.long)  # position t predicts token t+1
            for r, (_, ids, n_mask) in enumerate(chunk):
                input_ids[r, : len(ids)] = torch.tensor(ids)
                attention[r, : len(ids)] = 1
                targets[r, n_mask - 1 : len(ids) - 1] = torch.tensor(ids[n_mask:])
            rows, cols = (targets != -100).nonzero(as_tuple=True)
            with torch.inference_mode():
                hidden = body(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
                picked, wanted = hidden[rows.to(device), cols.to(device)], targets[rows, cols].to(device)
                nll = torch.empty(len(rows), dtype=torch.float32, device=device)
                for a in range(0, len(rows), max(1, logit_chunk)):
                    logits = head(picked[a : a + logit_chunk]).float()
                    if softcap:
                        logits = torch.tanh(logits / softcap) * softcap
                    nll[a : a + logit_chunk] = F.cross_entropy(logits, wanted[a : a + logit_chunk], reduction="none")
                sums = torch.zeros(len(chunk), dtype=torch.float64).index_add_(0, rows, nll.double().cpu())
                counts = torch.bincount(rows, minlength=len(chunk))
            for (i, _, _), total, count in zip(chunk, sums.tolist(), counts.tolist()):
                out[i] = math.exp(total / count)
    finally:
        model.train(was_training)
    return out
