"""Does the recommended strength hold on fresh prompts that played no part in choosing it? (issue 11)

`steer run` chooses each side's strength on its own 24 prompts (the in-sample figure) and reports a cross-fitted
figure (each half read at the strength the other half chose), which also carries the noise of choosing on a
10–14-prompt half. This reads the strengths the pipeline actually recommended (``metrics/<steer>.json``) on fresh
held-out prompts from the same three domains (``steer_core.heldout``, another seed; any prompt the pipeline
evaluated on is dropped), beside the unsteered model with the same paired random numbers, sampled and judged as
the pipeline does (within the base nucleus, base-model NLL expected per step). Printed: positive rate at each side
and at base, the swing with its 95 % paired interval over prompts (metrics.paired_interval), the perplexity
increase per side with its interval, distinct-2, and the same swing under TextBlob (a lexicon the data were not
labelled with).

    source env.sh && python bench/confirm_strength.py --project . --seeds 7,11 --also 4,-3   # ~9 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _common import header

from steer_core.data import load_jsonl
from steer_core.generate import generate
from steer_core.heldout import heldout_prompts
from steer_core.lm import load_lm
from steer_core.metrics import paired_interval
from steer_core.scorers import get_scorer
from steer_core.scorers.diversity import distinct_n
from steer_core.steer import Steer


def per_prompt(lm, steer, prompts, s, samples, tokens, scorers) -> dict[str, np.ndarray]:
    """Per prompt: the positive rate under each scorer, the mean log perplexity, distinct-2."""
    gens = generate(lm, prompts, steer if s else None, float(s), num_samples=samples, max_new_tokens=tokens,
                    seed=0, base_nll=True, base_nucleus=True, nll="expected")
    out: dict[str, list[float]] = {"log_ppl": [], "distinct_2": [], **{n: [] for n in scorers}}
    scores = {n: sc.score([g.text for g in gens]) for n, sc in scorers.items()}
    for i in range(len(prompts)):
        idx = [k for k, g in enumerate(gens) if g.prompt_index == i]
        for n, sc in scorers.items():
            out[n].append(float(np.mean([scores[n][k] > sc.cuts.positive_above for k in idx])))
        out["log_ppl"].append(float(np.mean([np.mean(gens[k].base_nll) for k in idx if gens[k].base_nll])))
        out["distinct_2"].append(distinct_n([gens[k].text for k in idx], 2))
    return {k: np.asarray(v) for k, v in out.items()}


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
        rows += [r for r in heldout_prompts(per_domain=args.per_domain, seed=seed)
                 if r["prompt"] not in used | {x["prompt"] for x in rows}]
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
        mean, lo, hi = paired_interval(r[plus][name] - r[minus][name])
        print(f"{name}: positive rate {r[minus][name].mean():.3f} ({minus:+g}) → {r[0.0][name].mean():.3f} (base) → "
              f"{r[plus][name].mean():.3f} ({plus:+g}); swing {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    for s in (plus, minus):
        d, lo, hi = paired_interval(r[s]["log_ppl"] - r[0.0]["log_ppl"])
        mean = np.exp(np.nanmean(r[s]["log_ppl"]) - np.nanmean(r[0.0]["log_ppl"])) - 1
        print(f"{s:+g}: perplexity {mean:+.1%} (per-prompt log ratio {d:+.3f} [{lo:+.3f}, {hi:+.3f}]), "
              f"distinct-2 {r[s]['distinct_2'].mean():.3f} (base {r[0.0]['distinct_2'].mean():.3f})")
    for d in dict.fromkeys(x["set"] for x in rows):
        idx = [i for i, x in enumerate(rows) if x["set"] == d]
        print(f"  {d}: swing {r[plus]['vader'][idx].mean() - r[minus]['vader'][idx].mean():+.3f} ({len(idx)} prompts)")


if __name__ == "__main__":
    main()
