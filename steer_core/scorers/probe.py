"""A style scorer learned from the user's labelled texts: a logistic-regression probe on the frozen LM's mean-pooled
final hidden states.

Why: the self-generated recipe (label the base model's own continuations, train on the extremes) needs a scorer
for the style, and most styles a user steers (formality, politeness, a brand's voice) have none. What a user has is
labelled examples; the LM's own hidden states separate many styles linearly, so a probe on them is a scorer for any
style the labels define. It is checked on a held-out fifth of the labelled texts before it labels anything.

The probe is a few hundred numbers (one weight per hidden dimension, the standardisation, a bias) and is stored as
plain JSON in the steer's data card, versioned with the data; it is never pickled.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

#: texts -> (n, d) mean-pooled final hidden states of the frozen LM
EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass
class Probe:
    """P(``high`` | text) = sigmoid(weight · (x − mean) / scale + bias), x the text's mean-pooled hidden state."""

    high: str
    low: str
    weight: list[float]
    bias: float
    mean: list[float]
    scale: list[float]
    accuracy: float  # on the held-out labelled texts
    n_train: int
    n_heldout: int
    pooling: str = "mean of the final hidden states of every predicting position"

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(high) for each row of ``x`` (n, d)."""
        z = (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        logits = z @ np.asarray(self.weight) + self.bias
        return 1.0 / (1.0 + np.exp(-logits))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Probe":
        return cls(**d)


def fit_probe(x: np.ndarray, is_high: np.ndarray, heldout: np.ndarray, high: str, low: str) -> Probe:
    """Fit the probe on the rows not ``heldout`` (L2-regularised logistic regression on standardised features,
    classes weighted equally) and report its accuracy on the held-out rows. Raises ``ValueError`` when a part lacks
    a class."""
    from sklearn.linear_model import LogisticRegression

    x, y, held = np.asarray(x, dtype=np.float64), np.asarray(is_high, dtype=bool), np.asarray(heldout, dtype=bool)
    for part, name in ((~held, "training"), (held, "held-out")):
        if len(set(y[part].tolist())) < 2:
            raise ValueError(f"the probe's {name} texts hold only one label ({high if y[part].any() else low!r}); "
                             f"it needs both {high!r} and {low!r}")
    mean = x[~held].mean(0)
    scale = x[~held].std(0)
    scale[scale < 1e-8] = 1.0
    z = (x - mean) / scale
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
    model.fit(z[~held], y[~held])
    probe = Probe(high, low, model.coef_[0].tolist(), float(model.intercept_[0]), mean.tolist(), scale.tolist(),
                  math.nan, int((~held).sum()), int(held.sum()))
    probe.accuracy = float(((probe.predict(x[held]) >= 0.5) == y[held]).mean())
    return probe


def mean_hidden_states(lm, texts: Sequence[str], max_length: int = 64, cache_dir: Path | None = None,
                       progress: bool = False) -> np.ndarray:
    """(n, d) mean of each text's final hidden states over its predicting positions, read through the hidden-state
    cache training uses (``steer_core.model.hidden.cached_hidden_states``: one body pass per text set, kept on disk). A
    text of one token has no predicting position: its row is the mean over every text's positions."""
    import torch

    from steer_core.model.hidden import cached_hidden_states

    cache, _ = cached_hidden_states(lm, list(texts), max_length, cache_dir, progress=progress)
    d = cache.h.shape[1]
    sums = torch.zeros(len(texts), d, dtype=torch.float64).index_add_(0, cache.text_index, cache.h.double())
    counts = torch.zeros(len(texts), dtype=torch.float64).index_add_(0, cache.text_index,
                                                                    torch.ones(cache.tokens, dtype=torch.float64))
    out = sums / counts.clamp_min(1)[:, None]
    empty = counts == 0
    if empty.any():
        out[empty] = cache.h.double().mean(0)
    return out.numpy()
