"""Move a steer from one LM to another through their output embeddings (different tokenizers allowed).

Derivation. Let E_s (V_s×d_s) and E_d (V_d×d_d) be the two output embeddings, with rows matched on the N tokens both
vocabularies share (same decoded string; special tokens and ambiguous strings left out), and let μ_s, μ_d be
their mean rows. Fit, by least squares on the centred rows,

    E_s − 1μ_s ≈ (E_d − 1μ_d) A        (A: d_d×d_s)
    E_d − 1μ_d ≈ (E_s − 1μ_s) C        (C: d_s×d_d)

For a token t, e_s,t·h_s ≈ μ_s·h_s + (e_d,t − μ_d)·(A h_s) = e_d,t·(A h_s) + [μ_s·h_s − μ_d·A h_s]. The bracket
does not depend on t, so (the softmax being shift invariant) a source hidden state h_s acts like the target
hidden state A h_s; symmetrically a target h_d acts like the source state C h_d. The source steer maps
h_s → h_s + ε W h_s; carried over, a target state h_d is read as h_s = C h_d, steered, and mapped back by A:

    h_d → A (C h_d + ε W C h_d) ≈ h_d + ε (A W C) h_d,   so   W' = A W C   (d_d×d_d), ε unchanged.

Centring is what absorbs the bias between the two spaces (a shared offset of every embedding only shifts all
logits together). For E_d = E_s Q with Q orthogonal this gives A = Qᵀ, C = Q and W' = Qᵀ W Q (the issue's
Hᵀ W H); for identical models W' = W exactly. A low-rank steer stays low rank: W = P Bᵀ ↦ (A P)(Cᵀ B)ᵀ.

Fit quality: R² of each column (each target dimension for C, each source dimension for A); mean R² is reported.
Strength does not transfer between models (see notes): recalibrate it on the target.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from steer_core.model.lm import LoadedLM
from steer_core.model.steer import Steer


def _token_table(tokenizer, vocab_rows: int) -> dict[str, int]:
    """decoded string → id for the non-special tokens whose decoded string is unique in this vocabulary."""
    n = min(vocab_rows, len(tokenizer))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special |= {i for i, t in added.items() if getattr(t, "special", False)}
    strings = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)
    raw = tokenizer.convert_ids_to_tokens(list(range(n)))
    # SentencePiece tokenizers may drop the leading space of a lone '▁word' when decoding: put it back, so that
    # ' word' (word start) never matches 'word' (inside a word) across tokenizers
    strings = [" " + s if isinstance(r, str) and r.startswith("▁") and not s.startswith(" ") else s
               for s, r in zip(strings, raw)]
    table: dict[str, int] = {}
    dup: set[str] = set()
    for i, s in enumerate(strings):
        if i in special or not s or "\ufffd" in s:
            continue
        if s in table:
            dup.add(s)
        else:
            table[s] = i
    for s in dup:
        del table[s]
    return table


def shared_tokens(src_tok, src_rows: int, dst_tok, dst_rows: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Ids (src, dst) of the tokens both vocabularies hold, matched on their exact decoded string."""
    a, b = _token_table(src_tok, src_rows), _token_table(dst_tok, dst_rows)
    common = sorted(set(a) & set(b), key=lambda s: a[s])
    return (torch.tensor([a[s] for s in common], dtype=torch.long),
            torch.tensor([b[s] for s in common], dtype=torch.long), common)


