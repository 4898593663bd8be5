"""Scorers that ship their model inside a PyPI wheel, so they work offline: alt-profanity-check and VADER."""

from __future__ import annotations

from typing import Literal, Sequence

from .base import Scorer, register

POS_THRESHOLD = 0.05  # VADER's cut-off; evaluation counts compound > 0.05 as positive and < -0.05 as negative


class ProfanityScorer(Scorer):
    """alt-profanity-check's probability of offensive language (TF-IDF + calibrated linear SVM).

    One ``predict_prob`` call per batch: it costs ~30 ms per 1,000 texts batched but ~10 s one at a time. It mostly
    detects profanity, not subtler toxicity.
    """

    name = "profanity"
    kind = "toxicity"

    def __init__(self, batch_size: int = 4096) -> None:
        self.batch_size = batch_size
        self._predict = None

    def _score_batch(self, texts: list[str]) -> Sequence[float]:
        if self._predict is None:
            from profanity_check import predict_prob

            self._predict = predict_prob
        return self._predict(texts).tolist()


class VaderScorer(Scorer):
    """VADER compound sentiment in [-1, 1] (a lexicon, no model download); higher is more positive."""

    name = "vader"
    kind = "sentiment"
    positive_above = POS_THRESHOLD
    negative_below = -POS_THRESHOLD

    def __init__(self, batch_size: int = 1024) -> None:
        self.batch_size = batch_size
        self._analyzer = None

    def _score_batch(self, texts: list[str]) -> Sequence[float]:
        if self._analyzer is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            self._analyzer = SentimentIntensityAnalyzer()
        return [self._analyzer.polarity_scores(t)["compound"] for t in texts]


def sentiment_label(compound: float, threshold: float = POS_THRESHOLD) -> Literal["positive", "negative", "neutral"]:
    """Classify a VADER compound: positive above ``threshold``, negative below ``-threshold``, else neutral."""
    if compound > threshold:
        return "positive"
    if compound < -threshold:
        return "negative"
    return "neutral"


@register("profanity", "profanity")
def _profanity(arg: str | None = None, **kwargs: object) -> Scorer:
    return ProfanityScorer(**kwargs)  # type: ignore[arg-type]


@register("vader", "vader")
def _vader(arg: str | None = None, **kwargs: object) -> Scorer:
    return VaderScorer(**kwargs)  # type: ignore[arg-type]
