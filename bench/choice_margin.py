"""Would a margin between the strength's choice and the gate's perplexity limit stop the gate refusing on noise?

The recommender picks each side's largest strength whose judge perplexity is within ``evaluate.ppl_budget`` on all
prompts; the gate checks the *cross-fitted* perplexity (each fold read at the strength chosen on the other fold)
against ``gate.max_ppl_increase``. When perplexity binds, a fold's choice can land past the edge. This re-reads a
finished run's stored samples (``reports/<steer>.samples.jsonl``: the grid and the search's probes, nothing is
sampled again) and re-runs the recommendation at smaller choice budgets, printing what a point check and the gate's
perplexity check (refuse only when the interval's lower end is above the limit) would say. Only the strengths the run sampled are candidates (a real run would search near each budget's edge).

    source env.sh && python bench/choice_margin.py /path/to/project [--steer sentiment] [--budgets 0.25,0.2,0.15]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import header

from steer_core.config import load_params
from steer_core.evaluate.protocol import Sample, control_scorer, split_folds
from steer_core.scorers import cuts_of
from steer_core.evaluate.recommend import recommend
from steer_core.evaluate.document import summarize
from steer_core.gate import decide_doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path, help="a project after `steer run` (params.yaml, reports/)")
    ap.add_argument("--steer", default="sentiment")
    ap.add_argument("--budgets", default="0.25,0.225,0.2,0.175,0.15")
    args = ap.parse_args()
    params = load_params(args.project / "params.yaml")
    spec = params.steers[args.steer]
    cfg, limit = spec.evaluate, spec.gate.max_ppl_increase
    samples = [Sample(**json.loads(line)) for line in
               (args.project / "reports" / f"{args.steer}.samples.jsonl").read_text().splitlines() if line]
    base = [s for s in samples if s.system == "base"]
    prompts = list(dict.fromkeys(s.prompt for s in base))
    header(f"choice_margin: {args.steer} in {args.project} ({len(prompts)} prompts), gate limit +{limit:.0%}")
    cuts = cuts_of(control_scorer(cfg))
    base_row = summarize(base, cfg.control, cfg.bootstrap, 0, cuts)[0]
    folds = split_folds(prompts)
    own = [s for s in samples if s.system == "candidate"]
    shared = [Sample("candidate", s.prompt_set, s.prompt_index, s.prompt, 0.0, s.text, s.control, s.ppl) for s in base]
    rows = summarize(own + shared, cfg.control, cfg.bootstrap, 0, cuts)
    for r in rows:
        r["ppl_increase"] = r["ppl"] / base_row["ppl"] - 1.0
    print("| choice budget | s | in-sample control | in-sample Δppl | cross-fitted control | cross-fitted Δppl | "
          "point check | the gate's check (interval) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for budget in (float(b) for b in args.budgets.split(",")):
        rec = recommend(rows, base_row, cfg.control, budget, folds)
        s = f"{rec['strength']:+g}" + (f"/{rec['strength_minus']:+g}" if "strength_minus" in rec else "")
        ok = "pass" if rec["ppl_increase"] <= limit else "refuse"
        check = next(c for c in decide_doc({"systems": {"candidate": {"recommended": rec}}}, spec.gate).checks
                     if c.name == "ppl_increase")
        gate = f"{'pass' if check.ok else 'refuse'} (lower end {check.value:+.1%})"
        print(f"| +{budget:.1%} | {s} | {rec['in_sample']['control']:.3f} | {rec['in_sample']['ppl_increase']:+.1%} | "
              f"{rec['control']:.3f} | {rec['ppl_increase']:+.1%} | {ok} | {gate} |")


if __name__ == "__main__":
    main()
