"""Steer algebra: weighted composition of steers trained on the same base model.

``compose([(A, a), (B, b)])`` returns one steer whose names are the union of the parts' names and whose matrices
are the parts' matrices times their weights, so that generating with the composition at values
``{A's name: 1, B's name: 1}`` is exactly generating with ``a·W_A + b·W_B``::

    logits = E (h + ε (a W_A + b W_B) h)

and each part's strength can still be set on its own at generation time.

Rules (documented here, relied on by the CLI):

- **Same base.** Every part must carry the same ``base_fingerprint`` (a part without one is accepted and takes the
  others'); different fingerprints raise :class:`~steer_core.model.steer.BaseModelMismatch`. Different ``dim`` raises
  ``ValueError``. ``steer transfer`` is the way across base models.
- **Names.** A name that appears in one part only is kept as it is. A name that appears in several parts is
  prefixed with each part's label, ``"<label>.<name>"`` (labels default to ``p0, p1, …``; the CLI uses the file
  stems, so ``pos.safetensors`` and ``neg.safetensors`` that both hold ``sentiment`` become ``pos.sentiment`` and
  ``neg.sentiment``). Labels are made unique by appending ``-2, -3, …``.
- **Dummy.** The ``dummy`` steer of each part (the domain absorber, 0 at generation) is dropped unless
  ``keep_dummy=True``; kept dummies follow the same collision rule.
- **ε.** The result keeps one ε (the first part's, or ``epsilon=``); a part with another ε has the ratio folded into
  its matrices (``W ← W · ε_part / ε``), so ε·W is unchanged.
- **Rank.** All full rank → full rank. All low rank → low rank r = max rᵢ (smaller factors are zero-padded, which is
  exact). Mixed → full rank (dense W = A Bᵀ).
- **Collapse.** ``collapse="name"`` instead sums every part's chosen steer (``names`` or its primary) into ONE
  steer ``name``: W = Σ_k w_k W_k. For low-rank parts the factors are concatenated (A = [w_1 A_1 | w_2 A_2 | …],
  B = [B_1 | B_2 | …]), which is exact; when Σ r_k ≥ d the result is dense full rank.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Sequence

import torch

from steer_core.model.steer import BaseModelMismatch, Steer, primary_name

DUMMY = "dummy"


def _label(raw: str) -> str:
    """A label safe inside a strength spec (no ',', '=' or spaces)."""
    lab = re.sub(r"[,=\s]+", "_", str(raw)).strip("_")
    return lab or "part"


def _unique_labels(labels: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        lab = _label(lab)
        if lab in seen:
            seen[lab] += 1
            lab = f"{lab}-{seen[lab]}"
            while lab in seen:
                lab = lab + "_"
        seen.setdefault(lab, 1)
        out.append(lab)
    return out


def check_same_base(steers: Sequence[Steer], labels: Sequence[str] | None = None) -> str | None:
    """The common base fingerprint of ``steers`` (None when none has one); raise on a mismatch or another dim."""
    labels = list(labels) if labels is not None else [f"p{i}" for i in range(len(steers))]
    dims = {s.dim for s in steers}
    if len(dims) > 1:
        desc = ", ".join(f"{lab} d={s.dim}" for lab, s in zip(labels, steers))
        raise ValueError(f"cannot combine steers of different hidden sizes ({desc})")
    fp, fp_label = None, None
    for lab, s in zip(labels, steers):
        own = s.metadata.get("base_fingerprint")
        if not own:
            continue
        if fp is None:
            fp, fp_label = own, lab
        elif own != fp:
            raise BaseModelMismatch(
                f"cannot compose steers trained on different base models: {fp_label} is on "
                f"{fp[:12]}, {lab} on {own[:12]} (use `steer transfer` to move one across first)"
            )
    return fp


def compose(
    parts: Sequence[tuple[Steer, float]],
    labels: Sequence[str] | None = None,
    *,
    keep_dummy: bool = False,
    epsilon: float | None = None,
    collapse: str | None = None,
    names: Sequence[str | None] | None = None,
) -> Steer:
    """Weighted composition of steers on one base model (see the module docstring for the rules).

    ``parts`` is ``[(steer, weight), …]``; ``labels`` names the parts (for collisions and the metadata);
    ``collapse`` sums the parts into one steer of that name, using ``names[k]`` (default: the part's primary
    steer) from each part.
    """
    if not parts:
        raise ValueError("compose needs at least one steer")
    steers = [p[0] for p in parts]
    weights = [float(p[1]) for p in parts]
    for w in weights:
        if not math.isfinite(w):
            raise ValueError(f"weight {w} is not a finite number")
    labels = _unique_labels(labels if labels is not None else [f"p{i}" for i in range(len(steers))])
    if len(labels) != len(steers):
        raise ValueError(f"{len(labels)} labels for {len(steers)} steers")
    fp = check_same_base(steers, labels)
    dim = steers[0].dim
    eps = float(epsilon) if epsilon is not None else steers[0].epsilon
    if not eps > 0:
        raise ValueError(f"epsilon must be positive, got {eps}")
    # per part: the (name, W factor scale) pairs it contributes
    if collapse is not None:
        chosen = list(names) if names is not None else [None] * len(steers)
        if len(chosen) != len(steers):
            raise ValueError(f"{len(chosen)} names for {len(steers)} steers")
        picks = []
        for s, lab, nm in zip(steers, labels, chosen):
            nm = nm or primary_name(s)
            if nm not in s.names:
                raise ValueError(f"part {lab} has no steer named {nm!r} (it has {s.names})")
            picks.append([nm])
    else:
        picks = [[n for n in s.names if keep_dummy or n != DUMMY] for s in steers]
        for lab, s, p in zip(labels, steers, picks):
            if not p:
                raise ValueError(f"part {lab} holds only a dummy steer ({s.names}); nothing to compose")

    ranks = [s.rank for s in steers]
    if collapse is not None:
        out = _collapse(steers, weights, picks, eps, dim, collapse)
        new_names = [collapse]
    else:
        counts: dict[str, int] = {}
        for p in picks:
            for n in p:
                counts[n] = counts.get(n, 0) + 1
        new_names = [n if counts[n] == 1 else f"{lab}.{n}" for lab, p in zip(labels, picks) for n in p]
        if len(set(new_names)) != len(new_names):  # "a.b" already present as a plain name: fall back to all-prefixed
            new_names = [f"{lab}.{n}" for lab, p in zip(labels, picks) for n in p]
        out = _stack(steers, weights, picks, eps, dim, new_names, ranks)

    first = next((s for s in steers if s.metadata.get("base_fingerprint")), steers[0])
    meta: dict[str, Any] = {k: first.metadata[k] for k in ("base_fingerprint", "base_model", "base_name")
                            if k in first.metadata}
    if fp is not None:
        meta["base_fingerprint"] = fp
    cursor = 0
    composition = []
    for lab, s, w, p in zip(labels, steers, weights, picks):
        entry = {"label": lab, "weight": w, "epsilon": s.epsilon, "rank": s.rank, "names": s.names,
                 "used": p, "source": s.metadata.get("source_path")}
        if collapse is None:
            entry["as"] = new_names[cursor : cursor + len(p)]
            cursor += len(p)
        else:
            entry["as"] = [collapse]
        for key in ("data_hash", "train_data_hash"):
            if key in s.metadata:
                entry[key] = s.metadata[key]
        composition.append(entry)
    meta["composition"] = composition
    out.metadata = json.loads(json.dumps(meta, default=str))
    return out


def _scale(s: Steer, w: float, eps: float) -> float:
    return w * s.epsilon / eps


@torch.no_grad()
def _stack(steers, weights, picks, eps, dim, new_names, ranks) -> Steer:
    """One steer per picked name, each W scaled by its part's weight (and ε ratio)."""
    low = all(r is not None for r in ranks)
    rank = max(ranks) if low else None
    out = Steer(new_names, dim, rank, eps)
    i = 0
    for s, w, p in zip(steers, weights, picks):
        c = _scale(s, w, eps)
        for n in p:
            j = s.names.index(n)
            if low:
                r = s.rank
                out.A[i].zero_()
                out.B[i].zero_()
                out.A[i, :, :r] = s.A[j].detach().float() * c
                out.B[i, :, :r] = s.B[j].detach().float()
            else:
                out.W[i] = s.matrices()[j].detach().float() * c
            i += 1
    return out


