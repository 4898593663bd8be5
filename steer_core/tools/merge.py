"""Fold a steer at a fixed strength into the model's output layer: a plain Hugging Face model, no steer code.

``logits = E (h + ε Σ_i s_i W_i h) = E (I + ε Σ_i s_i W_i) h = E' h`` with ``E' = E (I + M)``, M = ε Σ s_i W_i.
A bias of the output layer is untouched (the steer acts on h only). Models with tied embeddings are untied: the
input embeddings keep E, ``lm_head`` gets its own E', and ``config.tie_word_embeddings`` becomes False. The
directory is written to a temp dir beside ``out_dir`` and renamed into place, with ``steer_merge.json`` (the steer's
names, ε, values, metadata) beside the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import torch

from steer_core.files import dir_atomic
from steer_core.model.lm import LoadedLM
from steer_core.model.steer import Steer, primary_name

MERGE_INFO = "steer_merge.json"


def _values(steer: Steer, values) -> torch.Tensor:
    if isinstance(values, (int, float)):
        return steer.values_tensor({primary_name(steer): float(values)})
    t = steer.values_tensor(values)
    if t.dim() != 1:
        raise ValueError("merge needs one setting of steer values (a float or one value per name), not rows")
    return t.float()


@torch.no_grad()
def merged_output_weight(lm: LoadedLM, steer: Steer, values) -> torch.Tensor:
    """E' = E (I + ε Σ s_i W_i), computed in float64 and returned in the model's dtype."""
    v = _values(steer, values)
    E = lm.output_embeddings.weight
    M = steer.combined(v.to(steer._dtype())).detach().to("cpu", torch.float64)
    Ed = E.detach().to("cpu", torch.float64)
    return (Ed + Ed @ M).to(E.dtype)


def _set_untied(config, value: bool) -> list[tuple[object, bool]]:
    """Set tie_word_embeddings on the config and its text sub-config; return the old values to restore."""
    old = []
    seen = set()
    cfgs = [config]
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            cfgs.append(get_text())
        except Exception:
            pass
    for c in cfgs:
        if id(c) in seen or not hasattr(c, "tie_word_embeddings"):
            continue
        seen.add(id(c))
        old.append((c, c.tie_word_embeddings))
        c.tie_word_embeddings = value
    return old


@torch.no_grad()
def merge_into_model(
    lm: LoadedLM,
    steer: Steer,
    values: float | Sequence[float] | Mapping[str, float] | torch.Tensor,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    source: str | None = None,
) -> Path:
    """Write a standalone HF model dir whose logits equal the steered model's at ``values``.

    ``values``: a float (strength of the primary steer; dummy 0), a mapping name → value, or a vector.
    ``lm`` is left as it was (the output layer is swapped only while saving).
    """
    out_dir = Path(out_dir)
    steer.check_model(lm)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite / --force to replace it)")
    v = _values(steer, values)
    new_weight = merged_output_weight(lm, steer, v)
    model = lm.model
    head = model.get_output_embeddings()
    old_param = head.weight
    with dir_atomic(out_dir) as tmp:
        old_flags = _set_untied(model.config, False)
        had_own_keys = "_tied_weights_keys" in vars(model)
        old_tied_keys = getattr(model, "_tied_weights_keys", None)
        try:
            head.weight = torch.nn.Parameter(new_weight.to(old_param.device), requires_grad=False)
            if old_tied_keys is not None:  # else save_pretrained drops lm_head.weight as a tied duplicate
                model._tied_weights_keys = {}
            model.save_pretrained(str(tmp))
            lm.tokenizer.save_pretrained(str(tmp))
            info = {
                "format": "lm-steer-merge",
                "names": steer.names,
                "values": dict(zip(steer.names, [float(x) for x in v.tolist()])),
                "epsilon": steer.epsilon,
                "rank": steer.rank,
                "steer_source": source,
                "base_model": lm.spec,
                "base_name": lm.name,
                "base_fingerprint": lm.fingerprint,
                "formula": "lm_head.weight = E (I + epsilon * sum_i s_i W_i)",
                "steer_metadata": steer.metadata,
            }
            (tmp / MERGE_INFO).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        finally:
            head.weight = old_param
            if had_own_keys:
                model._tied_weights_keys = old_tied_keys
            elif "_tied_weights_keys" in vars(model):
                del model._tied_weights_keys
            for cfg, val in old_flags:
                cfg.tie_word_embeddings = val
    return out_dir
