"""The recommended strength: the strongest control whose judge perplexity stays within the budget, cross-fitted
over two folds of prompts so no reported number picked its own strength."""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from steer_core.evaluate import metrics as M


def value_over(r: dict, key: str, idx: list[int] | None) -> float:
    """A row's metric as the mean over the prompts ``idx`` of its per-prompt values (``None``: the row's own)."""
    if idx is None:
        return r[key]
    pp = np.asarray(r["per_prompt"]["log_ppl" if key == "ppl" else key], dtype=float)[idx]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.exp(np.nanmean(pp))) if key == "ppl" else float(np.nanmean(pp))


def _choice_table(by_s: dict[float, dict], idx: list[int] | None) -> list[dict]:
    """A one-sided control (toxicity): one candidate per positive strength with its control, perplexity and
    distinct-2 over the prompts ``idx``."""
    return [{"strength": s, "control": value_over(r, "control", idx), "ppl": value_over(r, "ppl", idx),
             "distinct_2": value_over(r, "distinct_2", idx)} for s, r in by_s.items() if s > 0]


def _side_table(by_s: dict[float, dict], idx: list[int] | None, sign: int) -> list[dict]:
    """One side of a two-sided control (sentiment): strength 0 (the base) and every strength of ``sign``, each with
    its positive rate (``control``), the side's goal (``oriented``: the positive rate on the + side, minus it on the
    − side), perplexity and distinct-2 over the prompts ``idx``."""
    out = []
    for s, r in by_s.items():
        if s == 0 or s * sign > 0:
            c = value_over(r, "control", idx)
            out.append({"strength": s, "control": c, "oriented": sign * c, "ppl": value_over(r, "ppl", idx),
                        "distinct_2": value_over(r, "distinct_2", idx)})
    return out


def _choose_sides(by_s: dict[float, dict], idx: list[int] | None, base_ppl: float, budget: float
                  ) -> tuple[float, float, str]:
    """The + and − strengths of a two-sided control, each side on its own: the strongest control on that side whose
    perplexity stays within the budget (the base, s = 0, when none does better). The swing between them is then the
    largest any in-budget pair gives: the sides do not constrain each other, so one side's higher perplexity cost
    does not cap the other's strength."""
    picks, reasons = [], []
    for sign, name in ((1, "+"), (-1, "−")):
        s, why = M.recommend_strength(_side_table(by_s, idx, sign), "oriented", "ppl", base_ppl, budget)
        picks.append(s)
        reasons.append(f"{name} side: {why}")
    return picks[0], picks[1], "; ".join(reasons)


def base_ppl_over(base: dict, idx: list[int]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.exp(np.nanmean(np.asarray(base["per_prompt"]["log_ppl"], dtype=float)[idx])))


def _prefer_gaining(cands: list[dict], strength: float, key: str, base_control: float, limit: float
                    ) -> tuple[float, str]:
    """Never a strength with zero or negative gain while a larger in-budget strength gains.

    ``gain`` is control minus the base's (toxicity; each side of sentiment includes the base itself, s = 0, so
    its best in-budget choice gains whenever any in-budget strength does). The choice of
    :func:`M.recommend_strength` (the best control within budget) satisfies this whenever its inputs agree; the rule
    makes it explicit, so no future tie-break, fallback or noisy table can park the recommendation on a strength
    where the steer does nothing. Returns the (possibly replaced) strength and a note ("" if kept)."""
    chosen = next((c for c in cands if c["strength"] == strength), None)
    if chosen is None or chosen[key] - base_control > 0:
        return strength, ""
    better = [c for c in cands if c["strength"] > strength and math.isfinite(c["ppl"]) and c["ppl"] <= limit
              and c[key] - base_control > 0]
    if not better:
        return strength, ""
    pick = max(better, key=lambda c: (c[key], -c["strength"]))
    return pick["strength"], (f"; strength {strength:g} gains {chosen[key] - base_control:+.3g} over the base, so the "
                              f"larger in-budget {pick['strength']:g} (gain {pick[key] - base_control:+.3g}) is "
                              f"recommended instead")


