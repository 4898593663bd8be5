"""How often does the gate's perplexity check refuse a steer on noise, and how often does it pass one that really
overshoots? Two rules side by side, on the shipped protocol's size, from one larger run's stored samples.

The recommender picks each side's largest strength whose judge perplexity is within ``evaluate.ppl_budget`` on all
prompts; the gate checks the cross-fitted perplexity (each fold read at the strength chosen on the other fold). At
the budget's edge that number lands above the limit about half the time on noise alone (bench/README.md,
choice_margin). The rules compared:

- ``point``: refuse when the cross-fitted increase is above ``gate.max_ppl_increase`` (the gate before this bench);
- ``interval``: refuse only on evidence of overshoot, i.e. when the lower end of the paired bootstrap interval
  (``gate.confidence``, over prompts) of the cross-fitted per-prompt log(perplexity / base's) is above
  log(1 + limit), on either side (the gate after it).

Each draw takes ``--size`` prompts (equal per domain, as shipped) from a larger run's prompts (24 per domain after
``steer run`` with more prompts), recommends and cross-fits on them as the pipeline does, and applies both rules. The
draw's *truth* is what users would see: the perplexity increase at the recommended (deployed) strengths on the run's
other prompts, which chose nothing. A false refusal is a refusal whose truth is within the limit; a false pass a
pass whose truth is above it. Only the strengths the run sampled are candidates (grid + its search's probes).

    source env.sh && python bench/ppl_gate_rules.py /path/to/project [--steer sentiment] [--draws 200] [--size 24]
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from _common import header

from steer_core.config import load_params
from steer_core.evaluate.protocol import Sample, control_scorer, split_folds
from steer_core.scorers import cuts_of
from steer_core.evaluate.recommend import recommend
from steer_core.evaluate.document import summarize
from steer_core.gate import decide_doc

def _gate_passes_ppl(rec: dict, gate) -> bool:
    """The gate's own perplexity check (``gates.decide_doc``) on a recommendation, at ``gate``'s confidence."""
    checks = decide_doc({"systems": {"candidate": {"recommended": rec}}}, gate).checks
    return next(c for c in checks if c.name == "ppl_increase").ok


def _truth(rows: dict[float, dict], base: dict, strengths: list[float], held_out: list[str]) -> float:
    """The worse side's perplexity increase at ``strengths`` over the prompts ``held_out``."""
    out = []
    for s in strengths:
        d = [rows[s][p] - base[p] for p in held_out if math.isfinite(rows[s][p]) and math.isfinite(base[p])]
        out.append(math.exp(float(np.mean(d))) - 1.0)
    return max(out)


def _rate(ss: list[Sample], prompts: list[str], cuts) -> dict[str, float]:
    """Each prompt's positive rate (score above the scorer's positive cut, as the control metric)."""
    acc: dict[str, list[float]] = defaultdict(list)
    for s in ss:
        acc[s.prompt].append(float(s.control > cuts.positive_above))
    return {p: float(np.mean(acc[p])) for p in prompts}


