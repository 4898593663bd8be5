"""Prompts × samples × strengths → one metrics document (the paper's protocol, scaled by parameters).

For each evaluated *system* (the candidate steer, the current champion, the activation-addition baseline) and each
strength of its sweep (0 = the base model is always included), P prompts get K sampled continuations of N new
tokens, generated in batches across prompts, samples and strengths. Each sample gets a control score (sentiment or
toxicity), a judge-LM conditional perplexity, and each prompt's samples a distinct-n; every headline number gets a
bootstrap interval over prompts.

When the judge is the base model itself (the default), it scores the sampled tokens and reads their log-likelihoods
while sampling, with no second forward pass for a steer (``protocol.judge_scores = "sampled tokens"``, or
``"expected per step"``); the ActAdd baseline reads them from an unsteered twin of each row
(``steer_core.generate``). Any other judge re-reads the decoded text (``"re-tokenised text"``).

Schema of the returned document (``metrics/<steer>.json``)::

    {"steer", "control", "scorer", "judge", "protocol": {...},
     "systems": {"candidate"|"champion"|"actadd": {"rows": [ROW, ...], "recommended": REC,
                                                   "prompt_ids": [sha256(prompt)[:12], ...]}},
     "base": ROW at strength 0,
     "headline": {"base_control", "base_ppl", "base_distinct_2", <system>: REC's numbers,
                  "candidate_vs_actadd"?: {"difference", "low", "high", "confidence", "prompts"}}}
    ROW = {"strength", "control", "ppl", "ppl_increase", "distinct_1", "distinct_2", "distinct_3",
           "positive_rate" | "avg_max_toxicity", "toxicity_probability", "mean_toxicity",
           "ci": {metric: [low, high]}, "sets": {prompt_set: {metric: value}},
           "per_prompt": {"prompt_index", "control", "log_ppl", "distinct_2", "toxicity_probability"?: [one per prompt]}}
    REC = {"strength", "reason", "control", "ppl_increase", "distinct_2", "gain", "swing"?,
           "per_prompt": {"control", "gain": [one per prompt]}, "split": {"method", "folds": [...]},
           "in_sample": {"control", "gain", "ppl_increase", "distinct_2"}}
    (gain = control gained over the base model at that strength: the swing for sentiment). ``strength`` is chosen
    on all prompts; the other REC numbers are cross-fitted (each prompt read at the strength chosen on the other
    fold of prompts, see :func:`recommend`), so they carry no winner's curse; ``in_sample`` has the optimistic ones.
    The gate (``steer_core.gates.decide_doc``) reads ``per_prompt`` and ``prompt_ids``.

``control`` is oriented so that higher is better in the steer's + direction: the positive rate for sentiment,
1 − average max toxicity for toxicity.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np

from . import metrics as M
from .baselines import ActAdd, actadd_steering
from .config import EvalConfig
from .generate import Generation, generate, reads_base_nll
from .lm import LoadedLM
from .scorers import Cuts, VaderScorer, cuts_of, get_scorer
from .scorers.diversity import distinct_n
from .scorers.perplexity import conditional_perplexity
from .steer import Steer
from .strength_search import next_magnitude


@dataclass
class Sample:
    """One generated continuation with its scores."""

    system: str
    prompt_set: str
    prompt_index: int
    prompt: str
    strength: float
    text: str
    control: float = math.nan
    ppl: float = math.nan


@dataclass
class System:
    """Something to evaluate over a strength sweep: a steer, or the activation-addition baseline."""

    name: str
    strengths: list[float]
    steer: Steer | None = None
    actadd: ActAdd | None = None
    meta: dict = field(default_factory=dict)


def judged_in_sampling(lm: LoadedLM, judge: LoadedLM, cfg: EvalConfig) -> bool:
    """Whether the judge is the generating model and reads the sampled tokens' NLLs while sampling (no second pass).
    ``ppl_estimate: expected`` exists only there: a model whose logits are scaled after the output layer is refused
    with the reason."""
    in_sampling = judge is lm and reads_base_nll(lm)
    if cfg.ppl_estimate == "expected" and not in_sampling:
        raise ValueError(f"evaluate.ppl_estimate 'expected' needs the base model judged while sampling, and "
                         f"{lm.spec!r} {'is not the judge' if judge is not lm else 'scales its logits after the output layer'}"
                         f"; use ppl_estimate 'sampled'")
    return in_sampling


def sample_system(
    lm: LoadedLM, system: System, prompts: Sequence[dict], cfg: EvalConfig, seed: int = 0, progress: bool = False,
    judge_in_sampling: bool = False,
) -> list[Sample]:
    """Generate cfg.samples continuations for every prompt at every strength of the system, batched.

    ``judge_in_sampling`` (the judge is ``lm`` itself): fill each sample's perplexity under the unsteered ``lm``
    now, read during sampling (``generate(base_nll=True)``). Both methods are sampled and judged the same way
    (``base_nucleus``, ``ppl_estimate``): a steer reads the unsteered logits at the output layer; the ActAdd
    baseline changes the body, so each of its rows runs beside an unsteered twin (``generate(body=...)``).
    """
    texts = [p["prompt"] for p in prompts]
    kw = dict(num_samples=cfg.samples, max_new_tokens=cfg.max_new_tokens, top_p=cfg.top_p,
              temperature=cfg.temperature, seed=seed, batch_size=cfg.batch_size, progress=progress,
              base_nll=judge_in_sampling, base_nucleus=cfg.base_nucleus, nll=cfg.ppl_estimate)
    if system.actadd is not None:
        gens: list[Generation] = []
        for s in system.strengths:  # one hook strength per call keeps the baseline's code path plain
            part = generate(lm, texts, body=partial(actadd_steering, lm, system.actadd, s), **kw)
            for g in part:
                g.strength = float(s)
            gens += part
    else:
        values = None if system.steer is None else [float(s) for s in system.strengths]
        gens = generate(lm, texts, system.steer, values, **kw)
    ppl = [math.exp(sum(g.base_nll) / len(g.base_nll)) if g.base_nll else math.nan for g in gens]
    samples = [Sample(system.name, prompts[g.prompt_index]["set"], g.prompt_index, g.prompt, g.strength, g.text,
                      ppl=v) for g, v in zip(gens, ppl)]
    return samples


def score_samples(samples: list[Sample], scorer, judge: LoadedLM | None, batch_size: int = 16) -> None:
    """Fill in control scores (one batched scorer call) and judge perplexities (batched; ``judge=None``: the
    perplexities were filled while sampling)."""
    if not samples:
        return
    for s, c in zip(samples, scorer.score([s.text for s in samples])):
        s.control = float(c)
    if judge is None:
        return
    ppl = conditional_perplexity(judge.model, judge.tokenizer, [s.prompt for s in samples],
                                 [s.text for s in samples], batch_size=batch_size, device=judge.device)
    for s, p in zip(samples, ppl):
        s.ppl = float(p)


def by_prompt(samples: Sequence[Sample]) -> list[list[Sample]]:
    """The samples grouped by prompt, in prompt order."""
    groups: dict[int, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.prompt_index, []).append(s)
    return [groups[k] for k in sorted(groups)]


def per_prompt_metrics(groups: list[list[Sample]], control: str, cuts: Cuts) -> dict[str, np.ndarray]:
    """Every metric as one value per prompt (``groups``: :func:`by_prompt`), the control metrics at the scorer's
    cut-offs (``scorer.cuts``); each headline metric is the mean over prompts of these values."""
    cols: dict[str, list[float]] = {}
    for g in groups:
        vals = M.control_metrics([s.control for s in g], control, cuts)
        logs = [math.log(s.ppl) for s in g if s.ppl == s.ppl and s.ppl > 0]
        vals["log_ppl"] = float(np.mean(logs)) if logs else math.nan
        for n in (1, 2, 3):
            vals[f"distinct_{n}"] = distinct_n([s.text for s in g], n)
        for k, v in vals.items():
            cols.setdefault(k, []).append(v)
    return {k: np.asarray(v, dtype=float) for k, v in cols.items()}


#: per-prompt columns kept in each row's ``per_prompt`` (what the honest recommendation and the gate read)
PER_PROMPT_KEYS = ("control", "log_ppl", "distinct_2", "toxicity_probability")


def _row_metrics(groups: list[list[Sample]], control: str, cuts: Cuts, n_boot: int = 0, seed: int = 0,
                 keep_per_prompt: bool = False) -> dict[str, Any]:
    per = per_prompt_metrics(groups, control, cuts)
    row: dict[str, Any] = {k: float(np.nanmean(v)) for k, v in per.items() if k != "log_ppl"}
    row["ppl"] = float(np.exp(np.nanmean(per["log_ppl"])))
    if n_boot:
        ci = {k: list(M.bootstrap_ci(v, n_boot=n_boot, seed=seed)) for k, v in per.items() if k != "log_ppl"}
        ci["ppl"] = [float(np.exp(x)) for x in M.bootstrap_ci(per["log_ppl"], n_boot=n_boot, seed=seed)]
        row["ci"] = ci
    if keep_per_prompt:
        row["per_prompt"] = {"prompt_index": [g[0].prompt_index for g in groups],
                             **{k: [float(x) for x in per[k]] for k in PER_PROMPT_KEYS if k in per}}
    return row


def summarize(samples: list[Sample], control: str, n_boot: int = 1000, seed: int = 0,
              cuts: Cuts = VaderScorer.cuts) -> list[dict]:
    """One row per strength: every metric, its bootstrap interval over prompts, per-prompt-set values, and the
    per-prompt values themselves (``per_prompt``: one entry per prompt, in prompt order). ``cuts``: the scorer's
    cut-offs (the default scorer's, VADER's, when not given)."""
    rows = []
    for strength in sorted({s.strength for s in samples}):
        at = [s for s in samples if s.strength == strength]
        row: dict[str, Any] = {"strength": strength,
                               **_row_metrics(by_prompt(at), control, cuts, n_boot, seed, keep_per_prompt=True)}
        row["sets"] = {name: _row_metrics(by_prompt([s for s in at if s.prompt_set == name]), control, cuts)
                       for name in sorted({s.prompt_set for s in at})}
        rows.append(row)
    return rows


def _prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def prompt_id(prompt: str) -> str:
    """A prompt's stable identity: the first 12 hex digits of the SHA-256 of its text."""
    return _prompt_sha256(prompt)[:12]


