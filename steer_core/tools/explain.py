"""What a steer does, in tokens: its singular directions, and which spans of a text carry its style.

**explain** (the paper's interpretation of a steer through word embeddings). A steer's effect on the logits is
``Δlogits = ε s E W h = ε s Σ_k σ_k (E u_k)(v_kᵀ h)`` with ``W = U diag(σ) Vᵀ``. For each of the top-k singular
directions:

- ``promoted`` / ``demoted``: the tokens whose output embeddings align most / least with u_k (the output side;
  cosine by default, raw projection with ``score="dot"``): in contexts where v_kᵀh > 0 and s > 0 these logits go
  up / down (at s < 0 the roles swap);
- ``trigger_pos`` / ``trigger_neg`` (JSON only): the same for v_k, the input side.

The sign of an SVD pair is arbitrary; we fix it so that v_k·h̄ ≥ 0, where h̄ is the mean final hidden state over
a few neutral reference sentences: then "promoted" really means "raised at +s in a typical context". ``overall``
lists the tokens whose logits +1 strength raises / lowers most at h̄ (all directions together). Tokens are
filtered to word-like ones by default: alphabetic once decoded and the leading space stripped, at least
``min_len`` characters, and (``word_start``) starting a word, so subword fragments ('elled', 'ORS') drop out.

Why orient and filter: with raw dot products and no orientation, rare subword fragments with large embeddings crowd
the lists and the sign of each direction is arbitrary.

**highlight**. Per-token evidence for the +s style: ``loss(token | −s) − loss(token | +s)`` = log p₊ − log p₋ (in
nats): positive where the token is more likely under +s. The spans are the best few non-overlapping
maximum-sum contiguous segments (greedy: take the best segment, block it, repeat).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import torch

from steer_core.model.lm import LoadedLM
from steer_core.files import write_atomic
from steer_core.model.steer import Steer, primary_name

SPACE_MARKERS = ("Ġ", "▁", " ")


# --------------------------------------------------------------------------------------------- tokens
# Neutral contexts whose mean final hidden state h̄ stands for "a typical context" (orientation and overall effect).
REFERENCE_CONTEXTS = (
    "The weather today is",
    "I went to the market and bought",
    "She said that the movie was",
    "Our trip to the coast was",
    "The report was published on",
    "He thinks the new policy",
    "We arrived at the station and",
    "The meeting last week was",
)


def token_strings(tokenizer, vocab_size: int) -> list[str]:
    """The raw vocabulary strings (with 'Ġ'/'▁' markers) for ids 0..vocab_size-1 ('' past the tokenizer)."""
    n = min(vocab_size, len(tokenizer))
    toks = tokenizer.convert_ids_to_tokens(list(range(n)))
    return [t if isinstance(t, str) else "" for t in toks] + [""] * (vocab_size - n)


def _strip_marker(tok: str) -> tuple[str, bool]:
    for m in SPACE_MARKERS:
        if tok.startswith(m):
            return tok[len(m):], True
    return tok, False


def decoded_strings(tokenizer, vocab_size: int) -> list[str]:
    """Each id decoded on its own ('' past the tokenizer): byte-level tokens like 'ĠðŁĻĤ' become ' 🙂'."""
    n = min(vocab_size, len(tokenizer))
    out = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                 clean_up_tokenization_spaces=False)
    return list(out) + [""] * (vocab_size - n)


def word_like_mask(tokenizer, vocab_size: int, min_len: int = 3, word_start: bool = False) -> torch.Tensor:
    """True for tokens that are alphabetic (decoded, leading space stripped), at least ``min_len`` characters.

    ``word_start`` also requires the leading-space marker ('Ġ', '▁' or a decoded space): a token that starts a word,
    not a fragment like 'elled'. When the vocabulary has fewer than 1,000 such tokens (no marker convention), it is
    ignored.
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    starts = torch.zeros(vocab_size, dtype=torch.bool)
    raw = token_strings(tokenizer, vocab_size)
    for i, dec in enumerate(decoded_strings(tokenizer, vocab_size)):
        w = dec.strip()
        if i not in special and len(w) >= min_len and w.isalpha():
            mask[i] = True
            starts[i] = _strip_marker(raw[i])[1] or dec.startswith(" ")
    if word_start and int(starts.sum()) >= 1000:
        return starts
    return mask


