"""Activation addition (ActAdd / CAA mean-difference steering): the baseline LM-Steer is compared against.

The vector is the mean hidden state of the +1 texts minus that of the −1 texts at one decoder layer's output;
during generation it is added to that layer's output. Made *fair* in three ways, because the naive version breaks
the text rather than steering it (at a multiplier of 1 the default model's perplexity grows by orders of
magnitude):

- **Sinks are excluded.** Small Llama-style models carry huge "attention sink" activations on the first position
  (‖h‖ there is tens of times the typical norm). Averaged over all positions, the mean difference is dominated by
  that one position, and adding it to every position pushes ordinary tokens far off their manifold. The first
  ``sink_positions`` positions of each text (and any BOS token) enter neither the mean nor the typical norm, and
  the steer never adds anything there during generation (its activations are what the model attends to as a sink).
- **The size is calibrated.** The added vector is ``multiplier × typical_norm × unit(direction)``, where
  ``typical_norm`` is the mean ‖h‖ over non-sink positions of the fit texts at that layer. A multiplier therefore
  means the same fraction of the residual stream at every layer and on every model (Style Vectors, CAA sweeps).
- **The layer is chosen by measurement** (:func:`choose_layer`): the candidate whose control at the perplexity
  budget is best.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from steer_core.model.lm import LoadedLM


@dataclass
class ActAdd:
    """A steering direction for the residual stream after decoder layer ``layer``.

    ``vector`` is the raw mean difference (non-sink positions). ``typical_norm`` is the mean ‖h‖ at that layer over
    non-sink positions of the fit texts; when it is set, strengths are multipliers of it (see :meth:`added`), else
    (``None``, the old un-normalised baseline) the raw vector is scaled directly. ``sink_positions`` leading
    positions of every sequence are never steered.
    """

    vector: torch.Tensor
    layer: int
    typical_norm: float | None = None
    sink_positions: int = 1
    meta: dict[str, Any] = field(default_factory=dict)

    def added(self, strength: float) -> torch.Tensor:
        """The vector added at each steered position for a strength: ``strength × typical_norm × unit vector``
        (normalised), or ``strength × vector`` (un-normalised)."""
        if self.typical_norm is None:
            return self.vector * float(strength)
        norm = float(self.vector.norm())
        if norm == 0.0:
            return torch.zeros_like(self.vector)
        return self.vector * (float(strength) * self.typical_norm / norm)


def decoder_layers(lm: LoadedLM) -> torch.nn.ModuleList:
    """The list of transformer blocks (Llama/Gemma/Mistral style ``.layers``, GPT-2 style ``.h``)."""
    body = lm.body
    for attr in ("layers", "h", "blocks"):
        layers = getattr(body, attr, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(f"cannot find the decoder layers of {type(body).__name__} for activation addition")


def _content_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, sink_positions: int,
                  bos_id: int | None) -> torch.Tensor:
    """(batch, seq) float mask of the positions that enter the mean: real tokens past the first ``sink_positions``
    of each (right-padded) text, never a BOS token."""
    mask = attention_mask.clone()
    mask[:, :sink_positions] = 0
    if bos_id is not None:
        mask = mask * (input_ids != bos_id).to(mask.dtype)
    return mask


def fit_actadd(
    lm: LoadedLM, texts: Sequence[str], values: Sequence[float], layer: int | None = None, batch_size: int = 16,
    max_length: int = 64, *, sink_positions: int = 1, normalise: bool = True,
) -> ActAdd:
    """Mean over non-sink tokens of layer outputs, averaged per text, for value > 0 texts minus value < 0 texts.

    ``sink_positions``: leading positions left out of the mean and the typical norm (0 = the old all-position
    mean). ``normalise``: record the typical norm so strengths become multipliers of it (else raw scaling).
    Texts with no position left after the sinks (a one-token text) are skipped.
    """
    n = len(decoder_layers(lm))
    layer = n // 2 if layer is None else layer
    return fit_actadd_layers(lm, texts, values, [layer], batch_size, max_length, sink_positions=sink_positions,
                             normalise=normalise)[layer]


class _Captured(Exception):
    """Raised by the hook of the deepest layer an ActAdd fit reads, once it has its output."""


@torch.no_grad()
def fit_actadd_layers(
    lm: LoadedLM, texts: Sequence[str], values: Sequence[float], layers: Sequence[int], batch_size: int = 16,
    max_length: int = 64, *, sink_positions: int = 1, normalise: bool = True,
) -> dict[int, ActAdd]:
    """:func:`fit_actadd` at several layers from one pass over the texts (a layer sweep reads the body once)."""
    if sink_positions < 0:
        raise ValueError(f"sink_positions must be >= 0, got {sink_positions}")
    blocks = decoder_layers(lm)
    for layer in layers:
        if not 0 <= layer < len(blocks):
            raise ValueError(f"actadd layer {layer} is out of range: the model has {len(blocks)} layers")
    pos = [t for t, v in zip(texts, values) if v > 0]
    neg = [t for t, v in zip(texts, values) if v < 0]
    if not pos or not neg:
        raise ValueError("activation addition needs texts on both sides (value > 0 and value < 0)")
    layers = list(dict.fromkeys(layers))
    tok = lm.tokenizer
    bos_id = getattr(tok, "bos_token_id", None)
    side = tok.padding_side
    tok.padding_side = "right"
    captured: dict[int, torch.Tensor] = {}  # each layer's own output: where actadd_steering adds the vector
    deepest = max(layers)

    def capture(_m, _a, out, layer: int) -> None:
        captured[layer] = out[0] if isinstance(out, tuple) else out
        if layer == deepest:
            raise _Captured  # the layers above it are not needed: the body stops here

    handles = [blocks[layer].register_forward_hook(lambda m, a, out, layer=layer: capture(m, a, out, layer))
               for layer in layers]
    norm_sum = dict.fromkeys(layers, 0.0)
    norm_count = 0
    try:
        means: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        for group in (pos, neg):
            acc, used = {layer: torch.zeros(lm.dim) for layer in layers}, 0
            for i in range(0, len(group), batch_size):
                enc = tok(group[i : i + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length).to(lm.device)
                captured.clear()
                try:
                    lm.body(**enc)
                except _Captured:
                    pass
                m = _content_mask(enc["input_ids"], enc["attention_mask"], sink_positions, bos_id).float()
                counts = m.sum(1, keepdim=True)  # (batch, 1)
                keep = counts.squeeze(-1) > 0
                used += int(keep.sum())
                norm_count += int(m.sum())
                for layer in layers:
                    out = captured[layer].float()
                    acc[layer] += ((out * m.unsqueeze(-1)).sum(1)[keep] / counts[keep]).sum(0).cpu()
                    norm_sum[layer] += float((out.norm(dim=-1) * m).sum())
            if used == 0:
                raise ValueError("activation addition: no text has a token past the sink positions")
            for layer in layers:
                means[layer].append(acc[layer] / used)
    finally:
        for h in handles:
            h.remove()
        tok.padding_side = side
    return {layer: ActAdd(means[layer][0] - means[layer][1], layer,
                          norm_sum[layer] / norm_count if normalise and norm_count else None, sink_positions)
            for layer in layers}


class _Positions:
    """Per forward call of the body, which positions of the current input may be steered (position ≥ sinks).

    Positions are counted from each row's first real token: from the 2-D attention mask when the call has one
    (left-padded batched generation: ``cumsum(mask) - 1`` over past + current tokens, so cached decoding steps
    are past the sinks), else ``position_ids``, else the cache's length."""

    def __init__(self, sink_positions: int, thread: int) -> None:
        self.sinks = sink_positions
        self.thread = thread
        self.steerable: torch.Tensor | None = None

    def pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if threading.get_ident() != self.thread:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        if ref is None:
            self.steerable = None
            return None
        b, t = ref.shape[0], ref.shape[1]
        mask = kwargs.get("attention_mask")
        pos_ids = kwargs.get("position_ids")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            pos = (mask.long().cumsum(-1) - 1)[:, -t:]
        elif isinstance(pos_ids, torch.Tensor):
            pos = pos_ids.expand(b, t)
        else:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
            pos = torch.arange(past, past + t, device=ref.device).expand(b, t)
        self.steerable = pos >= self.sinks
        return None