def split_folds(prompts: Sequence[str]) -> list[int]:
    """Fold 0 or 1 of every prompt, for choosing the strength on one fold and reporting it on the other.

    A prompt's fold is the last bit of the SHA-256 of its text, so it never depends on the order or on the other
    prompts. Only when that leaves a fold empty (a handful of prompts), the prompts sorted by hash alternate
    between the folds instead (still the same folds for the same prompts).
    """
    ids = [_prompt_sha256(p) for p in prompts]
    folds = [int(h, 16) & 1 for h in ids]
    if len(prompts) >= 2 and len(set(folds)) < 2:
        order = sorted(range(len(prompts)), key=lambda i: (ids[i], i))
        folds = [0] * len(prompts)
        for rank, i in enumerate(order):
            folds[i] = rank % 2
    return folds


def _value(r: dict, key: str, idx: list[int] | None) -> float:
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
    return [{"strength": s, "control": _value(r, "control", idx), "ppl": _value(r, "ppl", idx),
             "distinct_2": _value(r, "distinct_2", idx)} for s, r in by_s.items() if s > 0]


def _side_table(by_s: dict[float, dict], idx: list[int] | None, sign: int) -> list[dict]:
    """One side of a two-sided control (sentiment): strength 0 (the base) and every strength of ``sign``, each with
    its positive rate (``control``), the side's goal (``oriented``: the positive rate on the + side, minus it on the
    − side), perplexity and distinct-2 over the prompts ``idx``."""
    out = []
    for s, r in by_s.items():
        if s == 0 or s * sign > 0:
            c = _value(r, "control", idx)
            out.append({"strength": s, "control": c, "oriented": sign * c, "ppl": _value(r, "ppl", idx),
                        "distinct_2": _value(r, "distinct_2", idx)})
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


