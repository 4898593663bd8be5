"""Generation-time variants of a trained LM-Steer (norm-preserving steering; the dummy steer held at +1) vs plain
LM-Steer, side by side on the same held-out prompts (issue 11, item 4).

Plain LM-Steer feeds the output layer ``h + ε·s·W h``; norm-preserving steering rescales that back to ``‖h‖``
(the direction turns, the length stays), an idea from the activation-steering literature: a logit's scale grows
with ‖h‖, so keeping it should cost less perplexity per unit of control. Both use the same trained steer, the
same 3-domain held-out prompts (``steer_core.data.corpora``) and the same paired random numbers per (prompt, sample),
judged by the unsteered base model (``steer_core.frontier.Measurer``). For each: the swing (positive rate at +s
minus at −s) and the worse side's perplexity increase per |s|, then the largest in-budget |s| per side by an
isotonic fit over every probe (``strength_search.isotonic_edge``) and the swing there.

    source env.sh && python bench/norm_preserving.py --steer artifacts/steers/sentiment.safetensors \
        [--variants plain,norm-preserving,dummy at +1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import ROOT, header, pin_threads

from steer_core.frontier import Measurer
from steer_core.data.corpora import heldout_prompts
from steer_core.model.lm import load_lm
from steer_core.model.steer import Steer
from steer_core.evaluate.search import Probe, isotonic_edge


def norm_preserving(steer: Steer) -> Steer:
    """The same steer, its output rescaled to the input's norm per position."""
    plain = steer.apply

    def apply(h, values):
        out = plain(h, values)
        return out * (h.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    steer.apply = apply  # type: ignore[method-assign]
    return steer


def dummy_on(steer: Steer) -> Steer:
    """The same steer with its dummy (the training corpus' domain shift) held at +1 at generation, as in training."""
    plain, i = steer.apply, steer.names.index("dummy")

    def apply(h, values):
        values = values.clone()
        values[..., i] = 1.0
        return plain(h, values)

    steer.apply = apply  # type: ignore[method-assign]
    return steer


VARIANTS = {"plain": lambda st: st, "norm-preserving": norm_preserving, "dummy at +1": dummy_on}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steer", type=Path, default=ROOT / "artifacts" / "steers" / "sentiment.safetensors")
    ap.add_argument("--per-domain", type=int, default=12)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--grid", default="1,1.5,2,3")
    ap.add_argument("--variants", default="plain,norm-preserving", help=f"of {list(VARIANTS)}")
    args = ap.parse_args()

    pin_threads()
    header("norm_preserving: LM-Steer with and without rescaling to ‖h‖, at the perplexity budget")
    t0 = time.perf_counter()
    lm = load_lm("default", device="cpu")
    prompts = heldout_prompts(args.per_domain, words=5, seed=0)
    grid = [float(x) for x in args.grid.split(",")]
    print(f"# {len(prompts)} held-out prompts (news, encyclopedia, product) × {args.samples} samples × "
          f"{args.new_tokens} tokens; budget +{args.budget:.0%}; |s| in {grid}")
    base = None
    for name in args.variants.split(","):
        steer = VARIANTS[name](Steer.load(args.steer, expect_fingerprint=lm.fingerprint))
        m = Measurer(lm, prompts, steer=steer, samples=args.samples, max_new_tokens=args.new_tokens, base=base)
        base = m.measure(0.0)
        print(f"\n## {name}")
        print("| s | pos at −s | pos at +s | swing | Δppl (worse side) | distinct-2 (worse side) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for s in grid:
            plus, minus = m.measure(s), m.measure(-s)
            print(f"| {s:g} | {minus['control']:.3f} | {plus['control']:.3f} | {plus['control'] - minus['control']:+.3f} "
                  f"| {max(m.ppl_increase(plus), m.ppl_increase(minus)):+.1%} | "
                  f"{min(plus['distinct_2'], minus['distinct_2']):.3f} |", flush=True)
        probes = [Probe(s, *m(s)) for s in m.rows]
        ip, im = isotonic_edge(probes, args.budget, 1), isotonic_edge(probes, args.budget, -1)
        print(f"at the budget (isotonic edge): s⁺ {ip.strength:+.3g}, s⁻ {im.strength:+.3g}, swing "
              f"{ip.control - im.control:+.3f} at {max(ip.ppl_increase, im.ppl_increase):+.1%}", flush=True)
    print(f"\n# total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
