"""Scorers for steer evaluation: toxicity, sentiment, fluency (judge-LM perplexity) and diversity.

``get_scorer(name, **kwargs)`` builds one by name; names in ``known_scorers()``. Model libraries load lazily.
``conditional_perplexity`` (in ``perplexity``, which imports torch) is loaded on first access.
"""

from typing import Any

from . import detox as _detox  # noqa: F401  (registers detoxify)
from . import hf as _hf  # noqa: F401  (registers hf:<model>)
from . import jigsaw as _jigsaw  # noqa: F401  (registers jigsaw)
from . import llm as _llm  # noqa: F401  (registers llm[:<model>])
from .base import Cuts, Kind, Scorer, ScorerUnavailable, batched, cuts_of, get_scorer, known_scorers, register
from .detox import DetoxifyScorer
from .diversity import distinct_n, ngrams
from .hf import HFScorer, pick_label
from .jigsaw import JigsawScorer
from .lexical import ProfanityScorer, TextBlobScorer, VaderScorer
from .llm import LLMJudgeScorer

__all__ = [
    "Cuts", "Kind", "Scorer", "ScorerUnavailable", "batched", "cuts_of", "get_scorer", "known_scorers", "register",
    "DetoxifyScorer", "HFScorer", "JigsawScorer", "LLMJudgeScorer", "ProfanityScorer", "TextBlobScorer",
    "VaderScorer", "pick_label", "distinct_n", "ngrams", "conditional_perplexity",
]


def __getattr__(name: str) -> Any:
    if name == "conditional_perplexity":
        from .perplexity import conditional_perplexity

        return conditional_perplexity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