def _base_ppl(base: dict, idx: list[int]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.exp(np.nanmean(np.asarray(base["per_prompt"]["log_ppl"], dtype=float)[idx])))


def _prefer_gaining(cands: list[dict], strength: float, key: str, base_control: float, limit: float
                    ) -> tuple[float, str]:
    """Never a strength with zero or negative gain while a larger in-budget strength gains (issue 11).

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
    base_ppl = base["ppl"] if idx is None else _base_ppl(base, idx)
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
    base_ppl = _base_ppl(base, list(range(n)))
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


def search_probes(doc: dict, systems: Sequence[System], cfg: EvalConfig, folds: Sequence[int]) -> list[list[float]]:
    """The strengths one round of the strength search adds for each system (issue 11: found by search, not
    picked from a grid): on each side (both for sentiment, whose sides are chosen separately), the next magnitude
    towards that side's budget edge (``strength_search.next_magnitude``), as seen by every chooser :func:`recommend`
    uses (all prompts; with cross-fitting, each fold's choosing prompts). Only strengths not evaluated yet; an
    empty list: that system's edges are located."""
    choosers: list[list[int] | None] = [None]
    if len(set(folds)) > 1:
        choosers += [[i for i, f in enumerate(folds) if f != k] for k in sorted(set(folds))]
    signs = (1, -1) if cfg.control == "sentiment" else (1,)
    out = []
    for system in systems:
        by_s = {r["strength"]: r for r in doc["systems"][system.name]["rows"]}
        new: set[float] = set()
        for idx in choosers:
            limit = (1.0 + cfg.ppl_budget) * (doc["base"]["ppl"] if idx is None else _base_ppl(doc["base"], idx))
            for sign in signs:
                side = [{"strength": abs(s), "ppl": _value(r, "ppl", idx)} for s, r in by_s.items() if s * sign > 0]
                m = next_magnitude(side, limit, rel_tol=cfg.search_tolerance)
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
            "method": "bisection of the budget edge between evaluated strengths (perplexity fitted non-decreasing in "
                      "|s|), per chooser (all prompts, each fold's choosing prompts)",
            "rounds": rounds, "max_rounds": cfg.search_steps, "tolerance": cfg.search_tolerance,
            "probes": probes}
    return systems, doc


