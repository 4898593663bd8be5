"""The recommended strength: the strongest control whose fluency cost is within the budget *with confidence*, and
the numbers reported at it, cross-fitted over two folds of prompts so that no reported number picked its own
strength.

A strength is within budget when the upper end of the central ``confidence`` interval (over prompts) of its fluency
cost, fitted non-decreasing in |s|, is at most the budget: harm must be shown absent, as control must be shown
present. The recommendation is the strongest strength within budget (control grows with |s|; the best raw control
reading is mostly noise), or the base on a sentiment side where no such strength shows control above it. Each fold
of cross-fitting chooses by the same rule at the width of the interval over *all* prompts, the rule that chose the
deployed strength, so a fold is not timider than the deployment it stands for. The fluency cost is, per prompt, a
log ratio against the base model on the same prompt (``fluency``):

- ``text``: the judge perplexity of the steered samples over that of the base samples;
- ``paired``: the steer's per-step cost along its own samples, the base model's expected NLL of each step's
  sampling distribution minus that of its own, at the same context (``Sample.cost``; 0 for the base model). It
  prices each choice the steer makes and leaves out where the text went, so it has far less noise.

Each row's per-prompt values (``row["per_prompt"]``) are what everything here reads. Independent judges
(``judges``) are read at the very strengths the labeller chose, so they confirm the labeller's choice rather than
make their own.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from steer_core.evaluate import metrics as M
from steer_core.evaluate.metrics import isotonic

#: per-prompt columns of a side at the recommended strength, in the cross-fitted document
FLUENCY_KEYS = {1: "log_fluency_plus", -1: "log_fluency_minus"}


def _mean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))


def value_over(r: dict, key: str, idx: list[int] | None) -> float:
    """A row's metric as the mean over the prompts ``idx`` of its per-prompt values (``None``: the row's own)."""
    if idx is None:
        return r[key]
    pp = np.asarray(r["per_prompt"]["log_ppl" if key == "ppl" else key], dtype=float)[idx]
    return float(np.exp(_mean(pp))) if key == "ppl" else _mean(pp)


def fluency_logs(r: dict, base: dict, idx: list[int] | None, fluency: str) -> np.ndarray:
    """Per prompt (``idx``; None: all), the row's log fluency cost against the base model on that prompt."""
    if fluency == "paired":
        vals = np.asarray(r["per_prompt"].get("log_cost", [math.nan] * len(base["per_prompt"]["log_ppl"])),
                          dtype=float)
        if r is base:
            vals = np.zeros_like(vals)
    else:
        vals = np.asarray(r["per_prompt"]["log_ppl"], dtype=float) - np.asarray(base["per_prompt"]["log_ppl"],
                                                                                 dtype=float)
    return vals if idx is None else vals[idx]