def _display(tokenizer, ids: list[int]) -> list[str]:
    return tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)


@torch.no_grad()
def mean_hidden_state(lm: LoadedLM, contexts=REFERENCE_CONTEXTS) -> torch.Tensor:
    """h̄: the mean final hidden state over every position of ``contexts`` (float64, CPU)."""
    hs = []
    for c in contexts:
        ids = lm.tokenizer(c, return_tensors="pt").to(lm.device)
        hs.append(lm.body(**ids).last_hidden_state[0].to("cpu", torch.float64))
    if not hs:
        raise ValueError("mean_hidden_state needs at least one context")
    return torch.cat(hs).mean(0)


# --------------------------------------------------------------------------------------------- explain
@torch.no_grad()
def singular_directions(
    steer: Steer, name: str | None = None, reference: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, V) of the named steer's W (float64), W = U diag(S) Vᵀ.

    The sign of each pair (u_k, v_k) is fixed so that v_k·reference ≥ 0 (reference = a typical hidden state h̄:
    then +s moves logits along +E u_k in typical contexts), or u_k·v_k ≥ 0 when no reference is given.
    """
    name = name or primary_name(steer)
    if name not in steer.names:
        raise ValueError(f"unknown steer name {name!r}; this steer has {steer.names}")
    W = steer.matrices()[steer.names.index(name)].detach().to("cpu", torch.float64)
    U, S, Vh = torch.linalg.svd(W)
    V = Vh.T.clone()
    U = U.clone()
    key = (V.T @ reference.to(torch.float64)) if reference is not None else (U * V).sum(0)
    flip = key < 0
    U[:, flip] *= -1
    V[:, flip] *= -1
    return U, S, V


@torch.no_grad()
def explain(
    steer: Steer,
    lm: LoadedLM,
    name: str | None = None,
    k: int = 5,
    top_tokens: int = 10,
    word_like: bool = True,
    min_len: int = 3,
    word_start: bool = True,
    score: str = "cosine",
    contexts=REFERENCE_CONTEXTS,
) -> dict[str, Any]:
    """Top-k singular directions of W (the named steer, default primary) and the tokens each one moves.

    ``score``: ``cosine`` ranks tokens by the cosine between their output embedding and u_k (direction, not norm:
    rare tokens with large embeddings do not crowd the lists), ``dot`` by the raw projection E u_k.
    ``contexts``: texts whose mean final hidden state h̄ orients each direction (v_k·h̄ ≥ 0) and gives the
    ``overall`` lists: the tokens whose logits +1 strength raises / lowers most at h̄ (Δlogit = ε eᵀ W h̄, centred
    over the vocabulary, in nats per unit strength). Pass ``contexts=()`` to orient by u_k·v_k ≥ 0 instead.
    """
    steer.check_model(lm)
    if k < 1 or top_tokens < 1:
        raise ValueError("k and top_tokens must be ≥ 1")
    if score not in ("cosine", "dot"):
        raise ValueError(f"score must be 'cosine' or 'dot', got {score!r}")
    name = name or primary_name(steer)
    hbar = mean_hidden_state(lm, contexts) if contexts else None
    U, S, V = singular_directions(steer, name, hbar)
    k = min(k, int((S > 0).sum()) or 1, steer.dim)
    E = lm.output_embeddings.weight.detach().to("cpu", torch.float64)
    vocab = E.shape[0]
    if word_like:
        keep = word_like_mask(lm.tokenizer, vocab, min_len, word_start)
    else:
        keep = _all_but_special(lm.tokenizer, vocab)
    if int(keep.sum()) < 2 * top_tokens:
        raise ValueError(f"only {int(keep.sum())} tokens pass the filter; lower min_len or turn word_like off")
    Es = E / E.norm(dim=1, keepdim=True).clamp_min(1e-12) if score == "cosine" else E
    out_proj = Es @ U[:, :k]  # (V, k): alignment of each output embedding with u_k
    in_proj = Es @ V[:, :k]
    total = float((S**2).sum())
    dirs = []
    for j in range(k):
        dirs.append({
            "index": j,
            "singular_value": float(S[j]),
            "energy": float(S[j] ** 2 / total) if total > 0 else 0.0,
            "reference_gain": None if hbar is None else float(V[:, j] @ hbar),
            "promoted": _ranked(lm.tokenizer, out_proj[:, j], keep, top_tokens, largest=True),
            "demoted": _ranked(lm.tokenizer, out_proj[:, j], keep, top_tokens, largest=False),
            "trigger_pos": _ranked(lm.tokenizer, in_proj[:, j], keep, top_tokens, largest=True),
            "trigger_neg": _ranked(lm.tokenizer, in_proj[:, j], keep, top_tokens, largest=False),
        })
    overall = None
    if hbar is not None:
        W = steer.matrices()[steer.names.index(name)].detach().to("cpu", torch.float64)
        delta = steer.epsilon * (E @ (W @ hbar))
        delta = delta - delta.mean()
        overall = {"promoted": _ranked(lm.tokenizer, delta, keep, top_tokens, largest=True),
                   "demoted": _ranked(lm.tokenizer, delta, keep, top_tokens, largest=False)}
    return {
        "steer_name": name,
        "names": steer.names,
        "epsilon": steer.epsilon,
        "rank": steer.rank,
        "dim": steer.dim,
        "model": lm.spec,
        "base_fingerprint": lm.fingerprint,
        "k": k,
        "score": score,
        "word_like": word_like,
        "word_start": word_start,
        "min_len": min_len,
        "orientation": "v_k . mean hidden state >= 0" if hbar is not None else "u_k . v_k >= 0",
        "reference_contexts": list(contexts or ()),
        "candidate_tokens": int(keep.sum()),
        "frobenius_norm": float(total ** 0.5),
        "singular_values": [float(x) for x in S[: max(k, min(20, len(S)))]],
        "overall": overall,
        "directions": dirs,
    }


def _all_but_special(tokenizer, vocab: int) -> torch.Tensor:
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[: min(vocab, len(tokenizer))] = True
    for i in getattr(tokenizer, "all_special_ids", []) or []:
        if i < vocab:
            mask[i] = False
    return mask


def _ranked(tokenizer, scores: torch.Tensor, keep: torch.Tensor, n: int, largest: bool) -> list[dict]:
    s = scores.clone()
    s[~keep] = float("-inf") if largest else float("inf")
    vals, idx = torch.topk(s, n, largest=largest)
    ids = idx.tolist()
    return [{"id": i, "token": t, "score": round(float(v), 6)} for i, t, v in zip(ids, _display(tokenizer, ids), vals)]


def write_explain_artifact(result: dict, path: str | Path) -> Path:
    """Write an explain (or highlight) result as JSON, atomically."""
    return write_atomic(Path(path), json.dumps(result, indent=2, ensure_ascii=False))


def explain_table(result: dict, tokens: int = 6):
    """A rich Table: one row per direction with σ, promoted and demoted tokens."""
    from rich.table import Table

    table = Table(title=f"steer '{result['steer_name']}': top {result['k']} singular directions "
                        f"(‖W‖_F = {result['frobenius_norm']:.3g}, ε = {result['epsilon']:g})")
    table.add_column("#", justify="right")
    table.add_column("σ", justify="right")
    table.add_column("energy", justify="right")
    table.add_column("promoted at +s", style="green")
    table.add_column("demoted at +s", style="red")

    def fmt(xs):
        return " ".join(repr(x["token"].strip() or x["token"])[1:-1] for x in xs[:tokens])

    if result.get("overall"):
        o = result["overall"]
        table.add_row("all", "", "", fmt(o["promoted"]), fmt(o["demoted"]), end_section=True)
    for d in result["directions"]:
        table.add_row(str(d["index"]), f"{d['singular_value']:.3g}", f"{d['energy']:.1%}",
                      fmt(d["promoted"]), fmt(d["demoted"]))
    return table


# --------------------------------------------------------------------------------------------- highlight
@torch.no_grad()
def token_evidence(lm: LoadedLM, steer: Steer, text: str, strength: float = 1.0, name: str | None = None,
                   prepend_bos: bool = True) -> dict[str, Any]:
    """Per-token log p(+s) − log p(−s) for ``text`` (one body pass; two output projections)."""
    steer.check_model(lm)
    if not text or not text.strip():
        raise ValueError("highlight needs a non-empty text")
    if not strength or strength != strength:
        raise ValueError(f"strength must be a non-zero number, got {strength}")
    name = name or primary_name(steer)
    if name not in steer.names:
        raise ValueError(f"unknown steer name {name!r}; this steer has {steer.names}")
    tok = lm.tokenizer
    enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    bos = getattr(tok, "bos_token_id", None)
    if prepend_bos and bos is not None and (not ids or ids[0] != bos):
        ids, offsets = [bos] + ids, [(0, 0)] + offsets
    if len(ids) < 2:
        raise ValueError("the text is a single token with nothing before it: nothing to score")
    dev = lm.device
    h = lm.body(input_ids=torch.tensor([ids], device=dev)).last_hidden_state[0].float()  # (T, d)
    steer = steer.to(dev)
    head = lm.output_embeddings
    targets = torch.tensor(ids[1:], device=dev)
    logps = []
    for sign in (1.0, -1.0):
        v = steer.values_tensor({name: sign * float(strength)}).to(dev)
        hs = steer.apply(h[:-1], v).to(head.weight.dtype)
        logits = head(hs).float()
        logps.append(torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0])
    ev = (logps[0] - logps[1]).cpu()
    special = set(getattr(tok, "all_special_ids", []) or [])
    tokens = []
    for pos in range(1, len(ids)):
        s, e = offsets[pos]
        is_special = ids[pos] in special
        tokens.append({
            "index": pos - 1,
            "id": ids[pos],
            "text": text[s:e] if not is_special else "",
            "start": int(s), "end": int(e),
            "evidence": 0.0 if is_special else round(float(ev[pos - 1]), 6),
            "logp_pos": round(float(logps[0][pos - 1]), 6),
            "logp_neg": round(float(logps[1][pos - 1]), 6),
        })
    return {"text": text, "steer_name": name, "strength": float(strength), "model": lm.spec, "tokens": tokens}


def best_spans(scores: list[float], top: int = 3) -> list[tuple[int, int, float]]:
    """Greedy non-overlapping max-sum segments: [(start, end_exclusive, sum)], best first, sums > 0 only."""
    n = len(scores)
    used = [False] * n
    spans: list[tuple[int, int, float]] = []
    for _ in range(max(top, 0)):
        best = None
        i = 0
        while i < n:  # Kadane inside each free run
            if used[i]:
                i += 1
                continue
            cur, cur_start = 0.0, i
            while i < n and not used[i]:
                if cur <= 0:
                    cur, cur_start = scores[i], i
                else:
                    cur += scores[i]
                if best is None or cur > best[2]:
                    best = (cur_start, i + 1, cur)
                i += 1
        if best is None or best[2] <= 0:
            break
        spans.append(best)
        for j in range(best[0], best[1]):
            used[j] = True
    return spans


def highlight(lm: LoadedLM, steer: Steer, text: str, strength: float = 1.0, top_spans: int = 3,
              name: str | None = None, prepend_bos: bool = True) -> dict[str, Any]:
    """Token evidence for the +s style in ``text`` and its best ``top_spans`` non-overlapping spans."""
    result = token_evidence(lm, steer, text, strength, name, prepend_bos)
    toks = result["tokens"]
    spans = []
    for a, b, score in best_spans([t["evidence"] for t in toks], top_spans):
        start, end = toks[a]["start"], toks[b - 1]["end"]
        spans.append({"start_token": a, "end_token": b, "start": start, "end": end,
                      "text": text[start:end], "score": round(score, 6)})
    result["spans"] = spans
    result["total_evidence"] = round(sum(t["evidence"] for t in toks), 6)
    return result


def _colour(ev: float, scale: float) -> tuple[int, int, int]:
    a = min(abs(ev) / scale, 1.0) if scale > 0 else 0.0
    if ev >= 0:
        return (int(255 - 155 * a), 255, int(255 - 155 * a))
    return (255, int(255 - 155 * a), int(255 - 155 * a))


def render_html(result: dict) -> str:
    """A self-contained HTML page: tokens tinted green (carry +s) or red (carry −s), spans boxed."""
    text, toks = result["text"], result["tokens"]
    scale = max((abs(t["evidence"]) for t in toks), default=0.0)
    in_span = {}
    for rank, sp in enumerate(result.get("spans", [])):
        for j in range(sp["start_token"], sp["end_token"]):
            in_span[j] = rank
    parts, cursor = [], 0
    for t in toks:
        if t["start"] > cursor:
            parts.append(html.escape(text[cursor : t["start"]]))
        if t["end"] <= cursor and t["start"] < cursor:
            continue
        r, g, b = _colour(t["evidence"], scale)
        cls = f' class="span span{in_span[t["index"]]}"' if t["index"] in in_span else ""
        parts.append(f'<span{cls} style="background: rgb({r},{g},{b})" title="{t["evidence"]:+.3f} nats">'
                     f'{html.escape(text[max(t["start"], cursor) : t["end"]])}</span>')
        cursor = max(cursor, t["end"])
    parts.append(html.escape(text[cursor:]))
    rows = "".join(f"<li><b>{html.escape(sp['text'])}</b> ({sp['score']:+.3f} nats)</li>"
                   for sp in result.get("spans", []))
    title = f"steer '{html.escape(result['steer_name'])}' at ±{result['strength']:g}"
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>" + title + "</title><style>"
        "body{font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.8}"
        ".text{font-size:1.15em;white-space:pre-wrap}.span{outline:2px solid #2a7;border-radius:3px}"
        "</style></head><body><h2>" + title + "</h2>"
        "<p>green: more likely under +s (carries the +s style); red: more likely under −s. "
        "Hover a token for log p(+s) − log p(−s).</p>"
        '<div class="text">' + "".join(parts) + "</div><h3>top spans</h3><ol>" + rows + "</ol></body></html>"
    )


def render_terminal(result: dict):
    """A rich Text with the same colouring as the HTML (spans underlined)."""
    from rich.text import Text

    text, toks = result["text"], result["tokens"]
    scale = max((abs(t["evidence"]) for t in toks), default=0.0)
    spans = {j for sp in result.get("spans", []) for j in range(sp["start_token"], sp["end_token"])}
    out, cursor = Text(), 0
    for t in toks:
        if t["start"] > cursor:
            out.append(text[cursor : t["start"]])
        piece = text[max(t["start"], cursor) : t["end"]]
        if piece:
            r, g, b = _colour(t["evidence"], scale)
            style = f"black on rgb({r},{g},{b})" + (" underline bold" if t["index"] in spans else "")
            out.append(piece, style=style)
        cursor = max(cursor, t["end"])
    out.append(text[cursor:])
    return out