def control_scorer(cfg: EvalConfig):
    """The scorer of ``cfg.scorer``, checked to measure the control metric ``cfg.control``."""
    scorer = get_scorer(cfg.scorer)
    if cfg.control == "sentiment" and scorer.kind != "sentiment" or cfg.control == "toxicity" and scorer.kind != "toxicity":
        raise ValueError(f"scorer {cfg.scorer!r} measures {scorer.kind}, but the control metric is {cfg.control!r}")
    return scorer


def reused_base(base_samples: Sequence[Sample] | None, prompts: Sequence[dict]) -> list[Sample] | None:
    """Given base samples (``evaluate(base_samples=...)``) as the base model's, checked to cover every prompt."""
    if base_samples is None:
        return None
    base = [replace(s, system="base", strength=0.0) for s in base_samples]
    if {s.prompt_index for s in base} != set(range(len(prompts))):
        raise ValueError("the given base samples do not cover the evaluation prompts: re-run the evaluate stage")
    return base


@dataclass
class Call:
    """One ``sample_system`` call of an evaluation: ``system`` at its strengths, for ``systems[index]`` (``None``:
    the base model alone). Rows at strength 0 are the base model's samples."""

    index: int | None
    system: System


def sampling_plan(systems: Sequence[System], sample_base: bool) -> list[Call]:
    """The sampling calls of an evaluation, in order: each system at its non-zero strengths, and (``sample_base``)
    strength 0, the base model, once.

    Strength 0 rides in the first steer system's call: one generate call fills larger batches, and at strength 0
    the steer hook adds exact zeros, so those rows are the base model's samples (and, rows drawing their random
    numbers by prompt and sample, the very samples a separate call would give). Without a steer system the base
    model is a call of its own. The calls fix the batches, hence the bits of every number: ``evaluate`` and a shard
    (``shards.sample_shard``) both sample by this plan.
    """
    nonzero = [System(s.name, [x for x in s.strengths if x != 0], s.steer, s.actadd, s.meta) for s in systems]
    first = next((i for i, s in enumerate(nonzero) if s.steer is not None), None) if sample_base else None
    calls = []
    if sample_base and first is None:
        calls.append(Call(None, System("base", [0.0])))
    for i, s in enumerate(nonzero):
        if i == first:
            calls.append(Call(i, System(s.name, [0.0, *s.strengths], s.steer)))
        elif s.strengths:
            calls.append(Call(i, s))
    return calls


