"""Diversity of generations: distinct-n (the LM-Steer / DExperts protocol).

It works on whitespace tokens, so the numbers do not depend on which LM's tokenizer produced the text.
"""

from __future__ import annotations

from typing import Sequence


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """Whitespace n-grams of one text."""
    toks = text.split()
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams pooled over ``texts`` (e.g. one prompt's samples); 0.0 when there are none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for t in texts for g in ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0