def interval(logs: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """(increase, low, high) of a fluency cost from its per-prompt logs: exp of the mean and of the ends of the
    paired interval over prompts (``metrics.paired_interval``), minus 1. Prompts without a finite value drop out;
    with fewer than two left nothing is known (NaN)."""
    finite = logs[np.isfinite(logs)]
    if finite.size < 2:
        return math.nan, math.nan, math.nan
    mean, low, high = M.paired_interval(finite, confidence)
    return math.expm1(mean), math.expm1(low), math.expm1(high)


def as_if_all(inc: float, high: float, n_read: int, n_all: int | None) -> float:
    """The upper end ``high`` of a cost read on ``n_read`` prompts, its half-width (on the log scale) scaled by
    √(n_read / n_all): the width the same spread has over ``n_all`` prompts. A fold that chooses for the deployed
    rule (chosen on all prompts) applies that rule's confidence, not a half-sized sample's wider one, which would
    make every fold's choice timider than the strength deployed. (The expanded interval's small-sample factor is
    kept at the fold's size, so the scaled end stays a little wider than the all-prompt one: on the side of caution.)
    ``n_all`` None or no larger than ``n_read``: ``high`` as it is."""
    if n_all is None or n_all <= n_read or not (math.isfinite(inc) and math.isfinite(high)):
        return high
    mid = math.log1p(inc)
    return math.expm1(mid + (math.log1p(high) - mid) * math.sqrt(n_read / n_all))


def _candidate(s: float, r: dict, base: dict, idx: list[int] | None, fluency: str, confidence: float,
               sign: int = 1, as_if: int | None = None) -> dict:
    """One strength as a choice: its control over the prompts ``idx``, oriented to the side ``sign``, and its
    fluency cost's increase and upper end (``as_if``: the upper end at the width of that many prompts,
    :func:`as_if_all`)."""
    c = value_over(r, "control", idx)
    if r is base or s == 0:
        inc = high = 0.0
    elif "per_prompt" in r:
        logs = fluency_logs(r, base, idx, fluency)
        inc, _, high = interval(logs, confidence)
        high = as_if_all(inc, high, int(np.isfinite(logs).sum()), as_if)
    else:  # a row without per-prompt values (a summary): only its point estimate is known
        inc = high = r["ppl"] / base["ppl"] - 1.0
    return {"strength": s, "control": c, "oriented": sign * c, "fluency": inc, "fluency_high": high,
            "distinct_2": value_over(r, "distinct_2", idx)}


def within_edge(cands: list[dict], budget: float) -> list[dict]:
    """The candidates inside the budget edge: each one's fluency upper end fitted non-decreasing in |s|
    (:func:`metrics.isotonic`, as the strength search locates the edge), those whose fitted end is within ``budget``,
    in order of |s|.

    Cost grows with the strength; at a few dozen samples one strength's reading moves by points either way, so a
    raw reading would let a lucky strength past the edge in and a noisy one inside it out. A strength whose cost is
    unknown (no finite reading) closes the edge there."""
    ordered = sorted(cands, key=lambda c: abs(c["strength"]))
    fitted = isotonic([c["fluency_high"] if math.isfinite(c["fluency_high"]) else math.inf for c in ordered])
    return [c for c, high in zip(ordered, fitted) if high <= budget + 1e-12 and math.isfinite(c["oriented"])]


def strongest_within(cands: list[dict], budget: float, what: str, confidence: float) -> tuple[float, str]:
    """The strongest candidate inside the budget edge (:func:`within_edge`); the mildest strength when none is, and
    the reason says so. Among a side's choices that include the base (s = 0): the base, when no strength inside the
    edge shows control above it once control is fitted non-decreasing in |s| (a side that goes nowhere, or the
    wrong way, is not steered).

    The strongest, not the best raw control reading: a steer's control grows with |s| while its text stays fluent,
    which the budget guarantees, and at a few dozen samples a milder strength often reads a few lucky points above
    a stronger one that controls more. Choosing by the noisiest number made every chooser timid, a fold of
    cross-fitting most of all."""
    ok = within_edge(cands, budget)
    if not ok:
        mild = min(cands, key=lambda c: abs(c["strength"]))
        return mild["strength"], (f"no strength's {what} cost is within +{budget:.0%} at {confidence:.0%} confidence; "
                                  f"falling back to the mildest, {mild['strength']:g}")
    best = ok[-1]
    if ok[0]["strength"] == 0 and best is not ok[0]:
        fitted = isotonic([c["oriented"] for c in ok])
        if fitted[-1] <= fitted[0]:
            return 0.0, (f"the base: no strength within +{budget:.0%} shows control above it ({len(ok) - 1} of "
                         f"{len(cands) - 1} strengths are within; control fitted non-decreasing in |s|)")
    return best["strength"], (f"strength {best['strength']:g}: control {best['control']:.3f}, the strongest whose "
                              f"{what} cost {best['fluency']:+.1%} has its {confidence:.0%} upper end "
                              f"{best['fluency_high']:+.1%} within +{budget:.0%} (fitted non-decreasing in |s|: "
                              f"{len(ok)} of {len(cands)} strengths are)")


def base_ppl_over(base: dict, idx: list[int]) -> float:
    return float(np.exp(_mean(np.asarray(base["per_prompt"]["log_ppl"], dtype=float)[idx])))


def side_candidates(by_s: dict[float, dict], base: dict, idx: list[int] | None, fluency: str, confidence: float,
                    sign: int, as_if: int | None = None) -> list[dict]:
    """The choices on one side: the base (s = 0) and every strength of sign ``sign``."""
    return [_candidate(s, r, base, idx, fluency, confidence, sign, as_if) for s, r in sorted(by_s.items())
            if s == 0 or s * sign > 0]


def choose(by_s: dict[float, dict], base: dict, control: str, budget: float, idx: list[int] | None,
           fluency: str = "text", confidence: float = 0.95, as_if: int | None = None) -> tuple[float, float | None, str]:
    """(strength, strength_minus or None, reason) chosen on the prompts ``idx`` (None: all), with each cost's upper
    end at the width of ``as_if`` prompts (:func:`as_if_all`; None: of ``idx``'s own). Sentiment's sides are chosen
    each on its own: one side's higher cost does not cap the other's strength."""
    what = "paired per-step" if fluency == "paired" else "judge-perplexity"
    if control == "sentiment":
        picks, reasons = [], []
        for sign, name in ((1, "+"), (-1, "−")):
            s, why = strongest_within(side_candidates(by_s, base, idx, fluency, confidence, sign, as_if), budget,
                                      what, confidence)
            picks.append(s)
            reasons.append(f"{name} side: {why}")
        return picks[0], picks[1], "; ".join(reasons)
    cands = [c for c in side_candidates(by_s, base, idx, fluency, confidence, 1, as_if) if c["strength"] > 0]
    s, reason = strongest_within(cands, budget, what, confidence)
    return s, None, reason


def strength_interval(by_s: dict[float, dict], base: dict, control: str, budget: float, fluency: str,
                      confidence: float, resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """How far the protocol's own noise moves the choice: the rule (:func:`choose`) re-run on ``resamples``
    bootstrap draws of the prompts, and the central ``confidence`` range of the strengths it chose (per side for
    sentiment). Two trainings of one recipe whose strengths differ within this range differ by no more than the
    protocol can tell apart; a strength outside it is a different steer, not noise.

    Not part of every run's document: each draw re-runs every candidate's bootstrap interval (seconds on a CPU);
    ``bench/studies/steer_variants.py`` reads it from a document's rows (``by_s``: strength → row, as
    :func:`recommend` builds it)."""
    n = len(base["per_prompt"]["control"])
    rng = np.random.default_rng(seed)
    plus, minus = [], []
    for _ in range(resamples):
        s, s_minus, _ = choose(by_s, base, control, budget, rng.integers(0, n, n).tolist(), fluency, confidence)
        plus.append(s)
        minus.append(s_minus)
    tail = (1.0 - confidence) / 2

    def ends(xs: list[float]) -> list[float]:
        return [float(np.quantile(xs, q, method="inverted_cdf")) for q in (tail, 1.0 - tail)]

    out: dict[str, Any] = {"plus": ends(plus), "resamples": resamples, "confidence": confidence,
                           "method": "the choice re-run on bootstrap draws of the prompts"}
    if control == "sentiment":
        out["minus"] = ends(minus)
    return out


def _judge_columns(row: dict, name: str) -> dict[str, list[float]]:
    return ((row.get("per_prompt") or {}).get("judges") or {}).get(name) or {}


def _read_at(picks: list[tuple[list[int], float, float | None]], by_s: dict[float, dict], base: dict, control: str,
             fluency: str, judges: Sequence[str], n: int) -> dict[str, Any]:
    """Every prompt's values at the strength(s) picked for it: ``picks`` = [(prompts, strength, strength_minus)].
    Returns per-prompt columns (the gate reads these) and their means."""
    cols: dict[str, list[float]] = {k: [math.nan] * n for k in (
        "control", "gain", "plus", "minus", "toxicity_probability", "log_ppl_ratio_plus", "log_ppl_ratio_minus",
        "log_fluency_plus", "log_fluency_minus", "d2_plus", "d2_minus")}
    jcols = {name: {k: [math.nan] * n for k in ("control", "gain", "toxicity_probability")} for name in judges}
    base_pp = base["per_prompt"]
    base_lp = np.asarray(base_pp["log_ppl"], dtype=float)
    for report, s, s_minus in picks:
        sides = [(1, by_s[s])] + ([(-1, by_s[s_minus])] if s_minus is not None else [])
        for sign, row in sides:
            pp, tag = row["per_prompt"], "plus" if sign > 0 else "minus"
            logs, text = fluency_logs(row, base, None, fluency), np.asarray(pp["log_ppl"], dtype=float) - base_lp
            for i in report:
                cols[tag][i] = pp["control"][i]
                cols[f"log_ppl_ratio_{tag}"][i] = float(text[i])
                cols[f"log_fluency_{tag}"][i] = float(logs[i])
                cols[f"d2_{tag}"][i] = pp["distinct_2"][i]
        for i in report:
            if s_minus is not None:
                cols["control"][i] = cols["gain"][i] = cols["plus"][i] - cols["minus"][i]
            else:
                cols["control"][i] = cols["plus"][i]
                cols["gain"][i] = cols["plus"][i] - base_pp["control"][i]
                cols["toxicity_probability"][i] = by_s[s]["per_prompt"].get("toxicity_probability", [math.nan] * n)[i]
        for name in judges:
            plus, base_j = _judge_columns(by_s[s], name), _judge_columns(base, name)
            minus = _judge_columns(by_s[s_minus], name) if s_minus is not None else None
            if not plus or not base_j or (s_minus is not None and not minus):
                continue
            for i in report:
                if minus is not None:
                    jcols[name]["control"][i] = jcols[name]["gain"][i] = plus["control"][i] - minus["control"][i]
                else:
                    jcols[name]["control"][i] = plus["control"][i]
                    jcols[name]["gain"][i] = plus["control"][i] - base_j["control"][i]
                    jcols[name]["toxicity_probability"][i] = plus.get("toxicity_probability", [math.nan] * n)[i]
    return {"cols": cols, "judges": jcols}


def _summary(read: dict[str, Any], base: dict, control: str, fluency: str, confidence: float) -> dict[str, Any]:
    """The reported numbers from the per-prompt columns of :func:`_read_at`: control, gain, the worse side's
    judge-perplexity increase and fluency interval, distinct-2, and the independent judges' control and gain."""
    cols = {k: np.asarray(v, dtype=float) for k, v in read["cols"].items()}
    sides = ("plus", "minus") if control == "sentiment" else ("plus",)
    text_inc = max(math.exp(_mean(cols[f"log_ppl_ratio_{t}"])) for t in sides) - 1.0
    intervals = [interval(cols[f"log_fluency_{t}"], confidence) for t in sides]
    worse = max(intervals, key=lambda x: (x[2] if math.isfinite(x[2]) else math.inf))
    out: dict[str, Any] = {
        "control": _mean(cols["control"]), "gain": _mean(cols["gain"]), "ppl_increase": text_inc,
        "distinct_2": min(_mean(cols[f"d2_{t}"]) for t in sides),
        "fluency": {"estimate": fluency, "increase": worse[0], "low": worse[1], "high": worse[2],
                    "confidence": confidence, "side": sides[intervals.index(worse)]},
    }
    if control == "sentiment":
        out.update(swing=out["control"], positive_rate_plus=_mean(cols["plus"]), positive_rate_minus=_mean(cols["minus"]))
    else:
        out["toxicity_probability"] = _mean(cols["toxicity_probability"])
    judges = {}
    for name, jc in read["judges"].items():
        arr = {k: np.asarray(v, dtype=float) for k, v in jc.items()}
        if not np.isfinite(arr["control"]).any():
            continue
        judges[name] = {"control": _mean(arr["control"]), "gain": _mean(arr["gain"])}
        if control != "sentiment":
            judges[name]["toxicity_probability"] = _mean(arr["toxicity_probability"])
    out["judges"] = judges
    return out


def _per_prompt(read: dict[str, Any], control: str) -> dict[str, Any]:
    """The per-prompt columns the gate reads (one value per prompt, in prompt order)."""
    cols = read["cols"]
    out = {"control": cols["control"], "gain": cols["gain"], "log_ppl_ratio_plus": cols["log_ppl_ratio_plus"],
           "log_fluency_plus": cols["log_fluency_plus"]}
    if control == "sentiment":
        out.update(positive_rate_plus=cols["plus"], positive_rate_minus=cols["minus"],
                   log_ppl_ratio_minus=cols["log_ppl_ratio_minus"], log_fluency_minus=cols["log_fluency_minus"])
    out["judges"] = {name: {"control": jc["control"], "gain": jc["gain"]} for name, jc in read["judges"].items()
                     if any(math.isfinite(v) for v in jc["control"])}
    return out


def recommend(rows: list[dict], base: dict, control: str, budget: float, folds: Sequence[int] | None = None, *,
              fluency: str = "text", confidence: float = 0.95, judges: Sequence[str] = ()) -> dict:
    """The strength with the strongest control whose fluency cost is within ``budget`` with ``confidence``.

    Sentiment is two-sided and each side is chosen on its own: ``strength`` (≥ 0) is the + side's,
    ``strength_minus`` (≤ 0) the − side's (0, the base, when none helps), and the swing is the positive rate at
    ``strength`` minus at ``strength_minus``. Toxicity is one-sided (+ = cleaner).

    ``folds`` (one 0/1 per prompt, ``protocol.split_folds``) makes the reported numbers honest: the strengths are
    still the choice on all prompts (the ones to deploy), but ``control``, ``gain``, ``ppl_increase``, ``fluency``,
    ``distinct_2``, ``judges`` (and ``per_prompt``, what the gate reads) are cross-fitted: every prompt is read at
    the strength(s) chosen on the other fold. ``split`` says which prompts chose and which reported; ``in_sample``
    keeps the optimistic all-prompt numbers. Without ``folds`` (or per-prompt data in the rows) everything is
    in-sample, and without per-prompt data the fluency cost is the point estimate of the judge perplexity.
    """
    by_s = {r["strength"]: r for r in rows}
    if 0.0 not in by_s:
        by_s[0.0] = base
    if control != "sentiment" and not any(s > 0 for s in by_s):
        return {"strength": 0.0, "reason": "no positive strength was evaluated", "control": 0.0, "gain": 0.0,
                "ppl_increase": 0.0, "distinct_2": base["distinct_2"]}
    has_pp = all("per_prompt" in r for r in [*rows, base])
    strength, minus, reason = choose(by_s, base, control, budget, None, fluency if has_pp else "text", confidence)
    if not has_pp:
        return _point_summary(by_s, base, control, strength, minus, reason)
    n = len(base["per_prompt"]["control"])
    every = list(range(n))
    in_sample = _summary(_read_at([(every, strength, minus)], by_s, base, control, fluency, judges, n), base, control,
                         fluency, confidence)
    out: dict[str, Any] = {"strength": strength, "reason": reason}
    if minus is not None:
        out["strength_minus"] = minus
    if control != "sentiment":
        out["base_toxicity_probability"] = base["toxicity_probability"]
    if folds is None or len(set(folds)) < 2:
        read = _read_at([(every, strength, minus)], by_s, base, control, fluency, judges, n)
        return {**out, **in_sample, "per_prompt": _per_prompt(read, control)}
    picks, fold_docs = [], []
    for k in sorted(set(folds)):
        report = [i for i in range(n) if folds[i] == k]
        s, s_minus, _ = choose(by_s, base, control, budget, [i for i in range(n) if folds[i] != k], fluency,
                               confidence, as_if=n)
        picks.append((report, s, s_minus))
        fold = {"fold": k, "reported_on": report, "strength_chosen_on_other_fold": s}
        if s_minus is not None:
            fold["strength_minus_chosen_on_other_fold"] = s_minus
        fold_docs.append(fold)
    read = _read_at(picks, by_s, base, control, fluency, judges, n)
    out.update(_summary(read, base, control, fluency, confidence))
    out["per_prompt"] = _per_prompt(read, control)
    out["in_sample"] = {k: in_sample[k] for k in ("control", "gain", "ppl_increase", "distinct_2", "fluency", "judges")}
    out["split"] = {"method": "2-fold cross-fitting: each fold's numbers are read at the strength(s) chosen on the "
                              "other fold (folds by SHA-256 of the prompt text)",
                    "chooser": f"the deployed rule: each fold's cost interval taken at the width of all {n} prompts "
                               "(half-width × √(fold / all))", "folds": fold_docs}
    f0, f1 = fold_docs

    def at(f: dict) -> str:
        s_minus = f.get("strength_minus_chosen_on_other_fold")
        return f"{f['strength_chosen_on_other_fold']:g}" + ("" if s_minus is None else f"/{s_minus:g}")

    out["reason"] = (f"{reason}. Reported numbers are cross-fitted: fold 0 ({len(f0['reported_on'])} prompts) is "
                     f"read at strength {at(f0)}, chosen on fold 1, and fold 1 ({len(f1['reported_on'])} prompts) at "
                     f"{at(f1)}, chosen on fold 0 (in-sample the control would read {in_sample['control']:.3f}, "
                     f"cross-fitted {out['control']:.3f})")
    return out


def _point_summary(by_s: dict[float, dict], base: dict, control: str, strength: float, minus: float | None,
                   reason: str) -> dict:
    """The recommendation from rows without per-prompt values: point estimates at the chosen strength(s)."""
    plus_row = by_s[strength]
    if control == "sentiment":
        minus_row = by_s[minus]
        swing = plus_row["control"] - minus_row["control"]
        return {"strength": strength, "strength_minus": minus, "reason": reason, "control": swing, "swing": swing,
                "gain": swing, "ppl_increase": max(plus_row["ppl"], minus_row["ppl"]) / base["ppl"] - 1.0,
                "distinct_2": min(plus_row["distinct_2"], minus_row["distinct_2"]),
                "positive_rate_plus": plus_row["control"], "positive_rate_minus": minus_row["control"]}
    return {"strength": strength, "reason": reason, "control": plus_row["control"],
            "ppl_increase": plus_row["ppl"] / base["ppl"] - 1.0, "distinct_2": plus_row["distinct_2"],
            "gain": plus_row["control"] - base["control"], "toxicity_probability": plus_row["toxicity_probability"],
            "base_toxicity_probability": base["toxicity_probability"]}