def _lstsq(X: torch.Tensor, Y: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_M ‖X M − Y‖² + ridge‖M‖² (float64)."""
    if ridge > 0:
        G = X.T @ X
        G += ridge * torch.eye(G.shape[0], dtype=G.dtype)
        return torch.linalg.solve(G, X.T @ Y)
    return torch.linalg.lstsq(X, Y, driver="gelsd").solution


def _r2(X: torch.Tensor, M: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Per-column R² of Y ≈ X M (Y is centred)."""
    res = ((Y - X @ M) ** 2).sum(0)
    tot = (Y**2).sum(0).clamp_min(1e-30)
    return 1.0 - res / tot


@torch.no_grad()
def fit_maps(src_lm: LoadedLM, dst_lm: LoadedLM, ridge: float = 0.0, min_shared: int | None = None) -> dict[str, Any]:
    """The maps A (d_d×d_s: h_s ↦ h_d) and C (d_s×d_d: h_d ↦ h_s) with their fit quality."""
    Es = src_lm.output_embeddings.weight.detach().to("cpu", torch.float64)
    Ed = dst_lm.output_embeddings.weight.detach().to("cpu", torch.float64)
    si, di, strings = shared_tokens(src_lm.tokenizer, Es.shape[0], dst_lm.tokenizer, Ed.shape[0])
    ds, dd = Es.shape[1], Ed.shape[1]
    need = min_shared if min_shared is not None else max(ds, dd) + 1
    if len(si) < need:
        raise ValueError(f"the two vocabularies share only {len(si)} tokens; a fit over d={max(ds, dd)} "
                         f"dimensions needs at least {need}")
    Xs, Xd = Es[si], Ed[di]
    mu_s, mu_d = Xs.mean(0), Xd.mean(0)
    Xs, Xd = Xs - mu_s, Xd - mu_d
    A = _lstsq(Xd, Xs, ridge)  # Xs ≈ Xd A
    C = _lstsq(Xs, Xd, ridge)  # Xd ≈ Xs C
    r2_src = _r2(Xd, A, Xs)  # per source dimension
    r2_dst = _r2(Xs, C, Xd)  # per target dimension
    # as maps of column vectors: e_d,t·(A h_s) ≈ e_s,t·h_s + const, so h_d = A h_s; likewise h_s = C h_d
    return {"A": A, "C": C,
            "mu_src": mu_s, "mu_dst": mu_d, "shared": len(si), "shared_examples": strings[:20],
            "r2_src_from_dst": r2_src, "r2_dst_from_src": r2_dst,
            "src_vocab": int(Es.shape[0]), "dst_vocab": int(Ed.shape[0])}


@torch.no_grad()
def transfer(steer: Steer, src_lm: LoadedLM, dst_lm: LoadedLM, ridge: float = 0.0) -> tuple[Steer, dict[str, Any]]:
    """The steer carried to ``dst_lm`` (W' = A W C, see the module docstring) and a fit report."""
    steer.check_model(src_lm, "the source model")
    fit = fit_maps(src_lm, dst_lm, ridge)
    A, C = fit["A"], fit["C"]  # A: (d_d, d_s) maps h_s → h_d; C: (d_s, d_d) maps h_d → h_s
    dd = dst_lm.dim
    rank = steer.rank if steer.rank is not None and steer.rank < dd else None
    meta = json.loads(json.dumps(steer.metadata, default=str))
    out = Steer(steer.names, dd, rank, steer.epsilon)
    if steer.rank is not None and rank is not None:
        P = steer.A.detach().to(torch.float64)  # (n, d_s, r)
        B = steer.B.detach().to(torch.float64)
        out.A.copy_(torch.einsum("ij,njr->nir", A, P).float())
        out.B.copy_(torch.einsum("ji,njr->nir", C, B).float())  # Cᵀ B
    else:
        W = steer.matrices().detach().to(torch.float64)
        out.W.copy_(torch.einsum("ij,njk,kl->nil", A, W, C).float())
    r2s, r2d = fit["r2_src_from_dst"], fit["r2_dst_from_src"]
    Wn = steer.matrices().detach().double().flatten(1).norm(dim=1)
    Wn2 = out.matrices().detach().double().flatten(1).norm(dim=1)
    report = {
        "source_model": src_lm.spec, "source_fingerprint": src_lm.fingerprint,
        "target_model": dst_lm.spec, "target_fingerprint": dst_lm.fingerprint,
        "source_dim": steer.dim, "target_dim": dd,
        "source_vocab": fit["src_vocab"], "target_vocab": fit["dst_vocab"],
        "shared_tokens": fit["shared"], "shared_examples": fit["shared_examples"],
        "r2_mean": round(float(r2d.mean()), 6),
        "r2_min": round(float(r2d.min()), 6),
        "r2_back_mean": round(float(r2s.mean()), 6),
        "r2_per_dim": [round(float(x), 5) for x in r2d],
        "r2_back_per_dim": [round(float(x), 5) for x in r2s],
        "norm_ratio": {n: round(float(b / a), 6) if a > 0 else None for n, a, b in zip(steer.names, Wn, Wn2)},
        "ridge": ridge,
        "method": "W' = A W C; A, C least squares between centred output embeddings on shared tokens",
    }
    record = {k: v for k, v in report.items() if k not in ("shared_examples",)}
    meta.setdefault("transfers", []).append(record)
    meta["transfer"] = record
    meta.update(base_fingerprint=dst_lm.fingerprint, base_model=dst_lm.spec, base_name=dst_lm.name,
                transferred_from={"fingerprint": src_lm.fingerprint, "model": src_lm.spec, "name": src_lm.name})
    out.metadata = meta
    return out, report


# --------------------------------------------------------------------------------------------- measured transfer
def _effect_rows(samples: list, control: str, cuts, magnitudes: list[float], n_boot: int, seed: int
                 ) -> list[dict[str, Any]]:
    """Per magnitude m: control at +m, −m and 0 (at the scorer's cut-offs ``cuts``), the effect
    control(+m) − control(−m) with a bootstrap interval over prompts (paired: the same prompts at both signs), and
    the fluency cost of the worse side."""
    import numpy as np

    from steer_core.evaluate import metrics as M
    from steer_core.evaluate.document import by_prompt, per_prompt_metrics

    def per_prompt(strength: float) -> dict[str, np.ndarray]:
        return per_prompt_metrics(by_prompt([s for s in samples if s.strength == strength]), control, cuts)

    base = per_prompt(0.0)
    base_ppl = float(np.exp(np.nanmean(base["log_ppl"])))
    out = []
    for m in magnitudes:
        plus, minus = per_prompt(m), per_prompt(-m)
        diff = plus["control"] - minus["control"]
        ppl_plus = float(np.exp(np.nanmean(plus["log_ppl"])))
        ppl_minus = float(np.exp(np.nanmean(minus["log_ppl"])))
        row = {"strength": m, "effect": float(np.mean(diff)),
               "control_plus": float(np.mean(plus["control"])), "control_minus": float(np.mean(minus["control"])),
               "control_base": float(np.mean(base["control"])),
               "ppl_base": base_ppl, "ppl_plus": ppl_plus, "ppl_minus": ppl_minus,
               "ppl_increase": max(ppl_plus, ppl_minus) / base_ppl - 1.0,
               "distinct_2": float(min(np.mean(plus["distinct_2"]), np.mean(minus["distinct_2"]))),
               "distinct_2_base": float(np.mean(base["distinct_2"]))}
        if n_boot:
            row["effect_ci"] = list(M.bootstrap_ci(diff, n_boot=n_boot, seed=seed))
        out.append(row)
    return out


def measure_transfer(
    src_lm: LoadedLM,
    src_steer: Steer,
    dst_lm: LoadedLM,
    dst_steer: Steer,
    prompts: list[dict],
    cfg,
    *,
    strengths: list[float] | None = None,
    seed: int = 0,
    log=lambda _msg: None,
) -> dict[str, Any]:
    """How much of the source steer's control effect the transferred steer keeps, measured with the harness.

    Both models get the same prompts (dicts with ``set`` and ``prompt``), the same protocol (``cfg``: an
    :class:`~steer_core.config.EvalConfig`; each model is its own judge) and the same strengths ±m (``strengths``,
    default the non-zero magnitudes of ``cfg.strengths``). The *control effect* at m is control(+m) − control(−m):
    the positive-rate swing for sentiment, the drop in average max toxicity (1 − AMT is the control) for
    toxicity. ``kept`` = target effect / source effect, at each m and at the headline m (the largest). A kept
    fraction is only meaningful when the source effect is clearly above zero (see ``effect_ci``).
    """
    from steer_core.evaluate.protocol import System
    from steer_core.evaluate.driver import evaluate
    from steer_core.scorers import cuts_of, get_scorer

    raw = strengths if strengths is not None else cfg.strengths
    mags = sorted({abs(float(s)) for s in raw if float(s) != 0.0})
    if not mags:
        raise ValueError("measure_transfer needs a non-zero strength")
    sweep = sorted({-m for m in mags} | {0.0} | set(mags))
    ecfg = cfg.model_copy(update={"strengths": sweep, "search_steps": 0})  # the effect at these ±m: no search
    cuts = cuts_of(get_scorer(cfg.scorer))
    sides: dict[str, Any] = {}
    for role, lm, steer in (("source", src_lm, src_steer), ("target", dst_lm, dst_steer)):
        log(f"measuring the {role} steer on {lm.name} at ±{mags}")
        t0 = time.perf_counter()
        doc, samples = evaluate(lm, prompts, [System(role, sweep, steer=steer)], ecfg, judge=lm, seed=seed)
        sides[role] = {"model": lm.spec, "name": lm.name, "fingerprint": lm.fingerprint,
                       "seconds": round(time.perf_counter() - t0, 1),
                       "rows": _effect_rows(samples, cfg.control, cuts, mags, cfg.bootstrap, seed)}
    per = []
    for s_row, d_row in zip(sides["source"]["rows"], sides["target"]["rows"]):
        se, de = s_row["effect"], d_row["effect"]
        per.append({"strength": s_row["strength"], "source_effect": se, "target_effect": de,
                    "kept": de / se if se > 0 else None})
    head = per[-1]
    return {
        "control": cfg.control, "scorer": cfg.scorer,
        "effect": "control(+s) - control(-s): " + ("positive-rate swing" if cfg.control == "sentiment"
                                                   else "avg-max-toxicity drop (1 - AMT is the control)"),
        "protocol": {"prompts": len(prompts), "samples": cfg.samples, "max_new_tokens": cfg.max_new_tokens,
                     "top_p": cfg.top_p, "temperature": cfg.temperature, "seed": seed, "strengths": sweep},
        "source": sides["source"], "target": sides["target"], "per_strength": per,
        "strength": head["strength"], "source_effect": head["source_effect"],
        "target_effect": head["target_effect"], "kept": head["kept"],
        "best_target": max(per, key=lambda r: r["target_effect"]),
    }