@contextlib.contextmanager
def actadd_steering(lm: LoadedLM, actadd: ActAdd, strength: float,
                    rows: torch.Tensor | None = None) -> Iterator[None]:
    """Within the block, :meth:`ActAdd.added` (strength) is added to the chosen layer's output at every position
    but the first ``actadd.sink_positions`` of each sequence. Strength 0 adds exact zeros.

    ``rows`` (optional, one number per batch row) scales the added vector per row: a batch sweeps several
    strengths at once (``steer_core.model.generate(values=...)``), and rows at 0 run the unsteered model in the same
    pass (``generate``'s unsteered twins, which read the base model's logits beside each row)."""
    layer = decoder_layers(lm)[actadd.layer]
    vec = actadd.added(strength).to(lm.device)
    thread = threading.get_ident()  # a model shared by threads is steered only in this thread's passes
    positions = _Positions(actadd.sink_positions, thread)
    row_gate = None if rows is None else rows.to(lm.device)

    def add(h: torch.Tensor) -> torch.Tensor:
        v = vec.to(h.dtype)
        if row_gate is not None:
            if row_gate.shape[0] != h.shape[0]:
                raise RuntimeError(f"actadd: {row_gate.shape[0]} row scales for a batch of {h.shape[0]} rows")
            v = row_gate.to(h.dtype)[:, None, None] * v  # (rows, 1, d): exact zeros on the unsteered rows
        where = positions.steerable
        if actadd.sink_positions == 0 or where is None:  # no sinks to spare, or a call the pre-hook did not see
            return h + v
        if where.shape != h.shape[:2]:
            raise RuntimeError(f"actadd: positions {tuple(where.shape)} do not match the layer output "
                               f"{tuple(h.shape[:2])}")
        return h + where.to(h.dtype).unsqueeze(-1) * v

    def hook(module, args, output):
        if threading.get_ident() != thread:
            return None
        if isinstance(output, tuple):
            return (add(output[0]),) + tuple(output[1:])
        return add(output)

    pre = lm.body.register_forward_pre_hook(positions.pre_hook, with_kwargs=True)
    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
        pre.remove()


