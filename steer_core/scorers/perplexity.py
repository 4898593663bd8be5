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
    device = torch.device(device) if device is not None else next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = 0 if pad_id is None else int(pad_id)  # padding is masked out: any id works

    items: list[tuple[int, list[int], int]] = []  # (index, joint ids, number of masked prefix tokens)
    out = [math.nan] * len(prompts)
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        if not c:
            continue
        p_ids = tokenizer(p)["input_ids"]
        ids = tokenizer(p + c)["input_ids"]
        n_mask = max(_common_prefix(p_ids, ids), 1)  # position 0 is never a target
        if len(ids) > n_mask:
            items.append((i, list(ids), n_mask))
    items.sort(key=lambda it: len(it[1]))

    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start : start + batch_size]
            width = max(len(ids) for _, ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for r, (_, ids, n_mask) in enumerate(chunk):
                input_ids[r, : len(ids)] = torch.tensor(ids)
                attention[r, : len(ids)] = 1
                labels[r, n_mask : len(ids)] = torch.tensor(ids[n_mask:])
            with torch.inference_mode():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
                targets = labels[:, 1:].to(device)
                nll = F.cross_entropy(
                    logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
                )
                counts = (targets != -100).sum(1)
                mean_nll = (nll.sum(1) / counts).cpu().tolist()
            for (i, _, _), v in zip(chunk, mean_nll):
                out[i] = math.exp(v)
    finally:
        model.train(was_training)
    return out