def _choose(by_s: dict[float, dict], base: dict, control: str, budget: float, idx: list[int] | None
            ) -> tuple[float, float | None, str]:
    """(strength, strength_minus or None, reason) chosen on the prompts ``idx`` (None: all)."""
    base_ppl = base["ppl"] if idx is None else base_ppl_over(base, idx)
    if control == "sentiment":
        return _choose_sides(by_s, idx, base_ppl, budget)
    table = _choice_table(by_s, idx)
    s, reason = M.recommend_strength(table, "control", "ppl", base_ppl, budget)
    ref = base["control"] if idx is None else float(np.nanmean(np.asarray(base["per_prompt"]["control"],
                                                                            dtype=float)[idx]))
    s, note = _prefer_gaining(table, s, "control", ref, (1.0 + budget) * base_ppl)
    return s, None, reason + note


def _cross_fit(by_s: dict[float, dict], base: dict, control: str, budget: float, folds: Sequence[int]) -> dict:
    """Choose the strength(s) on one fold of prompts and read every prompt's values at the strength(s) chosen on
    the other fold: per-prompt control and gain that were never used to pick their own strength."""
    n = len(folds)
    cols = {k: [math.nan] * n for k in ("control", "gain", "log_ppl_plus", "log_ppl_minus", "d2_plus", "d2_minus",
                                        "plus", "minus", "toxicity_probability")}
    base_pp = base["per_prompt"]
    fold_docs = []
    for k in sorted(set(folds)):
        report = [i for i in range(n) if folds[i] == k]
        choose = [i for i in range(n) if folds[i] != k]
        s, s_minus, _ = _choose(by_s, base, control, budget, choose)
        fold = {"fold": k, "reported_on": report, "strength_chosen_on_other_fold": s}
        if s_minus is not None:
            fold["strength_minus_chosen_on_other_fold"] = s_minus
        fold_docs.append(fold)
        plus = by_s[s]["per_prompt"]
        minus = by_s[s_minus]["per_prompt"] if s_minus is not None else None
        for i in report:
            if minus is not None:
                sw = plus["control"][i] - minus["control"][i]
                cols["control"][i] = cols["gain"][i] = sw
                cols["plus"][i], cols["minus"][i] = plus["control"][i], minus["control"][i]
                cols["log_ppl_minus"][i], cols["d2_minus"][i] = minus["log_ppl"][i], minus["distinct_2"][i]
            else:
                cols["control"][i] = plus["control"][i]
                cols["gain"][i] = plus["control"][i] - base_pp["control"][i]
                cols["toxicity_probability"][i] = plus.get("toxicity_probability", [math.nan] * n)[i]
            cols["log_ppl_plus"][i], cols["d2_plus"][i] = plus["log_ppl"][i], plus["distinct_2"][i]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = {k: float(np.nanmean(v)) for k, v in cols.items()}
    base_ppl = base_ppl_over(base, list(range(n)))
    ppl = math.exp(mean["log_ppl_plus"])
    d2 = mean["d2_plus"]
    if control == "sentiment":
        ppl, d2 = max(ppl, math.exp(mean["log_ppl_minus"])), min(d2, mean["d2_minus"])
    out = {"control": mean["control"], "gain": mean["gain"], "ppl_increase": ppl / base_ppl - 1.0, "distinct_2": d2}
    base_lp = np.asarray(base_pp["log_ppl"], dtype=float)
    # per prompt, log(judge perplexity / the base's): the gate's perplexity interval is taken over these
    per_prompt = {"control": cols["control"], "gain": cols["gain"],
                  "log_ppl_ratio_plus": (np.asarray(cols["log_ppl_plus"]) - base_lp).tolist()}
    if control == "sentiment":
        out.update(swing=mean["control"], positive_rate_plus=mean["plus"], positive_rate_minus=mean["minus"])
        per_prompt.update(positive_rate_plus=cols["plus"], positive_rate_minus=cols["minus"],
                          log_ppl_ratio_minus=(np.asarray(cols["log_ppl_minus"]) - base_lp).tolist())
    else:
        out["toxicity_probability"] = mean["toxicity_probability"]
    out["per_prompt"] = per_prompt
    out["split"] = {"method": "2-fold cross-fitting: each fold's numbers are read at the strength(s) chosen on the "
                              "other fold (folds by SHA-256 of the prompt text)", "folds": fold_docs}
    return out