def _swing(pos: dict[float, dict[str, float]], deployed: list[float], held_out: list[str]) -> float:
    """The positive rate at the + strength minus at the − strength, over the prompts ``held_out``."""
    plus, minus = deployed
    return float(np.mean([pos[plus][p] - pos[minus][p] for p in held_out]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path, help="a project after `steer run` with more prompts than shipped")
    ap.add_argument("--steer", default="sentiment")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--size", type=int, default=24, help="prompts per draw (split equally over the domains)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--confidences", default="0.8,0.5",
                    help="interval levels to compare besides gate.confidence (the lower end of a central interval)")
    ap.add_argument("--margins", default="0.175", help="smaller choice budgets to compare, with the point rule")
    args = ap.parse_args()
    params = load_params(args.project / "params.yaml")
    spec = params.steers[args.steer]
    cfg, gate = spec.evaluate, spec.gate
    limit = gate.max_ppl_increase
    samples = [Sample(**json.loads(line)) for line in
               (args.project / "reports" / f"{args.steer}.samples.jsonl").read_text().splitlines() if line]
    base = [s for s in samples if s.system == "base"]
    own = [s for s in samples if s.system == "candidate"]
    by_domain: dict[str, list[str]] = defaultdict(list)
    for s in base:
        if s.prompt not in by_domain[s.prompt_set]:
            by_domain[s.prompt_set].append(s.prompt)
    prompts = [p for ps in by_domain.values() for p in ps]
    per_domain = args.size // len(by_domain)
    header(f"ppl_gate_rules: {args.steer} in {args.project}: {args.draws} draws of {per_domain * len(by_domain)} of "
           f"{len(prompts)} prompts; gate limit +{limit:.0%}, choice budget +{cfg.ppl_budget:.0%}")

    # every prompt's mean log perplexity per strength (the truth is read from these)
    def log_ppl(ss: list[Sample]) -> dict[str, float]:
        acc: dict[str, list[float]] = defaultdict(list)
        for s in ss:
            if s.ppl == s.ppl and s.ppl > 0:
                acc[s.prompt].append(math.log(s.ppl))
        return {p: float(np.mean(v)) if v else math.nan for p, v in ((p, acc.get(p, [])) for p in prompts)}

    cuts = cuts_of(control_scorer(cfg))
    base_lp = log_ppl(base)
    strengths = sorted({s.strength for s in own})
    lp = {st: log_ppl([s for s in own if s.strength == st]) for st in strengths}
    lp[0.0] = base_lp
    # and its positive rate per strength (the swing users would see at the deployed strengths)
    pos = {st: _rate([s for s in own if s.strength == st] if st else base, prompts, cuts) for st in [0.0, *strengths]}

    rng = random.Random(args.seed)
    tally: dict = defaultdict(int)
    confidences = sorted({gate.confidence, *(float(c) for c in args.confidences.split(",") if c)}, reverse=True)
    budgets = [cfg.ppl_budget] + [float(b) for b in args.margins.split(",") if b]
    truths: dict[float, list[float]] = defaultdict(list)
    swings: dict[float, list[float]] = defaultdict(list)
    for _ in range(args.draws):
        chosen = [p for ps in by_domain.values() for p in rng.sample(ps, per_domain)]
        keep = set(chosen)
        b = [s for s in base if s.prompt in keep]
        base_row = summarize(b, cfg.control, 0, 0, cuts)[0]
        shared = [Sample("candidate", s.prompt_set, s.prompt_index, s.prompt, 0.0, s.text, s.control, s.ppl) for s in b]
        rows = summarize([s for s in own if s.prompt in keep] + shared, cfg.control, 0, 0, cuts)
        folds = split_folds(list(dict.fromkeys(s.prompt for s in b)))
        held_out = [p for p in prompts if p not in keep]
        for budget in budgets:
            rec = recommend(rows, base_row, cfg.control, budget, folds)
            deployed = [rec["strength"]] + ([rec["strength_minus"]] if "strength_minus" in rec else [])
            truth = _truth(lp, base_lp, deployed, held_out)
            truths[budget].append(truth)
            swings[budget].append(_swing(pos, deployed, held_out))
            verdicts = [("point", rec["ppl_increase"] <= limit)]
            if budget == cfg.ppl_budget:
                for conf in confidences:
                    verdicts.append((f"interval {conf:.0%}",
                                     _gate_passes_ppl(rec, gate.model_copy(update={"confidence": conf}))))
            for rule, ok in verdicts:
                key = (rule, budget)
                tally[key, "refused"] += not ok
                tally[key, "false_refusal"] += (not ok) and truth <= limit
                tally[key, "false_pass"] += ok and truth > limit
                tally[key, "false_pass_10"] += ok and truth > limit + 0.10
    n = args.draws
    print("| choice budget | deployed Δppl on the other prompts: median (90th pct) | their swing there | gate rule | "
          "refused | refused, truth within the limit | passed, truth above the limit | passed, truth > limit + 10 pts |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for budget in budgets:
        for rule in ("point", *(f"interval {c:.0%}" for c in confidences)):
            key = (rule, budget)
            if (key, "refused") not in tally:
                continue
            print(f"| +{budget:.1%} | {np.median(truths[budget]):+.1%} ({np.percentile(truths[budget], 90):+.1%}) | "
                  f"{np.mean(swings[budget]):.3f} | {rule} | {tally[key, 'refused'] / n:.0%} | "
                  f"{tally[key, 'false_refusal'] / n:.0%} | {tally[key, 'false_pass'] / n:.0%} | "
                  f"{tally[key, 'false_pass_10'] / n:.0%} |")


if __name__ == "__main__":
    main()
