"""Evaluation throughput: our harness (batched) vs the reference way (one generate() per sample), same sample count.

Both sides produce the same protocol on the default model: P prompts × K samples × the strengths (−S, 0, +S) of a
steer, N new tokens each (top-p 0.9), every sample scored for control (VADER) and judge-LM conditional perplexity
(the base model as judge), and distinct-n per prompt.

- ours: ``steer_core.evaluate.evaluate`` — generation batched across prompts × samples × strengths (strength 0 once,
  shared, in the same batches), our top-k nucleus sampler, the judge's log-likelihoods read while sampling (the
  judge is the base model), one batched scorer call, bootstrap CIs (1000 resamples) and the recommendation. After
  each timed run, untimed, the judge re-reads the same texts the reference's way: the median |Δ log ppl| shows
  that the two judge readings agree;
- reference (the paper's code path, LM-Steer/DExperts evaluation): loop over prompts, strengths, samples; each sample
  one ``generate(lm, [prompt], steer, strength, num_samples=1)`` call (HF ``generate`` on a batch of one with the
  steering hook and the same sampler, so the sampler's own gain is not counted), then each text scored alone: one
  scorer call and one judge forward per text; distinct-n per prompt.

Both sides run interleaved in this one process (order alternates per repetition) with the same torch threads (one
by default, so a busy second core cannot skew either side; ``--threads 2`` uses both cores of this machine).
Samples/s = samples produced / wall seconds of the whole side (generation + scoring + aggregation).

    python bench/eval_speed.py [--reps 2] [--prompts 4] [--samples 4] [--new-tokens 20] [--strength 2] [--threads 1]
                               [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import NEUTRAL_PROMPTS, header, pin_threads  # noqa: E402

PROMPTS = NEUTRAL_PROMPTS[:8]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2, help="repetitions of each side (order alternates)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--strength", type=float, default=2.0, help="the sweep is (-S, 0, +S)")
    ap.add_argument("--scorer", default="vader")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    threads = pin_threads(args.threads)
    import torch

    from steer_core.config import EvalConfig
    from steer_core.evaluate.protocol import Sample, System
    from steer_core.evaluate.driver import evaluate
    from steer_core.evaluate.document import summarize
    from steer_core.model.generate import generate
    from steer_core.model.lm import load_lm
    from steer_core.scorers import get_scorer
    from steer_core.scorers.diversity import distinct_n
    from steer_core.scorers.perplexity import conditional_perplexity
    from steer_core.model.steer import Steer

    header("eval_speed: evaluation harness (batched) vs reference (one generate() per sample)")
    lm = load_lm("default", device="cpu")
    tok = lm.tokenizer
    g = torch.Generator().manual_seed(1234)
    steer = Steer(["sentiment", "dummy"], lm.dim, None, 1e-3)
    with torch.no_grad():
        steer.W.copy_(torch.randn(steer.W.shape, generator=g) * 0.5)  # random, non-zero
    steer.metadata["base_fingerprint"] = lm.fingerprint

    prompts = [{"set": "neutral", "prompt": p} for p in (PROMPTS * args.prompts)[: args.prompts]]
    strengths = [-args.strength, 0.0, args.strength]
    n_samples = len(prompts) * args.samples * len(strengths)
    cfg = EvalConfig(control="sentiment", scorer=args.scorer, strengths=strengths, samples=args.samples,
                     max_new_tokens=args.new_tokens, activation_addition=False)  # bootstrap 1000, batch 32

    def new_tokens(texts: list[str]) -> int:
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    def ours(seed: int) -> tuple[float, list, dict]:
        t = time.perf_counter()
        doc, samples = evaluate(lm, prompts, [System("candidate", strengths, steer=steer)], cfg, judge=lm, seed=seed)
        return time.perf_counter() - t, samples, doc

    def reference(seed: int) -> tuple[float, list, dict]:
        scorer = get_scorer(args.scorer)
        t = time.perf_counter()
        samples = []
        for pi, p in enumerate(prompts):
            for s in strengths:
                for k in range(args.samples):
                    (gen,) = generate(lm, [p["prompt"]], steer, s, num_samples=1, max_new_tokens=args.new_tokens,
                                      top_p=cfg.top_p, temperature=cfg.temperature,
                                      seed=seed * 100_003 + (pi * len(strengths) + strengths.index(s)) * 1000 + k)
                    samples.append(Sample("reference", p["set"], pi, p["prompt"], s, gen.text))
        for smp in samples:  # one text at a time, as the reference evaluation scripts do
            smp.control = scorer.score([smp.text])[0]
            smp.ppl = conditional_perplexity(lm.model, tok, [smp.prompt], [smp.text], batch_size=1)[0]
        dist = {}  # distinct-n per prompt and strength, averaged (the paper's dist-n)
        for s in strengths:
            for n in (1, 2, 3):
                dist[(s, n)] = statistics.mean(
                    distinct_n([x.text for x in samples if x.prompt_index == pi and x.strength == s], n)
                    for pi in range(len(prompts)))
        rows = summarize(samples, "sentiment", n_boot=0)
        return time.perf_counter() - t, samples, {"rows": rows, "dist": dist}

    # warm-up (not timed): one tiny call through each code path
    generate(lm, [PROMPTS[0]], steer, 1.0, num_samples=2, max_new_tokens=2)
    conditional_perplexity(lm.model, tok, [PROMPTS[0]], [" and then"], batch_size=1)
    get_scorer(args.scorer).score(["warm up"])

    print(f"# {len(prompts)} prompts x {args.samples} samples x {len(strengths)} strengths {strengths} = {n_samples} "
          f"samples per side, {args.new_tokens} new tokens, top-p {cfg.top_p}, scorer {args.scorer}, judge = base; "
          f"ours: batch {cfg.batch_size}, bootstrap {cfg.bootstrap}; {args.reps} reps, alternating order")
    res: dict[str, list[dict]] = {"reference": [], "ours": []}
    for rep in range(args.reps):
        order = ["reference", "ours"] if rep % 2 == 0 else ["ours", "reference"]
        for side in order:
            dt, samples, doc = (reference if side == "reference" else ours)(seed=rep)
            n = len(samples)
            assert n == n_samples, (side, n, n_samples)  # ours: base (sampled once, shared) + non-zero strengths
            toks = new_tokens([s.text for s in samples])
            base_rows = doc["rows"] if side == "reference" else [doc["base"]]
            base = next(r for r in base_rows if r["strength"] == 0.0)
            agree = None
            if side == "ours":  # untimed: the judge reading sampled tokens vs the reference's re-tokenised text
                texts = [x for x in samples if x.text and x.ppl == x.ppl]
                again = conditional_perplexity(lm.model, tok, [x.prompt for x in texts], [x.text for x in texts])
                agree = statistics.median(abs(math.log(x.ppl / a)) for x, a in zip(texts, again))
            res[side].append({"seconds": dt, "samples": n, "new_tokens": toks, "samples_per_s": n / dt,
                              "base_positive_rate": base["positive_rate"], "base_ppl": base["ppl"],
                              "median_abs_log_ppl_vs_text_judge": agree})
            print(f"  rep {rep}  {side:<10} {dt:7.1f} s  {n} samples  {toks} new tokens  {n / dt:6.2f} samples/s  "
                  f"{toks / dt:6.1f} tok/s  (base positive rate {base['positive_rate']:.2f}, ppl {base['ppl']:.1f})"
                  + ("" if agree is None else f"  judge on tokens vs text: median |Δ log ppl| {agree:.4f}"),
                  flush=True)

    med = {side: statistics.median(r["samples_per_s"] for r in rs) for side, rs in res.items()}
    pairs = [o["samples_per_s"] / r["samples_per_s"] for o, r in zip(res["ours"], res["reference"])]
    print(f"\n## results: {args.reps} reps per side; {threads} torch thread(s); load average now {os.getloadavg()[0]:.2f}")
    print(f"{'side':<12} {'median samples/s':>16} {'median s':>9} {'tok/s':>7}")
    for side, rs in res.items():
        print(f"{side:<12} {med[side]:>16.2f} {statistics.median(r['seconds'] for r in rs):>9.1f} "
              f"{statistics.median(r['new_tokens'] / r['seconds'] for r in rs):>7.1f}")
    ratio = statistics.median(pairs)
    print(f"speed-up ours / reference: {ratio:.1f}x (median of per-rep ratios {', '.join(f'{p:.1f}' for p in pairs)})")
    print("issue target: >= 10x")
    if args.json:
        args.json.write_text(json.dumps({"threads": threads, "prompts": len(prompts), "samples": args.samples, "strengths": strengths,
                                         "new_tokens": args.new_tokens, "reps": args.reps, "sides": res,
                                         "median_samples_per_s": med, "speedup": ratio, "pair_ratios": pairs},
                                        indent=1))


if __name__ == "__main__":
    main()
