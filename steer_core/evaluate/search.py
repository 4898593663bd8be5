"""The strength search after the grid: each round bisects the budget edge of every side, as seen by every chooser.

Perplexity grows with |s|, so "the strongest control within the perplexity budget" is, to first order, "the
largest |s| whose perplexity increase stays within the budget". Every probe reuses the same paired random numbers
(each row's uniforms are keyed by (seed, prompt, sample)), so the difference between two strengths is not drowned
in sampling noise; what noise remains is absorbed by fitting perplexity as non-decreasing in |s| (:func:`isotonic`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Mapping, Sequence

from steer_core.config import EvalConfig
from steer_core.evaluate.metrics import isotonic
from steer_core.evaluate.protocol import System, split_folds
from steer_core.evaluate.recommend import side_candidates


def next_magnitude(
    candidates: Sequence[Mapping[str, float]],
    limit: float,
    *,
    rel_tol: float = 0.1,
    grow: float = 2.0,
    max_strength: float = 64.0,
) -> float | None:
    """The next magnitude to evaluate to locate the budget edge, or None when it is located well enough.

    ``candidates`` are the magnitudes already evaluated (``{"strength": m > 0, "ppl": p}``, ``p`` the worse side's
    perplexity for a two-sided control); ``limit`` is the allowed perplexity. The perplexities are first fitted
    as non-decreasing in the magnitude (:func:`isotonic`: at a few dozen samples per strength a single reading is
    noisy), which splits the magnitudes into an in-budget prefix and an over-budget rest. Between the largest
    in-budget one (or 0) and the smallest over-budget one: the midpoint, unless that bracket is already narrower than
    ``rel_tol`` × its upper end. When every magnitude is in budget: ``grow`` × the largest, up to ``max_strength``.
    """
    pts = sorted((float(c["strength"]), float(c["ppl"])) for c in candidates if float(c["strength"]) > 0)
    if not pts:
        return None
    fitted = isotonic([p if math.isfinite(p) else math.inf for _, p in pts])
    inside = [m for (m, _), f in zip(pts, fitted) if f <= limit]
    over = [m for (m, _), f in zip(pts, fitted) if f > limit]
    lo = inside[-1] if inside else 0.0
    if not over:
        nxt = min(lo * grow, max_strength)
        return nxt if nxt > lo else None
    hi = over[0]
    if hi - lo <= rel_tol * hi:
        return None
    return round((lo + hi) / 2, 6)


def search_probes(doc: dict, systems: Sequence[System], cfg: EvalConfig, folds: Sequence[int]) -> list[list[float]]:
    """The strengths one round of the strength search adds for each system: on each side (both for sentiment, whose
    sides are chosen separately), the next magnitude towards that side's budget edge (:func:`next_magnitude`), the
    edge being where the upper end of the fluency cost's interval meets the budget, as seen by every chooser the
    recommendation uses (all prompts; with cross-fitting, each fold's choosing prompts). Only strengths not evaluated
    yet; an empty list: that system's edges are located."""
    choosers: list[list[int] | None] = [None]
    if len(set(folds)) > 1:
        choosers += [[i for i, f in enumerate(folds) if f != k] for k in sorted(set(folds))]
    signs = (1, -1) if cfg.control == "sentiment" else (1,)
    out = []
    for system in systems:
        by_s = {r["strength"]: r for r in doc["systems"][system.name]["rows"]}
        new: set[float] = set()
        for idx in choosers:
            for sign in signs:
                side = [{"strength": abs(c["strength"]), "ppl": 1.0 + c["fluency_high"]}
                        for c in side_candidates(by_s, doc["base"], idx, cfg.fluency, cfg.confidence, sign,
                                                 as_if=len(folds) if idx is not None else None)
                        if c["strength"] != 0]
                m = next_magnitude(side, 1.0 + cfg.ppl_budget, rel_tol=cfg.search_tolerance)
                if m is not None and sign * m not in by_s:
                    new.add(sign * m)
        out.append(sorted(new))
    return out


def search_strengths(
    systems: Sequence[System],
    cfg: EvalConfig,
    prompts: Sequence[dict],
    doc: dict,
    sample_more: Callable[[list[System]], None],
    redo: Callable[[list[System]], dict],
    log: Callable[[str], None] = lambda _msg: None,
) -> tuple[list[System], dict]:
    """Up to ``cfg.search_steps`` rounds of strength search after the grid: each round samples the systems at
    :func:`search_probes` (``sample_more(systems at the new strengths only)``), then recomputes the document over
    every strength evaluated so far (``redo(systems with all their strengths)``). The recommendation is then
    chosen among grid and probes alike, and cross-fitted as before: each fold's probes were placed by the other
    fold's prompts, so no reported number picked its own strength. Returns the systems (grid + probes) and the
    document, each system's ``search`` saying what was added. The grid stays, for the plots."""
    systems = list(systems)
    folds = split_folds([p["prompt"] for p in prompts])
    added: list[list[float]] = [[] for _ in systems]
    rounds = 0
    for _ in range(cfg.search_steps):
        more = search_probes(doc, systems, cfg, folds)
        if not any(more):
            break
        rounds += 1
        log(f"strength search, round {rounds}: " + "; ".join(f"{s.name} at {m}" for s, m in zip(systems, more) if m))
        sample_more([replace(s, strengths=m) for s, m in zip(systems, more) if m])
        systems = [replace(s, strengths=[*s.strengths, *m]) for s, m in zip(systems, more)]
        added = [a + m for a, m in zip(added, more)]
        doc = redo(systems)
    for system, probes in zip(systems, added):
        doc["systems"][system.name]["search"] = {
            "method": "bisection of the budget edge between evaluated strengths (the fluency cost's upper end fitted "
                      "non-decreasing in |s|), per chooser (all prompts, each fold's choosing prompts)",
            "rounds": rounds, "max_rounds": cfg.search_steps, "tolerance": cfg.search_tolerance,
            "probes": probes}
    return systems, doc

