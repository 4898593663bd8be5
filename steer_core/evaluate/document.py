"""The metrics document from scored samples: one row per strength, each system's recommendation, the headline.

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
    The gate (``steer_core.gate.decide_doc``) reads ``per_prompt`` and ``prompt_ids``.

``control`` is oriented so that higher is better in the steer's + direction: the positive rate for sentiment,
1 − average max toxicity for toxicity.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np

from steer_core.config import EvalConfig
from steer_core.evaluate import metrics as M
from steer_core.evaluate.protocol import Sample, System, judge_scores, prompt_id, split_folds
from steer_core.evaluate.recommend import recommend
from steer_core.scorers import Cuts, VaderScorer
from steer_core.scorers.diversity import distinct_n


def by_prompt(samples: Sequence[Sample]) -> list[list[Sample]]:
    """The samples grouped by prompt, in prompt order."""
    groups: dict[int, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.prompt_index, []).append(s)
    return [groups[k] for k in sorted(groups)]


def per_prompt_metrics(groups: list[list[Sample]], control: str, cuts: Cuts,
                       judge_cuts: Mapping[str, Cuts] | None = None) -> dict[str, np.ndarray]:
    """Every metric as one value per prompt (``groups``: :func:`by_prompt`), the control metrics at the scorer's
    cut-offs (``scorer.cuts``); each headline metric is the mean over prompts of these values. ``log_cost`` is the
    mean paired cost of the prompt's samples (NaN when it was not read); each independent judge's control metrics
    are keyed ``"<judge>:<metric>"`` (at ``judge_cuts[judge]``)."""
    cols: dict[str, list[float]] = {}
    for g in groups:
        vals = M.control_metrics([s.control for s in g], control, cuts)
        logs = [math.log(s.ppl) for s in g if s.ppl == s.ppl and s.ppl > 0]
        vals["log_ppl"] = float(np.mean(logs)) if logs else math.nan
        costs = [s.cost for s in g if math.isfinite(s.cost)]
        vals["log_cost"] = float(np.mean(costs)) if costs else math.nan
        for n in (1, 2, 3):
            vals[f"distinct_{n}"] = distinct_n([s.text for s in g], n)
        for name, jcuts in (judge_cuts or {}).items():
            scores = [s.judged.get(name, math.nan) for s in g]
            if all(math.isfinite(x) for x in scores):
                vals.update({f"{name}:{k}": v for k, v in M.control_metrics(scores, control, jcuts).items()})
        for k, v in vals.items():
            cols.setdefault(k, []).append(v)
    return {k: np.asarray(v, dtype=float) for k, v in cols.items()}


#: per-prompt columns kept in each row's ``per_prompt`` (what the honest recommendation and the gate read)
PER_PROMPT_KEYS = ("control", "log_ppl", "log_cost", "distinct_2", "toxicity_probability")
#: an independent judge's per-prompt columns kept in ``per_prompt["judges"][judge]``
JUDGE_KEYS = ("control", "toxicity_probability")


def _mean(v: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(v))


def _row_metrics(groups: list[list[Sample]], control: str, cuts: Cuts, n_boot: int = 0, seed: int = 0,
                 keep_per_prompt: bool = False, judge_cuts: Mapping[str, Cuts] | None = None) -> dict[str, Any]:
    per = per_prompt_metrics(groups, control, cuts, judge_cuts)
    own = {k: v for k, v in per.items() if ":" not in k}
    row: dict[str, Any] = {k: _mean(v) for k, v in own.items() if k not in ("log_ppl", "log_cost")}
    row["ppl"] = float(np.exp(_mean(per["log_ppl"])))
    if np.isfinite(per["log_cost"]).any():
        row["cost"] = float(np.exp(_mean(per["log_cost"])))  # a ratio: the base model's own samples cost 1
    judged: dict[str, dict[str, Any]] = {}
    for key, v in per.items():
        if ":" in key:
            name, metric = key.split(":", 1)
            judged.setdefault(name, {})[metric] = _mean(v)
    if judged:
        row["judges"] = judged
    if n_boot:
        ci = {k: list(M.bootstrap_ci(v, n_boot=n_boot, seed=seed)) for k, v in own.items()
              if k not in ("log_ppl", "log_cost")}
        ci["ppl"] = [float(np.exp(x)) for x in M.bootstrap_ci(per["log_ppl"], n_boot=n_boot, seed=seed)]
        row["ci"] = ci
    if keep_per_prompt:
        row["per_prompt"] = {"prompt_index": [g[0].prompt_index for g in groups],
                             **{k: [float(x) for x in per[k]] for k in PER_PROMPT_KEYS if k in per}}
        if judged:
            row["per_prompt"]["judges"] = {name: {m: [float(x) for x in per[f"{name}:{m}"]] for m in JUDGE_KEYS
                                                  if f"{name}:{m}" in per} for name in judged}
    return row


def summarize(samples: list[Sample], control: str, n_boot: int = 1000, seed: int = 0,
              cuts: Cuts = VaderScorer.cuts, judge_cuts: Mapping[str, Cuts] | None = None) -> list[dict]:
    """One row per strength: every metric, its bootstrap interval over prompts, per-prompt-set values, and the
    per-prompt values themselves (``per_prompt``: one entry per prompt, in prompt order). ``cuts``: the scorer's
    cut-offs (the default scorer's, VADER's, when not given); ``judge_cuts``: each independent judge's."""
    rows = []
    for strength in sorted({s.strength for s in samples}):
        at = [s for s in samples if s.strength == strength]
        row: dict[str, Any] = {"strength": strength, **_row_metrics(by_prompt(at), control, cuts, n_boot, seed,
                                                                     keep_per_prompt=True, judge_cuts=judge_cuts)}
        row["sets"] = {name: _row_metrics(by_prompt([s for s in at if s.prompt_set == name]), control, cuts,
                                          judge_cuts=judge_cuts)
                       for name in sorted({s.prompt_set for s in at})}
        rows.append(row)
    return rows


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
    judge_cuts: Mapping[str, Cuts] | None = None,
) -> tuple[dict, list[Sample]]:
    """The metrics document from scored samples (the base's, and each system's non-zero strengths): the base row,
    each system's rows and cross-fitted recommendation, the headline. ``evaluate`` and a sharded evaluation
    (``shards.merge_shards``) both end here, so they compute the same document from the same samples."""
    base_samples = list(base_samples)
    base_row = summarize(base_samples, cfg.control, cfg.bootstrap, seed, cuts, judge_cuts)[0]
    base_row["ppl_increase"] = 0.0  # the base is a ROW like the others (schema above)
    doc: dict[str, Any] = {
        "control": cfg.control, "scorer": cfg.scorer, "judges": list(cfg.judges), "judge": judge_spec,
        "protocol": {"prompts": len(prompts), "samples": cfg.samples, "max_new_tokens": cfg.max_new_tokens,
                     "top_p": cfg.top_p, "temperature": cfg.temperature, "seed": seed,
                     "base_nucleus": cfg.base_nucleus,
                     "judge_scores": judge_scores(cfg, in_sampling), "fluency": cfg.fluency, "threads": cfg.threads,
                     "confidence": cfg.confidence,
                     "prompt_sets": sorted({p["set"] for p in prompts})},
        "base": base_row, "systems": {},
    }
    all_samples = list(base_samples)
    # which prompts choose the strength and which report it (each entry: the pairing key the gate checks)
    ids, folds = [prompt_id(p["prompt"]) for p in prompts], split_folds([p["prompt"] for p in prompts])
    for system, samples in zip(systems, per_system):
        shared_base = [replace(s, system=system.name, strength=0.0) for s in base_samples]
        rows = summarize(list(samples) + shared_base, cfg.control, cfg.bootstrap, seed, cuts, judge_cuts)
        for r in rows:
            r["ppl_increase"] = r["ppl"] / base_row["ppl"] - 1.0
        rec = recommend(rows, base_row, cfg.control, cfg.ppl_budget, folds, fluency=cfg.fluency,
                        confidence=cfg.confidence, judges=list(judge_cuts or {}))
        doc["systems"][system.name] = {"rows": rows, "recommended": rec, "prompt_ids": ids, **system.meta}
        all_samples += samples
    doc["headline"] = headline(doc)
    return doc, all_samples


#: the baselines every candidate is compared with, each at its own strength within the same budget
BASELINES = ("actadd", "prompting")


def headline(doc: dict) -> dict:
    """The few numbers a reviewer reads first: base vs each system at its recommended strength (with the fluency
    interval and the independent judges' readings), and the candidate against each baseline at each one's own
    budget strength (``candidate_vs_actadd``, ``candidate_vs_prompting``)."""
    out: dict[str, Any] = {"base_control": doc["base"]["control"], "base_ppl": doc["base"]["ppl"],
                           "base_distinct_2": doc["base"]["distinct_2"]}
    for name, sysdoc in doc["systems"].items():
        rec = sysdoc["recommended"]
        out[name] = {k: v for k, v in rec.items() if k != "reason" and not isinstance(v, (dict, list))}
        for key in ("fluency", "judges"):
            if key in rec:
                out[name][key] = rec[key]
    for baseline in BASELINES:
        versus = method_versus_baseline(doc, baseline)
        if versus is not None:
            out[f"candidate_vs_{baseline}"] = versus
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
