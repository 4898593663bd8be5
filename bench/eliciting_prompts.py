"""Which eliciting prompts let 24 prompts show a detox steer's gain? (issue 11: detox was not promotable)

The detox gate promotes on the paired gain in average max toxicity over prompts. With prompts that open a profane
tweet but are clean themselves (``flagged: text``) the base model rarely continues into profanity (toxicity
probability ~0.1), so most prompts contribute a gain of 0 and 24 prompts cannot show one. RealToxicityPrompts'
challenging prompts, the paper's detox benchmark, are often toxic themselves; ``flagged: prompt`` keeps openings the
scorer flags on their own words. Both sets are drawn from the same held-out tweets (steer_core.data.prepare with the
shipped detox data config, only the prompt set changed), sampled within the base nucleus with the same paired random
numbers, the shipped steer at each strength, judged by the base model (NLL expected per step), scored with the
profanity classifier. Per strength: toxicity probability, average max toxicity, the paired gain over the unsteered
samples with its 95 % interval over prompts (metrics.paired_interval, the gate's), and the perplexity increase.

    source env.sh && python bench/eliciting_prompts.py --steer artifacts/steers/detox.safetensors   # ~4 min, 2 threads
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, header, per_prompt_metrics

from steer_core.config import load_params
from steer_core.data.records import load_jsonl
from steer_core.data.prepare import prepare
from steer_core.model.generate import generate
from steer_core.model.lm import load_lm
from steer_core.evaluate.metrics import paired_interval
from steer_core.scorers import get_scorer
from steer_core.model.steer import Steer


def prompts_flagged_by(spec, flagged: str, count: int, words: int) -> list[str]:
    """The shipped detox prompt set with ``flagged``/``count``/``words`` swapped in, built the way `prepare` does."""
    ps = spec.prompts[0].model_copy(update={"flagged": flagged, "count": count, "words": words})
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        prepare(spec.data, [ps], t / "prep", t / "prompts.jsonl", t / "card.json")
        return [r["prompt"] for r in load_jsonl(t / "prompts.jsonl")]


def per_prompt(lm, steer, prompts, s, args, scorer) -> dict[str, np.ndarray]:
    """The pipeline's per-prompt metrics of the samples at strength ``s`` (``_common.per_prompt_metrics``)."""
    gens = generate(lm, prompts, steer if s else None, float(s), num_samples=args.samples,
                    max_new_tokens=args.new_tokens, seed=0, base_nll=True, base_nucleus=True, nll="expected")
    return per_prompt_metrics(gens, scorer, "toxicity")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steer", type=Path, default=ROOT / "artifacts/steers/detox.safetensors")
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--words", default="4,6", help="prompt lengths in words, one run per length and flag")
    ap.add_argument("--strengths", default="1,1.25,1.5")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header(f"eliciting_prompts: {args.count} prompts × {args.samples} samples × {args.new_tokens} tokens, steer "
           f"{args.steer.name}, {args.threads} threads")
    spec = load_params(ROOT / "params.yaml").steers["detox"]
    lm, steer, scorer = load_lm("default", "cpu"), Steer.load(args.steer), get_scorer("profanity")
    for words in (int(w) for w in args.words.split(",")):
        for flagged in ("text", "prompt"):
            prompts = prompts_flagged_by(spec, flagged, args.count, words)
            own = np.mean([x >= 0.5 for x in scorer.score(prompts)])
            print(f"\n## flagged: {flagged}, {words} words ({len(prompts)} prompts, {own:.0%} profane themselves): "
                  f"{prompts[:3]}")
            print("| s | toxicity probability | avg max toxicity | gain (paired, 95 %) | Δppl |")
            base = per_prompt(lm, steer, prompts, 0.0, args, scorer)
            print(f"| 0 | {base['toxicity_probability'].mean():.3f} | {base['avg_max_toxicity'].mean():.3f} | | |")
            for s in (float(x) for x in args.strengths.split(",")):
                r = per_prompt(lm, steer, prompts, s, args, scorer)
                mean, lo, hi = paired_interval(base["avg_max_toxicity"] - r["avg_max_toxicity"])
                dppl = np.exp(np.nanmean(r["log_ppl"]) - np.nanmean(base["log_ppl"])) - 1
                print(f"| {s:g} | {r['toxicity_probability'].mean():.3f} | {r['avg_max_toxicity'].mean():.3f} | {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                      f"| {dppl:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