def sample_and_score(
    lm: LoadedLM, prompts: Sequence[dict], systems: Sequence[System], cfg: EvalConfig, scorer, *,
    sample_base: bool, judge: LoadedLM | None, seed: int = 0, progress: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> tuple[list[Sample], list[list[Sample]]]:
    """Sample and score the calls of :func:`sampling_plan`, each call's samples scored together (``judge=None``:
    the judge is ``lm``, read while sampling). Returns the base model's samples (empty unless ``sample_base``) and
    each system's samples at its non-zero strengths."""
    base: list[Sample] = []
    per_system: list[list[Sample]] = [[] for _ in systems]
    for call in sampling_plan(systems, sample_base):
        log(f"evaluating {call.system.name} at strengths {call.system.strengths}")
        samples = sample_system(lm, call.system, prompts, cfg, seed, progress, judge_in_sampling=judge is None)
        score_samples(samples, scorer, judge, cfg.batch_size)
        base += [replace(s, system="base") for s in samples if s.strength == 0.0]
        if call.index is not None:
            per_system[call.index] = [s for s in samples if s.strength != 0.0]
    return base, per_system


def evaluate(
    lm: LoadedLM,
    prompts: Sequence[dict],
    systems: Sequence[System],
    cfg: EvalConfig,
    *,
    judge: LoadedLM | None = None,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
    base_samples: Sequence[Sample] | None = None,
) -> tuple[dict, list[Sample]]:
    """Run the protocol for every system on the same prompts; return the metrics document and all samples.

    ``prompts`` are dicts with ``set`` and ``prompt``. Strength 0 is sampled once (it is the base model for every
    steer system) and shared, so candidate and champion are compared against the same base samples.

    ``base_samples``: strength-0 samples already generated and scored on these prompts with this seed and config
    (read back from the candidate's samples file), so a system evaluated later (the champion) is compared against
    the very base samples the candidate was, and the base model is not sampled twice.
    """
    if not prompts:
        raise ValueError("no evaluation prompts")
    judge = judge or lm
    scorer = control_scorer(cfg)
    t0 = time.perf_counter()
    in_sampling = judged_in_sampling(lm, judge, cfg)
    base_samples = reused_base(base_samples, prompts)
    sampled_base, per_system = sample_and_score(lm, prompts, systems, cfg, scorer, sample_base=base_samples is None,
                                                judge=None if in_sampling else judge, seed=seed, progress=progress,
                                                log=log)
    base_samples = sampled_base if base_samples is None else base_samples
    kw = dict(cuts=cuts_of(scorer), judge_spec=judge.spec, in_sampling=in_sampling, seed=seed)
    result = document(prompts, systems, cfg, base_samples, per_system, **kw)

    def sample_more(probes: list[System]) -> None:
        _, extra = sample_and_score(lm, prompts, probes, cfg, scorer, sample_base=False,
                                    judge=None if in_sampling else judge, seed=seed, progress=progress, log=log)
        by_name = {p.name: part for p, part in zip(probes, extra)}
        for i, system in enumerate(systems):  # names never change between rounds
            per_system[i] = per_system[i] + by_name.get(system.name, [])

    def redo(new_systems: list[System]) -> dict:
        nonlocal result
        result = document(prompts, new_systems, cfg, base_samples, per_system, **kw)
        return result[0]

    _, doc = search_strengths(systems, cfg, prompts, result[0], sample_more, redo, log)
    # no timing in the document: metrics/<steer>.json is content-addressed by DVC (equal inputs, equal bytes)
    log(f"evaluated {len(result[1])} samples in {time.perf_counter() - t0:.1f} s")
    return doc, result[1]


def _judge_scores(cfg: EvalConfig, in_sampling: bool) -> str:
    """What the judge's perplexity is computed from, for the document's protocol."""
    if not in_sampling:
        return "re-tokenised text"
    return "expected per step" if cfg.ppl_estimate == "expected" else "sampled tokens"


def document(
    prompts: Sequence[dict],
    systems: Sequence[System],
    cfg: EvalConfig,
    base_samples: Sequence[Sample],
    per_system: Sequence[Sequence[Sample]],
    *,
    cuts: Cuts,
    judge_spec: str,
    in_sampling: bool,
    seed: int = 0,
) -> tuple[dict, list[Sample]]:
    """The metrics document from scored samples (the base's, and each system's non-zero strengths): the base row,
    each system's rows and cross-fitted recommendation, the headline. ``evaluate`` and a sharded evaluation
    (``shards.merge_shards``) both end here, so they compute the same document from the same samples."""
    base_samples = list(base_samples)
    base_row = summarize(base_samples, cfg.control, cfg.bootstrap, seed, cuts)[0]
    base_row["ppl_increase"] = 0.0  # the base is a ROW like the others (schema above)
    doc: dict[str, Any] = {
        "control": cfg.control, "scorer": cfg.scorer, "judge": judge_spec,
        "protocol": {"prompts": len(prompts), "samples": cfg.samples, "max_new_tokens": cfg.max_new_tokens,
                     "top_p": cfg.top_p, "temperature": cfg.temperature, "seed": seed,
                     "base_nucleus": cfg.base_nucleus,
                     "judge_scores": _judge_scores(cfg, in_sampling),
                     "prompt_sets": sorted({p["set"] for p in prompts})},
        "base": base_row, "systems": {},
    }
    all_samples = list(base_samples)
    # which prompts choose the strength and which report it (each entry: the pairing key the gate checks)
    ids, folds = [prompt_id(p["prompt"]) for p in prompts], split_folds([p["prompt"] for p in prompts])
    for system, samples in zip(systems, per_system):
        shared_base = [Sample(system.name, s.prompt_set, s.prompt_index, s.prompt, 0.0, s.text, s.control, s.ppl)
                       for s in base_samples]
        rows = summarize(list(samples) + shared_base, cfg.control, cfg.bootstrap, seed, cuts)
        for r in rows:
            r["ppl_increase"] = r["ppl"] / base_row["ppl"] - 1.0
        doc["systems"][system.name] = {"rows": rows, "recommended": recommend(rows, base_row, cfg.control,
                                                                              cfg.ppl_budget, folds),
                                       "prompt_ids": ids, **system.meta}
        all_samples += samples
    doc["headline"] = headline(doc)
    return doc, all_samples


def headline(doc: dict) -> dict:
    """The few numbers a reviewer reads first: base vs candidate at its recommended strength, and the candidate
    against the ActAdd baseline at each one's own budget strength (``candidate_vs_actadd``)."""
    out: dict[str, Any] = {"base_control": doc["base"]["control"], "base_ppl": doc["base"]["ppl"],
                           "base_distinct_2": doc["base"]["distinct_2"]}
    for name, sysdoc in doc["systems"].items():
        rec = sysdoc["recommended"]
        out[name] = {k: v for k, v in rec.items() if k != "reason" and not isinstance(v, (dict, list))}
    versus = method_versus_baseline(doc)
    if versus is not None:
        out["candidate_vs_actadd"] = versus
    return out


def method_versus_baseline(doc: dict, baseline: str = "actadd", confidence: float = 0.95) -> dict | None:
    """The candidate's recommended control minus the baseline's, per prompt (both cross-fitted on the same folds,
    each at the strength its own search found within the budget), with the paired interval over prompts
    (``metrics.paired_interval``): whether the steer beats the baseline at equal perplexity budget, as evidence.
    None when either system or its per-prompt values are missing, or they were read on other prompts."""
    systems = doc.get("systems", {})
    if "candidate" not in systems or baseline not in systems:
        return None
    if systems["candidate"].get("prompt_ids") != systems[baseline].get("prompt_ids"):
        return None
    mine = systems["candidate"]["recommended"].get("per_prompt", {}).get("control")
    theirs = systems[baseline]["recommended"].get("per_prompt", {}).get("control")
    if not mine or not theirs or len(mine) != len(theirs):
        return None
    diffs = [a - b for a, b in zip(mine, theirs) if math.isfinite(a) and math.isfinite(b)]
    if len(diffs) < 2:
        return None
    mean, low, high = M.paired_interval(diffs, confidence)
    return {"difference": mean, "low": low, "high": high, "confidence": confidence, "prompts": len(diffs)}
