"""Activation addition (ActAdd / mean-difference steering): the baseline LM-Steer is compared against.

The vector is the mean hidden state of the +1 texts minus that of the −1 texts at one decoder layer's output;
during generation ``strength × vector`` is added to that layer's output at every position.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from .lm import LoadedLM


@dataclass
class ActAdd:
    """A steering vector for the residual stream after decoder layer ``layer``."""

    vector: torch.Tensor
    layer: int


def decoder_layers(lm: LoadedLM) -> torch.nn.ModuleList:
    """The list of transformer blocks (Llama/Gemma/Mistral style ``.layers``, GPT-2 style ``.h``)."""
    body = lm.body
    for attr in ("layers", "h", "blocks"):
        layers = getattr(body, attr, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(f"cannot find the decoder layers of {type(body).__name__} for activation addition")


@torch.no_grad()
def fit_actadd(
    lm: LoadedLM, texts: Sequence[str], values: Sequence[float], layer: int | None = None, batch_size: int = 16,
    max_length: int = 64,
) -> ActAdd:
    """Mean over tokens of layer outputs, averaged per text, for value > 0 texts minus value < 0 texts."""
    layers = decoder_layers(lm)
    layer = len(layers) // 2 if layer is None else layer
    if not 0 <= layer < len(layers):
        raise ValueError(f"actadd layer {layer} is out of range: the model has {len(layers)} layers")
    pos = [t for t, v in zip(texts, values) if v > 0]
    neg = [t for t, v in zip(texts, values) if v < 0]
    if not pos or not neg:
        raise ValueError("activation addition needs texts on both sides (value > 0 and value < 0)")
    tok = lm.tokenizer
    side = tok.padding_side
    tok.padding_side = "right"
    captured: list[torch.Tensor] = []  # the layer's own output: where actadd_steering adds the vector
    handle = layers[layer].register_forward_hook(
        lambda _m, _a, out: captured.append(out[0] if isinstance(out, tuple) else out))
    try:
        means = []
        for group in (pos, neg):
            acc = torch.zeros(lm.dim)
            for i in range(0, len(group), batch_size):
                enc = tok(group[i : i + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length).to(lm.device)
                captured.clear()
                lm.body(**enc)
                out = captured[0]
                m = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
                acc += ((out * m).sum(1) / m.sum(1)).sum(0).float().cpu()
            means.append(acc / len(group))
    finally:
        handle.remove()
        tok.padding_side = side
    return ActAdd(means[0] - means[1], layer)


@contextlib.contextmanager
def actadd_steering(lm: LoadedLM, actadd: ActAdd, strength: float) -> Iterator[None]:
    """Within the block, ``strength × vector`` is added to the chosen layer's output."""
    layer = decoder_layers(lm)[actadd.layer]
    vec = (actadd.vector * float(strength)).to(lm.device)
    thread = threading.get_ident()  # a model shared by threads is steered only in this thread's passes

    def hook(module, args, output):
        if threading.get_ident() != thread:
            return None
        if isinstance(output, tuple):
            return (output[0] + vec.to(output[0].dtype),) + tuple(output[1:])
        return output + vec.to(output.dtype)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