@torch.no_grad()
def _collapse(steers, weights, picks, eps, dim, name) -> Steer:
    """ONE steer: W = Σ_k c_k W_k, exact: concatenated factors for low rank, dense otherwise."""
    low = all(s.rank is not None for s in steers)
    total = sum(s.rank for s in steers) if low else dim
    if low and total < dim:
        out = Steer([name], dim, total, eps)
        As, Bs = [], []
        for s, w, p in zip(steers, weights, picks):
            j = s.names.index(p[0])
            As.append(s.A[j].detach().float() * _scale(s, w, eps))
            Bs.append(s.B[j].detach().float())
        out.A[0] = torch.cat(As, dim=1)
        out.B[0] = torch.cat(Bs, dim=1)
        return out
    out = Steer([name], dim, None, eps)
    acc = torch.zeros(dim, dim, dtype=torch.float64)
    for s, w, p in zip(steers, weights, picks):
        j = s.names.index(p[0])
        acc += s.matrices()[j].detach().double() * _scale(s, w, eps)
    out.W[0] = acc.float()
    return out


def parse_part(spec: str) -> tuple[str, float]:
    """``path[:weight]`` → (path, weight); the weight defaults to 1."""
    path, sep, raw = spec.rpartition(":")
    if sep and path:
        try:
            w = float(raw)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(w):
            raise ValueError(f"weight {raw!r} in {spec!r} must be a finite number")
        return path, w
    return spec, 1.0