# --------------------------------------------------------------------------------------------- layer choice
@dataclass
class LayerChoice:
    """The outcome of :func:`choose_layer`: the chosen layer's fitted vector and one table row per candidate."""

    actadd: ActAdd
    table: list[dict[str, Any]]


def default_layer_candidates(n_layers: int) -> list[int]:
    """A cheap spread of candidate layers: at 1/4, 1/3, 1/2 and 2/3 of the depth (distinct, in range)."""
    fracs = (0.25, 1 / 3, 0.5, 2 / 3)
    return sorted({min(n_layers - 1, max(0, int(round(f * n_layers)))) for f in fracs})


def choose_layer(
    lm: LoadedLM,
    texts: Sequence[str],
    values: Sequence[float],
    layers: Sequence[int] | None,
    control_at_budget: Callable[[ActAdd], tuple[float, dict[str, Any]]],
    *,
    sink_positions: int = 1,
    normalise: bool = True,
    max_length: int = 64,
) -> LayerChoice:
    """Fit one vector per candidate layer and keep the one whose control at the perplexity budget is best.

    ``control_at_budget(actadd) -> (control, details)`` measures a fitted vector (e.g. the ±s swing at the largest
    in-budget strength found by :func:`steer_core.evaluate.search.search_two_sided` on a small prompt set); it is
    a callable so the choice is testable without sampling. Ties go to the earlier candidate. ``layers=None``:
    :func:`default_layer_candidates`.
    """
    n = len(decoder_layers(lm))
    cands = list(layers) if layers is not None else default_layer_candidates(n)
    if not cands:
        raise ValueError("choose_layer needs at least one candidate layer")
    best: tuple[float, ActAdd] | None = None
    table = []
    fitted = fit_actadd_layers(lm, texts, values, cands, max_length=max_length, sink_positions=sink_positions,
                               normalise=normalise)
    for layer in cands:
        actadd = fitted[layer]
        control, details = control_at_budget(actadd)
        table.append({"layer": layer, "control": control, "typical_norm": actadd.typical_norm, **details})
        score = control if math.isfinite(control) else -math.inf
        if best is None or score > best[0]:
            best = (score, actadd)
    assert best is not None
    best[1].meta["layer_sweep"] = table
    return LayerChoice(best[1], table)
