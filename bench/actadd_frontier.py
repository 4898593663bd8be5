"""Control vs judge-perplexity frontier: the trained LM-Steer sentiment steer vs the fair ActAdd baseline.

Both methods are measured in one process on the same held-out prompts from three domains (news, encyclopedia,
product tweets: steer_core.data.corpora), with the same paired random numbers per (prompt, sample) at every strength,
judged by the unsteered base model. For each method: a few strengths each side (the frontier), then the largest
|s| within the perplexity budget on each side found by bisection (steer_core.evaluate.search), and the control
AT the budget: positive rate at +s⁺ and −s⁻, the swing between them, per domain.

ActAdd's layer is chosen first by a small sweep (steer_core.evaluate.baselines.choose_layer) on *other* held-out prompts
(seed 1, fewer samples and tokens), by its swing at the budget.

    source env.sh && python bench/actadd_frontier.py            # ~10-15 min on one core
    python bench/actadd_frontier.py --per-domain 4 --samples 1 --new-tokens 8 --layers 15   # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import ROOT, header, pin_threads

from steer_core.evaluate.baselines import choose_layer, decoder_layers, default_layer_candidates, fit_actadd
from steer_core.data.records import load_jsonl
from steer_core.frontier import Measurer
from steer_core.data.corpora import heldout_prompts
from steer_core.model.lm import load_lm
from steer_core.model.steer import Steer
from steer_core.evaluate.search import Probe, isotonic_edge, search_two_sided


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def print_frontier(name: str, m: Measurer, domains: list[str]) -> None:
    base = m.measure(0.0)
    print(f"\n## {name}: frontier (every strength evaluated, in order of strength)")
    print("| s | positive rate | judge ppl | Δppl | distinct-2 | " + " | ".join(f"{d} pos" for d in domains) + " |")
    print("| --- " * (5 + len(domains)) + "|")
    for s in sorted(m.rows):
        r = m.rows[s]
        print(f"| {s:+.3g} | {r['control']:.3f} | {r['ppl']:.2f} | {r['ppl'] / base['ppl'] - 1:+.1%} | "
              f"{r['distinct_2']:.3f} | " + " | ".join(f"{r['sets'][d]['control']:.3f}" for d in domains) + " |")


def at_budget(name: str, m: Measurer, res, domains: list[str]) -> dict:
    plus, minus = m.measure(res.plus.strength), m.measure(res.minus.strength)
    base = m.measure(0.0)
    out = {"method": name, "s_plus": res.plus.strength, "s_minus": res.minus.strength,
           "pos_plus": plus["control"], "pos_minus": minus["control"], "swing": res.swing,
           "ppl_increase": res.ppl_increase, "base_pos": base["control"], "evaluations": res.evaluations,
           "reason_plus": res.plus.reason, "reason_minus": res.minus.reason, "domains": {}}
    for d in domains:
        out["domains"][d] = {"swing": plus["sets"][d]["control"] - minus["sets"][d]["control"],
                             "ppl_increase": max(m.ppl_increase(plus, d), m.ppl_increase(minus, d)),
                             "pos_plus": plus["sets"][d]["control"], "pos_minus": minus["sets"][d]["control"],
                             "base_pos": base["sets"][d]["control"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steer", type=Path, default=ROOT / "artifacts" / "steers" / "sentiment.safetensors")
    ap.add_argument("--fit-texts", type=Path, default=ROOT / "data" / "prepared" / "sentiment" / "train.jsonl",
                    help="ActAdd's contrast texts: the sentiment steer's own training set (first 256, as the pipeline)")
    ap.add_argument("--per-domain", type=int, default=12)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--steer-grid", type=floats, default=floats("1,2,3"))
    ap.add_argument("--actadd-grid", type=floats, default=floats("0.1,0.2,0.4"))
    ap.add_argument("--layers", type=str, default="", help="ActAdd candidate layers (default 1/4, 1/3, 1/2, 2/3)")
    ap.add_argument("--sweep-per-domain", type=int, default=4)
    ap.add_argument("--sweep-new-tokens", type=int, default=12)
    ap.add_argument("--steps", type=int, default=3, help="bisection steps per side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--free", action="store_true", help="plain top-p for both methods (the shipped params sample "
                    "within the base model's nucleus, evaluate.base_nucleus; ActAdd then runs beside unsteered twins)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    pin_threads()
    header("actadd_frontier: LM-Steer sentiment steer vs fair ActAdd, control at the perplexity budget")
    t0 = time.perf_counter()
    lm = load_lm("default", device="cpu")
    steer = Steer.load(args.steer, expect_fingerprint=lm.fingerprint)
    fit = load_jsonl(args.fit_texts)[:256]
    texts, values = [r["text"] for r in fit], [float(r["value"]) for r in fit]
    prompts = heldout_prompts(args.per_domain, words=5, seed=args.seed)
    domains = list(dict.fromkeys(p["set"] for p in prompts))
    measured = {p["prompt"] for p in prompts}
    sweep_prompts = [p for p in heldout_prompts(args.per_domain + args.sweep_per_domain, 5, seed=args.seed + 1)
                     if p["prompt"] not in measured]
    sweep_prompts = [p for d in domains for p in [q for q in sweep_prompts if q["set"] == d][: args.sweep_per_domain]]
    print(f"# prompts: {len(prompts)} held-out ({', '.join(domains)}) × {args.samples} samples × {args.new_tokens} "
          f"tokens; budget +{args.budget:.0%} judge perplexity (judge = the base model); ActAdd fit on "
          f"{len(texts)} training texts; layer sweep on {len(sweep_prompts)} other prompts × 2 × "
          f"{args.sweep_new_tokens} tokens; sampling: {'plain top-p' if args.free else 'within the base nucleus'}")
    search_kw = dict(steps=args.steps, rel_tol=0.1)

    # 1. ActAdd's layer, by its swing at the budget on the sweep prompts
    n_layers = len(decoder_layers(lm))
    layers = [int(x) for x in args.layers.split(",")] if args.layers else default_layer_candidates(n_layers)
    t = time.perf_counter()

    def control_at_budget(actadd):
        m = Measurer(lm, sweep_prompts, actadd=actadd, samples=2, max_new_tokens=args.sweep_new_tokens,
                     seed=args.seed, base_nucleus=not args.free)
        res = search_two_sided(m, args.budget, start=args.actadd_grid[0], grow=2.0, max_strength=4.0, **search_kw)
        return res.swing, {"s_plus": res.plus.strength, "s_minus": res.minus.strength,
                           "ppl_increase": res.ppl_increase, "evaluations": res.evaluations}

    choice = choose_layer(lm, texts, values, layers, control_at_budget)
    actadd = choice.actadd
    print(f"\n## ActAdd layer sweep ({time.perf_counter() - t:.0f} s; {n_layers} layers; sinks excluded, "
          f"multipliers of the typical norm)")
    print("| layer | typical ‖h‖ | s⁺ | s⁻ | swing at budget | Δppl | evaluations |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in choice.table:
        print(f"| {r['layer']} | {r['typical_norm']:.2f} | {r['s_plus']:+.3g} | {r['s_minus']:+.3g} | "
              f"{r['control']:+.3f} | {r['ppl_increase']:+.1%} | {r['evaluations']} |")
    print(f"chosen layer: {actadd.layer}")

    # 2. the frontier and the budget edge of each method on the held-out prompts
    results = []
    shared_base = None
    for name, kw, grid in (("LM-Steer sentiment", {"steer": steer}, args.steer_grid),
                           (f"ActAdd (layer {actadd.layer})", {"actadd": actadd}, args.actadd_grid)):
        t = time.perf_counter()
        m = Measurer(lm, prompts, samples=args.samples, max_new_tokens=args.new_tokens, seed=args.seed,
                     base=shared_base, base_nucleus=not args.free, **kw)
        for s in grid:
            m(s), m(-s)
        shared_base = m.measure(0.0)  # the same base samples (s = 0, same random numbers) for both methods
        known = {s: m(s) for s in list(m.rows)}
        res = search_two_sided(m, args.budget, known=known, start=grid[0], grow=2.0,
                               max_strength=max(grid) * 4, **search_kw)
        print_frontier(name, m, domains)
        out = at_budget(name, m, res, domains)
        out["seconds"] = time.perf_counter() - t
        out["rows"] = {str(s): {k: v for k, v in r.items() if k != "examples"} for s, r in sorted(m.rows.items())}
        out["examples"] = {f"{s:+g}": m.rows[s]["examples"] for s in (res.minus.strength, 0.0, res.plus.strength)}
        results.append(out)
        print(f"bisection: + side {res.plus.reason}; − side {res.minus.reason} "
              f"({res.evaluations} evaluations beyond the grid; {out['seconds']:.0f} s for this method)")
        probes = [Probe(s, *m(s)) for s in m.rows]  # every probe of the run, memoised: no new sampling
        ip, im = isotonic_edge(probes, args.budget, 1), isotonic_edge(probes, args.budget, -1)
        out["isotonic"] = {"s_plus": ip.strength, "s_minus": im.strength, "swing": ip.control - im.control,
                           "ppl_increase": max(ip.ppl_increase, im.ppl_increase)}
        print(f"isotonic edge (Δppl fitted non-decreasing in |s| over all probes): s⁺ {ip.strength:+.3g}, "
              f"s⁻ {im.strength:+.3g}, swing {ip.control - im.control:+.3f} at "
              f"{max(ip.ppl_increase, im.ppl_increase):+.1%}")

    # 3. side by side at the budget
    print(f"\n## At the +{args.budget:.0%} budget (largest in-budget |s| per side, by bisection)")
    print("| method | s⁻ | s⁺ | pos at s⁻ | base pos | pos at s⁺ | swing | Δppl (worse side) | "
          + " | ".join(f"{d} swing (Δppl)" for d in domains) + " |")
    print("| --- " * (8 + len(domains)) + "|")
    for o in results:
        print(f"| {o['method']} | {o['s_minus']:+.3g} | {o['s_plus']:+.3g} | {o['pos_minus']:.3f} | "
              f"{o['base_pos']:.3f} | {o['pos_plus']:.3f} | **{o['swing']:+.3f}** | {o['ppl_increase']:+.1%} | "
              + " | ".join(f"{o['domains'][d]['swing']:+.3f} ({o['domains'][d]['ppl_increase']:+.0%})"
                           for d in domains) + " |")
    for o in results:
        print(f"\n{o['method']} examples:")
        for s, ex in o["examples"].items():
            print(f"  s={s}: " + " | ".join(repr(e[:70]) for e in ex))
    print(f"\n# total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "layer_sweep": choice.table, "results": results}, indent=2, default=float))


if __name__ == "__main__":
    main()
