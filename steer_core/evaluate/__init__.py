"""Evaluation: sample every system on the same prompts with paired random numbers, score control, fluency and
diversity, recommend a strength, and write one metrics document.

- ``driver``: the one :func:`evaluate` (a fixed plan of shards; executors inject where shards run);
- ``protocol``: systems, the sampling calls, prompt identity and cross-fitting folds;
- ``document``: rows per strength, each system's recommendation, the headline;
- ``recommend`` and ``search``: the strongest control within the perplexity budget, and the search for it;
- ``metrics``: control metrics, bootstrap and paired intervals, power;
- ``baselines``: the ActAdd baseline; ``report``: plots and the HTML report.

Submodules load on first use, so ``steer_core.gate`` can read ``metrics`` without loading a model library.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"evaluate": "driver", "System": "protocol", "Sample": "protocol"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
