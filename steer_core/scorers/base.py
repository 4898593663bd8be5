"""The Scorer interface and the name registry.

Evaluation asks for scorers by name (``profanity``, ``vader``, ``detoxify:unbiased``, ``hf:<model>``) so the
metric a steer is judged by is a setting in ``params.yaml``, not code. Heavy libraries are imported lazily, when a
scorer is built or first used, so importing ``steer_core.scorers`` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence, TypeVar

from steer_core.errors import SteerError

Kind = Literal["toxicity", "sentiment"]
T = TypeVar("T")


class ScorerUnavailable(SteerError):
    """A scorer whose model or library cannot be reached; the message says what to pass instead."""


@dataclass(frozen=True)
class Cuts:
    """Where a scorer's number becomes a label (every comparison strict): a sample is positive when its score is
    > ``positive_above`` and negative when < ``negative_below`` (sentiment); a prompt is toxic when one of its
    samples scores > ``toxic_above`` (the toxicity probability, as in the paper). The defaults suit probabilities."""

    positive_above: float = 0.5
    negative_below: float = 0.5
    toxic_above: float = 0.5


class Scorer:
    """Scores texts in batches. ``score`` returns one float per text, in order.

    Toxicity scorers return a probability of toxic/offensive in [0, 1]; sentiment scorers return a value where
    higher means more positive (a probability, or VADER's compound in [-1, 1]).
    """

    name: str = "scorer"
    kind: Kind = "toxicity"
    batch_size: int = 32
    #: this scorer's cut-offs; evaluation, transfer measurement and the metrics read them from here
    cuts: Cuts = Cuts()

    def score(self, texts: Sequence[str]) -> list[float]:
        texts = [str(t) for t in texts]
        out: list[float] = []
        for chunk in batched(texts, self.batch_size):
            out.extend(float(x) for x in self._score_batch(chunk))
        if len(out) != len(texts):  # pragma: no cover - a scorer bug, never silent misalignment
            raise RuntimeError(f"scorer {self.name} returned {len(out)} scores for {len(texts)} texts")
        return out

    def _score_batch(self, texts: list[str]) -> Sequence[float]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} kind={self.kind!r}>"


def cuts_of(scorer: object) -> Cuts:
    """A scorer's cut-offs (``Scorer.cuts``); a duck-typed scorer without its own has the defaults."""
    return getattr(scorer, "cuts", Cuts())


def batched(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive chunks of at most ``size`` items."""
    size = max(1, int(size))
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


# name (or prefix before ':') -> factory(arg after ':' or None, **kwargs)
_REGISTRY: dict[str, Callable[..., Scorer]] = {}
_HELP: dict[str, str] = {}


def register(name: str, help: str) -> Callable[[Callable[..., Scorer]], Callable[..., Scorer]]:
    """Register a scorer factory under ``name``; ``help`` is how it is listed in errors (e.g. ``hf:<model>``)."""

    def deco(factory: Callable[..., Scorer]) -> Callable[..., Scorer]:
        _REGISTRY[name] = factory
        _HELP[name] = help
        return factory

    return deco


def known_scorers() -> list[str]:
    """The accepted name forms, for messages and the CLI."""
    return [_HELP[k] for k in sorted(_HELP)]


def get_scorer(name: str, **kwargs: object) -> Scorer:
    """Build the scorer called ``name`` (``base`` or ``base:arg``); kwargs go to its factory."""
    base, sep, arg = name.partition(":")
    factory = _REGISTRY.get(base.strip().lower())
    if factory is None:
        raise ValueError(f"unknown scorer {name!r}; known scorers: {', '.join(known_scorers())}")
    return factory(arg.strip() if sep else None, **kwargs)
