"""Scorers that ship their model inside a PyPI wheel, so they work offline: alt-profanity-check, VADER and
TextBlob (the pattern lexicon: a second sentiment lexicon by other authors, to check that a steer did not just
learn VADER's words)."""

from __future__ import annotations

from typing import Sequence

from .base import Cuts, Scorer, register


class ProfanityScorer(Scorer):
    """alt-profanity-check's probability of offensive language (TF-IDF + calibrated linear SVM).

    One ``predict_prob`` call per batch, because one text at a time is orders of magnitude slower. It mostly detects
    profanity, not subtler toxicity.
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
    """VADER compound sentiment in [-1, 1] (a lexicon, no model download); higher is more positive.

    VADER's own cut-offs: a compound > 0.05 is positive, < -0.05 negative (strictly; 0.05 itself is neutral).
    """

    name = "vader"
    kind = "sentiment"
    cuts = Cuts(positive_above=0.05, negative_below=-0.05)

    def __init__(self, batch_size: int = 1024) -> None:
        self.batch_size = batch_size
        self._analyzer = None

    def _score_batch(self, texts: list[str]) -> Sequence[float]:
        if self._analyzer is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            self._analyzer = SentimentIntensityAnalyzer()
        return [self._analyzer.polarity_scores(t)["compound"] for t in texts]


@register("profanity", "profanity")
def _profanity(arg: str | None = None, **kwargs: object) -> Scorer:
    return ProfanityScorer(**kwargs)  # type: ignore[arg-type]


class TextBlobScorer(Scorer):
    """TextBlob's polarity in [-1, 1] (the pattern library's adjective lexicon, shipped in the wheel; no download);
    higher is more positive, > 0 positive and < 0 negative.

    An independent check on VADER: another lexicon, by other authors, with its own rules for negation and
    intensifiers. When training data are filtered by VADER (``data.agree_with``), a swing that TextBlob sees too
    is not just VADER's vocabulary."""

    name = "textblob"
    kind = "sentiment"
    cuts = Cuts(positive_above=0.0, negative_below=0.0)

    def __init__(self, batch_size: int = 1024) -> None:
        self.batch_size = batch_size

    def _score_batch(self, texts: list[str]) -> Sequence[float]:
        from textblob import TextBlob

        return [float(TextBlob(t).sentiment.polarity) for t in texts]


@register("textblob", "textblob")
def _textblob(arg: str | None = None, **kwargs: object) -> Scorer:
    return TextBlobScorer(**kwargs)  # type: ignore[arg-type]


@register("vader", "vader")
def _vader(arg: str | None = None, **kwargs: object) -> Scorer:
    return VaderScorer(**kwargs)  # type: ignore[arg-type]
