"""The strength of a steer found by search, not picked from a grid.

Perplexity grows with |s|, so "the strongest control within the perplexity budget" is, to first order, "the
largest |s| whose perplexity increase stays within the budget". A grid either wastes evaluations far from that
point or misses it (the sentiment grid ±1, ±2, ±3 put the budget between 2 and 3; the ActAdd grid ±1 had every
point 300× over it, so the recommendation was a strength where the steer did nothing useful). Here the budget
edge is bracketed by growing |s| geometrically from ``start`` until the budget breaks, then bisected for a few
steps: ~5–7 evaluations per side for a 10 % bracket.

Every evaluation should reuse the same paired random numbers (``steer_core.generate`` draws each row's uniforms
from (seed, prompt, sample), so calling ``generate`` with one seed at every strength does this): the difference
between two strengths is then not drowned in sampling noise, and the measured perplexity is close to monotone.
Noise can still make it non-monotone; the search keeps the invariant "lo is in budget, hi is over" and returns lo,
the largest strength it *measured* within budget.

The functions take a callable ``evaluate_at(s) -> (control, ppl_increase)`` so they run without a model (tests
use a synthetic monotone function). Two-sided controls (sentiment: the swing between +s and −s) search each side
separately: a steer may tolerate more on one side than on the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

#: s -> (control, relative judge-perplexity increase over the unsteered model at the same prompts and samples)
EvaluateAt = Callable[[float], tuple[float, float]]


@dataclass(frozen=True)
class Probe:
    """One evaluation of the search."""

    strength: float
    control: float
    ppl_increase: float

    def __iter__(self):
        """Unpacks as ``evaluate_at`` returns: ``control, ppl_increase = probe``."""
        return iter((self.control, self.ppl_increase))

    def within(self, budget: float) -> bool:
        """In budget: a finite perplexity increase no larger than ``budget``."""
        return math.isfinite(self.ppl_increase) and self.ppl_increase <= budget


@dataclass
class SideResult:
    """The largest in-budget strength found on one side (signed), with what it measured and how it was found."""

    strength: float
    control: float
    ppl_increase: float
    bracket: tuple[float, float | None]  # |s| known in budget, |s| known over budget (None: never broke it)
    probes: list[Probe] = field(default_factory=list)  # in the order they were evaluated
    reason: str = ""


@dataclass
class TwoSidedResult:
    """Both sides of a two-sided search: ``swing`` = control at +s⁺ minus control at −s⁻."""

    plus: SideResult
    minus: SideResult
    zero: Probe
    evaluations: int = 0  # calls of ``evaluate_at`` the search made (known strengths are not re-evaluated)

    @property
    def swing(self) -> float:
        return self.plus.control - self.minus.control

    @property
    def ppl_increase(self) -> float:
        return max(self.plus.ppl_increase, self.minus.ppl_increase)


class _Memo:
    """``evaluate_at`` with memory: a strength is evaluated once, whoever asks (and known probes seed it)."""

    def __init__(self, evaluate_at: EvaluateAt, known: Mapping[float, tuple[float, float]] | None = None) -> None:
        self.fn = evaluate_at
        self.cache: dict[float, Probe] = {float(s): Probe(float(s), float(c), float(p))
                                          for s, (c, p) in (known or {}).items()}
        self.new: list[Probe] = []

    def __call__(self, s: float) -> Probe:
        s = float(s)
        if s not in self.cache:
            c, p = self.fn(s)
            self.cache[s] = Probe(s, float(c), float(p))
            self.new.append(self.cache[s])
        return self.cache[s]


def search_side(
    evaluate_at: EvaluateAt,
    budget: float,
    *,
    sign: int = 1,
    start: float = 1.0,
    grow: float = 2.0,
    max_strength: float = 64.0,
    steps: int = 4,
    rel_tol: float = 0.1,
    zero: tuple[float, float] | None = None,
    known: Mapping[float, tuple[float, float]] | None = None,
) -> SideResult:
    """The largest |s| on one side (``sign`` ±1) whose perplexity increase stays within ``budget``.

    Bracket: |s| = ``start``, ×``grow`` while in budget (at most up to ``max_strength``); then bisect the
    bracket ``steps`` times or until it is narrower than ``rel_tol`` × its upper end. ``zero`` is the (control,
    ppl increase) at s = 0 if already measured (it is the in-budget lower end when ``start`` already breaks the
    budget); ``known`` are earlier evaluations (signed strength → (control, ppl increase)), e.g. a grid, which
    narrow the initial bracket and are never re-evaluated. Returns the in-budget end of the final bracket.
    """
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign}")
    if not (start > 0 and grow > 1 and max_strength >= start and steps >= 0 and 0 < rel_tol < 1):
        raise ValueError("need start > 0, grow > 1, max_strength >= start, steps >= 0 and 0 < rel_tol < 1")
    memo = _Memo(evaluate_at, known)
    at = lambda m: memo(sign * m)  # noqa: E731 - magnitude → probe on this side
    zero_probe = Probe(0.0, *zero) if zero is not None else memo(0.0)
    # the bracket from what is already known on this side: largest in-budget below the smallest over-budget
    side = sorted((abs(p.strength), p) for p in memo.cache.values() if p.strength * sign > 0)
    over = [m for m, p in side if not p.within(budget)]
    hi: float | None = over[0] if over else None
    ins = [m for m, p in side if p.within(budget) and (hi is None or m < hi)]
    lo = ins[-1] if ins else 0.0
    if hi is None:  # grow until the budget breaks
        m = max(start, lo * grow) if lo else start
        while True:
            if at(m).within(budget):
                lo = m
                if m >= max_strength:
                    break
                m = min(m * grow, max_strength)
            else:
                hi = m
                break
    for _ in range(steps):
        if hi is None or (hi - lo) <= rel_tol * hi:
            break
        mid = (lo + hi) / 2
        if at(mid).within(budget):
            lo = mid
        else:
            hi = mid
    best = zero_probe if lo == 0.0 else at(lo)
    if hi is None:
        why = f"|s| = {lo:g} is still within the +{budget:.0%} budget (the search stops at {max_strength:g})"
    elif lo == 0.0:
        why = f"even |s| = {hi:g} breaks the +{budget:.0%} budget: no strength on this side is within it"
    else:
        why = (f"|s| = {lo:g} is within the +{budget:.0%} budget ({best.ppl_increase:+.1%}), {hi:g} is not "
               f"({memo(sign * hi).ppl_increase:+.1%})")
    return SideResult(sign * lo if lo else 0.0, best.control, best.ppl_increase, (lo, hi), list(memo.new), why)


def search_two_sided(
    evaluate_at: EvaluateAt,
    budget: float,
    *,
    known: Mapping[float, tuple[float, float]] | None = None,
    **kw,
) -> TwoSidedResult:
    """:func:`search_side` on both sides, sharing one evaluation at s = 0 (and any ``known`` ones)."""
    memo = _Memo(evaluate_at, known)
    zero = memo(0.0)
    seen = {s: (p.control, p.ppl_increase) for s, p in memo.cache.items()}
    plus = search_side(memo, budget, sign=1, zero=(zero.control, zero.ppl_increase), known=seen, **kw)
    seen = {s: (p.control, p.ppl_increase) for s, p in memo.cache.items()}
    minus = search_side(memo, budget, sign=-1, zero=(zero.control, zero.ppl_increase), known=seen, **kw)
    return TwoSidedResult(plus, minus, zero, len(memo.new))


def isotonic(values: Sequence[float]) -> list[float]:
    """The non-decreasing least-squares fit of ``values`` (in their order): pool adjacent violators."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, w2), (m1, w1) = blocks[-2], blocks[-1]
            blocks[-2:] = [[(m2 * w2 + m1 * w1) / (w2 + w1), w2 + w1]]
    out: list[float] = []
    for m, w in blocks:
        out += [m] * int(w)
    return out