def recommend(rows: list[dict], base: dict, control: str, budget: float,
              folds: Sequence[int] | None = None) -> dict:
    """The strength with the strongest control whose judge perplexity stays within (1 + budget) × base.

    Sentiment is two-sided and each side is chosen on its own (:func:`_choose_sides`): ``strength`` (≥ 0) is the
    + side's, ``strength_minus`` (≤ 0) the − side's, each the strongest control on its side within budget (0, the
    base, when none helps), and the swing is the positive rate at ``strength`` minus at ``strength_minus``.
    Toxicity is one-sided (+ = cleaner).

    ``folds`` (one 0/1 per prompt, :func:`split_folds`) makes the reported numbers honest: the strengths are still
    the choice on all prompts (the ones to deploy), but ``control``, ``gain``, ``ppl_increase``, ``distinct_2`` (and
    ``per_prompt``, what the gate reads) are cross-fitted: every prompt is read at the strength(s) chosen on the
    other fold, so no number is reported on the samples that picked its strength (no winner's curse). ``split``
    says which prompts chose and which reported; ``in_sample`` keeps the optimistic all-prompt numbers.
    Without ``folds`` (or per-prompt data in the rows) everything is in-sample.
    """
    by_s = {r["strength"]: r for r in rows}
    if 0.0 not in by_s:
        by_s[0.0] = base
    if control != "sentiment" and not _choice_table(by_s, None):
        return {"strength": 0.0, "reason": "no positive strength was evaluated", "control": 0.0, "gain": 0.0,
                "ppl_increase": 0.0, "distinct_2": base["distinct_2"]}
    strength, minus, reason = _choose(by_s, base, control, budget, None)
    plus_row = by_s[strength]
    if control == "sentiment":
        minus_row = by_s[minus]
        swing = plus_row["control"] - minus_row["control"]
        out = {"strength": strength, "strength_minus": minus, "reason": reason, "control": swing, "swing": swing,
               "gain": swing, "ppl_increase": max(plus_row["ppl"], minus_row["ppl"]) / base["ppl"] - 1.0,
               "distinct_2": min(plus_row["distinct_2"], minus_row["distinct_2"]),
               "positive_rate_plus": plus_row["control"], "positive_rate_minus": minus_row["control"]}
    else:
        out = {"strength": strength, "reason": reason, "control": plus_row["control"],
               "ppl_increase": plus_row["ppl"] / base["ppl"] - 1.0, "distinct_2": plus_row["distinct_2"],
               "gain": plus_row["control"] - base["control"],
               "toxicity_probability": plus_row["toxicity_probability"],
               "base_toxicity_probability": base["toxicity_probability"]}
    has_pp = all("per_prompt" in r for r in [*rows, base])
    if folds is None or not has_pp or len(set(folds)) < 2:
        return out
    out["in_sample"] = {k: out[k] for k in ("control", "gain", "ppl_increase", "distinct_2")}
    honest = _cross_fit(by_s, base, control, budget, folds)
    out.update(honest)
    f0, f1 = honest["split"]["folds"]

    def at(f: dict) -> str:
        s_minus = f.get("strength_minus_chosen_on_other_fold")
        return f"{f['strength_chosen_on_other_fold']:g}" + ("" if s_minus is None else f"/{s_minus:g}")

    out["reason"] = (f"{reason}. Reported numbers are cross-fitted: fold 0 ({len(f0['reported_on'])} prompts) is "
                     f"read at strength {at(f0)}, chosen on fold 1, and fold 1 ({len(f1['reported_on'])} prompts) at "
                     f"{at(f1)}, chosen on fold 0 (in-sample the control would read {out['in_sample']['control']:.3f}, "
                     f"cross-fitted {out['control']:.3f})")
    return out

