"""Does the recommended strength hold on fresh prompts that played no part in choosing it? (issue 11)

`steer run` chooses each side's strength on its own 24 prompts (the in-sample figure) and reports a cross-fitted
figure (each half read at the strength the other half chose), which also carries the noise of choosing on a
10–14-prompt half. This reads the strengths the pipeline actually recommended (``metrics/<steer>.json``) on fresh
held-out prompts from the same three domains (``steer_core.data.corpora``, another seed; any prompt the pipeline
evaluated on is dropped), beside the unsteered model with the same paired random numbers, sampled and judged as
the pipeline does (within the base nucleus, base-model NLL expected per step). Printed: positive rate at each side
and at base, the swing with its 95 % paired interval over prompts (metrics.paired_interval), the perplexity
increase per side with its interval, distinct-2, and the same swing under TextBlob (a lexicon the data were not
labelled with).

    source env.sh && python bench/confirm_strength.py --project . --seeds 7,11 --also 4,-3   # ~9 min on 2 cores
"""

from __future__ import annotations

import sys

import argparse
import json
from pathlib import Path

import numpy as np
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for _common
from _common import header, per_prompt_metrics

from steer_core.data.records import load_jsonl
from steer_core.model.generate import generate
from steer_core.data.corpora import heldout_prompts
from steer_core.model.lm import load_lm
from steer_core.evaluate.metrics import paired_interval
from steer_core.scorers import get_scorer
from steer_core.model.steer import Steer


def per_prompt(lm, steer, prompts, s, samples, tokens, scorers) -> dict[str, dict[str, np.ndarray]]:
    """Per scorer, the pipeline's per-prompt metrics of the samples at strength ``s`` (``_common.per_prompt_metrics``)."""
    gens = generate(lm, prompts, steer if s else None, float(s), num_samples=samples, max_new_tokens=tokens,
                    seed=0, base_nll=True, base_nucleus=True, nll="expected")
    return {n: per_prompt_metrics(gens, sc, "sentiment") for n, sc in scorers.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("."))
    ap.add_argument("--steer", default="sentiment")
    ap.add_argument("--per-domain", type=int, default=24)
    ap.add_argument("--seeds", default="7", help="held-out prompt draws, pooled (the other benches use 0)")
    ap.add_argument("--also", default="", help="another '+s,-s' pair read beside the recommended one, e.g. 4,-3")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    metrics = json.loads((args.project / "metrics" / f"{args.steer}.json").read_text())
    rec = metrics["systems"]["candidate"]["recommended"]
    pairs = [(rec["strength"], rec["strength_minus"])]
    if args.also:
        pairs.append(tuple(float(x) for x in args.also.split(",")))
    used = {r["prompt"] for r in load_jsonl(args.project / "data" / "prompts" / f"{args.steer}.jsonl")}
    rows: list[dict] = []
    for seed in (int(x) for x in args.seeds.split(",")):
        for r in heldout_prompts(per_domain=args.per_domain, seed=seed):
            if r["prompt"] not in used:
                rows.append(r)
                used.add(r["prompt"])
    prompts = [r["prompt"] for r in rows]
    header(f"confirm_strength: {args.steer} at {' and '.join(f'{p:+g} / {m:+g}' for p, m in pairs)} (the first "
           f"recommended) on {len(prompts)} fresh held-out prompts (draws {args.seeds}) × {args.samples} samples × "
           f"{args.new_tokens} tokens")
    lm = load_lm("default", "cpu")
    steer = Steer.load(args.project / "artifacts" / "steers" / f"{args.steer}.safetensors")
    scorers = {"vader": get_scorer("vader"), "textblob": get_scorer("textblob")}
    strengths = dict.fromkeys([0.0, *[s for pair in pairs for s in pair]])
    r = {s: per_prompt(lm, steer, prompts, s, args.samples, args.new_tokens, scorers) for s in strengths}
    print(f"pipeline: in-sample swing {rec['in_sample']['control']:+.3f} at {rec['in_sample']['ppl_increase']:+.1%}, "
          f"cross-fitted {rec['swing']:+.3f} at {rec['ppl_increase']:+.1%} (24 prompts)")
    for plus, minus in pairs:
        report(r, rows, plus, minus, scorers)


def report(r: dict, rows: list[dict], plus: float, minus: float, scorers: dict) -> None:
    print(f"## {plus:+g} / {minus:+g}")
    for name in scorers:
        pos = {s: r[s][name]["control"] for s in (minus, 0.0, plus)}
        mean, lo, hi = paired_interval(pos[plus] - pos[minus])
        print(f"{name}: positive rate {pos[minus].mean():.3f} ({minus:+g}) → {pos[0.0].mean():.3f} (base) → "
              f"{pos[plus].mean():.3f} ({plus:+g}); swing {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    base = r[0.0]["vader"]
    for s in (plus, minus):
        m = r[s]["vader"]
        ratio = m["log_ppl"] - base["log_ppl"]
        d, lo, hi = paired_interval(ratio[np.isfinite(ratio)])  # a prompt whose samples all ended at once has none
        mean = np.exp(np.nanmean(m["log_ppl"]) - np.nanmean(base["log_ppl"])) - 1
        print(f"{s:+g}: perplexity {mean:+.1%} (per-prompt log ratio {d:+.3f} [{lo:+.3f}, {hi:+.3f}]), "
              f"distinct-2 {m['distinct_2'].mean():.3f} (base {base['distinct_2'].mean():.3f})")
    for d in dict.fromkeys(x["set"] for x in rows):
        idx = [i for i, x in enumerate(rows) if x["set"] == d]
        swing = r[plus]["vader"]["control"][idx].mean() - r[minus]["vader"]["control"][idx].mean()
        print(f"  {d}: swing {swing:+.3f} ({len(idx)} prompts)")


if __name__ == "__main__":
    main()