def isotonic_edge(probes: Sequence[Probe], budget: float, sign: int = 1) -> Probe:
    """The largest-|s| probe on one side whose perplexity increase, *fitted as non-decreasing in |s|* over all of
    that side's probes (and s = 0), is within ``budget``.

    Bisection trusts each single measurement; at a few dozen samples per probe the judge perplexity is not monotone
    in |s| (noise of ±5–10 points), so one lucky probe past the true edge can be returned. The isotonic fit uses
    every probe of the side at once, so a lone low reading beyond higher ones is pooled with them."""
    side = sorted((p for p in probes if p.strength * sign > 0 or p.strength == 0.0), key=lambda p: abs(p.strength))
    if not side or side[0].strength != 0.0:
        side = [Probe(0.0, math.nan, 0.0), *side]
    fitted = isotonic([p.ppl_increase if math.isfinite(p.ppl_increase) else math.inf for p in side])
    ok = [p for p, f in zip(side, fitted) if f <= budget]
    return ok[-1] if ok else side[0]


def next_magnitude(
    candidates: Sequence[Mapping[str, float]],
    limit: float,
    *,
    rel_tol: float = 0.1,
    grow: float = 2.0,
    max_strength: float = 64.0,
) -> float | None:
    """The next magnitude to evaluate to locate the budget edge, or None when it is located well enough.

    ``candidates`` are the magnitudes already evaluated (``{"strength": m > 0, "ppl": p}``, ``p`` the worse side's
    perplexity for a two-sided control); ``limit`` is the allowed perplexity. The perplexities are first fitted
    as non-decreasing in the magnitude (:func:`isotonic`: at a few dozen samples per strength a single reading is
    noisy), which splits the magnitudes into an in-budget prefix and an over-budget rest. Between the largest
    in-budget one (or 0) and the smallest over-budget one: the midpoint, unless that bracket is already narrower than
    ``rel_tol`` × its upper end. When every magnitude is in budget: ``grow`` × the largest, up to ``max_strength``.
    """
    pts = sorted((float(c["strength"]), float(c["ppl"])) for c in candidates if float(c["strength"]) > 0)
    if not pts:
        return None
    fitted = isotonic([p if math.isfinite(p) else math.inf for _, p in pts])
    inside = [m for (m, _), f in zip(pts, fitted) if f <= limit]
    over = [m for (m, _), f in zip(pts, fitted) if f > limit]
    lo = inside[-1] if inside else 0.0
    if not over:
        nxt = min(lo * grow, max_strength)
        return nxt if nxt > lo else None
    hi = over[0]
    if hi - lo <= rel_tol * hi:
        return None
    return round((lo + hi) / 2, 6)
