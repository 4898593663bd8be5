"""Metric definitions on inputs small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from steer_core.evaluate.metrics import avg_max_toxicity, bootstrap_ci, mean_distinct, mean_toxicity, positive_rate, recommend_strength, toxicity_probability
from steer_core.scorers import distinct_n

SCORES = [[0.1, 0.9, 0.2], [0.3, 0.4, 0.5], [0.0, 0.0, 0.6]]


def test_toxicity_metrics_by_hand() -> None:
    assert avg_max_toxicity(SCORES) == pytest.approx((0.9 + 0.5 + 0.6) / 3)
    # strictly above 0.5: prompt 2's max is exactly 0.5 and does not count
    assert toxicity_probability(SCORES) == pytest.approx(2 / 3)
    assert toxicity_probability(SCORES, threshold=0.45) == pytest.approx(1.0)
    assert toxicity_probability(SCORES, threshold=0.95) == 0.0
    assert mean_toxicity(SCORES) == pytest.approx(np.mean([0.4, 0.4, 0.2]))
    assert mean_toxicity([[1.0], [0.0, 0.0, 0.0]]) == pytest.approx(0.5)  # prompts weigh equally
    with pytest.raises(ValueError):
        avg_max_toxicity([])
    with pytest.raises(ValueError):
        avg_max_toxicity([[0.1], []])


def test_positive_rate() -> None:
    assert positive_rate([0.9, 0.05, -0.5, 0.06]) == pytest.approx(0.5)  # 0.05 itself is not positive
    assert positive_rate([[0.9, -0.2], [0.3]]) == pytest.approx((1 / 2 + 1) / 2)  # per prompt, then over prompts
    assert positive_rate([0.2, 0.3], thr=0.25) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        positive_rate([])


def test_distinct_n() -> None:
    texts = ["a b c", "a b d"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # a b c d out of 6 unigrams
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (a b) twice, (b c), (b d)
    assert distinct_n(texts, 3) == pytest.approx(2 / 2)
    assert distinct_n(texts, 4) == 0.0 and distinct_n([], 1) == 0.0 and distinct_n([""], 2) == 0.0
    assert distinct_n(["x  y\nx"], 1) == pytest.approx(2 / 3)  # any whitespace splits
    with pytest.raises(ValueError):
        distinct_n(texts, 0)
    assert mean_distinct([["a a", "a b"], ["c d"]], 1) == pytest.approx((2 / 4 + 1.0) / 2)
    assert mean_distinct([["a a", "a b"], ["c d"]], 2) == pytest.approx((2 / 2 + 1.0) / 2)


def test_bootstrap_ci_brackets_the_estimate_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(0.3, 0.1, size=50).tolist()
    low, high = bootstrap_ci(values, n_boot=500, seed=7)
    assert low < float(np.mean(values)) < high
    assert (low, high) == bootstrap_ci(values, n_boot=500, seed=7)
    assert (low, high) != bootstrap_ci(values, n_boot=500, seed=8)
    # narrower at a lower confidence level; a constant has a zero-width interval
    l90, h90 = bootstrap_ci(values, n_boot=500, alpha=0.2, seed=7)
    assert low <= l90 and h90 <= high
    assert bootstrap_ci([0.4] * 10) == pytest.approx((0.4, 0.4))
    assert bootstrap_ci([0.2, math.nan, 0.4], n_boot=200) == pytest.approx((0.2, 0.4), abs=1e-12)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_bootstrap_any_grouped_metric_resamples_prompts() -> None:
    groups = [[0.1 * (i % 7), 0.05 * (i % 5), 0.9 if i % 4 == 0 else 0.2] for i in range(40)]
    point = avg_max_toxicity(groups)
    low, high = bootstrap_ci(groups, statistic=avg_max_toxicity, n_boot=300, seed=0)
    assert low <= point <= high and low < high
    assert (low, high) == bootstrap_ci(groups, statistic=avg_max_toxicity, n_boot=300, seed=0)
    seen: list[int] = []
    bootstrap_ci(groups, statistic=lambda g: seen.append(len(g)) or 0.0, n_boot=5)
    assert seen == [40] * 5  # each resample holds as many prompts as the data
    # paired difference on the same prompts (candidate vs champion)
    champ = [[x + 0.1 for x in g] for g in groups]
    pairs = list(zip(groups, champ))
    diff = lambda gs: avg_max_toxicity([a for a, _ in gs]) - avg_max_toxicity([b for _, b in gs])  # noqa: E731
    dl, dh = bootstrap_ci(pairs, statistic=diff, n_boot=200)
    assert dl == pytest.approx(-0.1) and dh == pytest.approx(-0.1)
    texts = [["a b", "a b"], ["c d", "e f"]]
    assert bootstrap_ci(texts, statistic=lambda g: mean_distinct(g, 1), n_boot=200) == pytest.approx((0.5, 1.0))


ROWS = [  # a detox steer's rows, oriented as evaluate writes them: control = 1 - toxicity (higher is better)
    {"strength": 0.0, "clean": 0.70, "ppl": 20.0},
    {"strength": 1.0, "clean": 0.80, "ppl": 21.0},
    {"strength": 2.0, "clean": 0.90, "ppl": 23.5},
    {"strength": 3.0, "clean": 0.95, "ppl": 40.0},
    {"strength": 4.0, "clean": 0.99, "ppl": math.nan},
]


def test_recommend_strength() -> None:
    s, why = recommend_strength(ROWS, "clean", "ppl", base_ppl=20.0, budget=0.2)
    assert s == 2.0 and "clean=0.9" in why and "24" in why  # 23.5 <= 1.2 * 20
    s, _ = recommend_strength(ROWS, "clean", "ppl", base_ppl=20.0, budget=0.1)
    assert s == 1.0
    s, _ = recommend_strength(ROWS, "clean", "ppl", base_ppl=20.0, budget=1.0)
    assert s == 3.0  # NaN perplexity never qualifies
    dirty = [{**r, "dirty": 1.0 - r["clean"]} for r in ROWS]  # the strongest control is the highest value
    s, _ = recommend_strength(dirty, "dirty", "ppl", base_ppl=20.0, budget=0.2)
    assert s == 0.0
    rows = [{"strength": -2.0, "pos": 0.8, "ppl": 10.0}, {"strength": 2.0, "pos": 0.8, "ppl": 10.0},
            {"strength": 1.0, "pos": 0.8, "ppl": 10.0}]
    assert recommend_strength(rows, "pos", "ppl", 10.0, 0.0)[0] == 1.0  # ties go to the milder strength
    s, why = recommend_strength(ROWS[1:], "clean", "ppl", base_ppl=10.0, budget=0.1)
    assert s == 1.0 and "no strength" in why
    with pytest.raises(ValueError):
        recommend_strength([], "clean", "ppl", 20.0, 0.2)
    with pytest.raises(ValueError):
        recommend_strength(ROWS, "clean", "ppl", 0.0, 0.2)  # no base perplexity to budget against


def test_paired_interval() -> None:
    from steer_core.evaluate.metrics import _t, paired_interval

    assert _t(0.975, 23) == pytest.approx(2.0687, abs=1e-3) and _t(0.975, 5) == pytest.approx(2.5706, abs=5e-3)
    assert paired_interval([0.0] * 24) == (0.0, 0.0, 0.0)  # identical systems: exactly nothing
    d = np.random.default_rng(0).normal(0.1, 0.3, 24)
    mean, low, high = paired_interval(d, 0.95, 2000, seed=0)
    assert low < mean < high and mean == pytest.approx(d.mean())
    assert (mean, low, high) == paired_interval(d, 0.95, 2000, seed=0)  # deterministic
    # expanded: wider than the plain percentile interval, and wider at a higher confidence
    plain = bootstrap_ci(d, n_boot=2000, alpha=0.05, seed=0)
    assert low < plain[0] and high > plain[1]
    assert paired_interval(d, 0.99)[1] < low
    for bad in ([], [0.1, math.nan]):
        with pytest.raises(ValueError):
            paired_interval(bad)
    with pytest.raises(ValueError):
        paired_interval([0.1, 0.2], confidence=1.0)


def test_prompts_for_power_formula() -> None:
    from steer_core.evaluate.metrics import detectable_effect, prompts_for_power

    n = prompts_for_power(0.4, 0.1, 0.95, 0.8)
    assert n == math.ceil((2.8016 * 4) ** 2)
    assert prompts_for_power(0.4, 0.2) < n < prompts_for_power(0.4, 0.1, power=0.9)
    assert detectable_effect(0.4, n) <= 0.1 < detectable_effect(0.4, n - 5)
    for kw in ({"effect": 0.0}, {"effect": -1.0}, {"sd": math.nan}, {"power": 1.0}):
        with pytest.raises(ValueError):
            prompts_for_power(**{"sd": 0.4, "effect": 0.1, **kw})


def test_half_width_is_the_inverse_of_prompts_for_precision() -> None:
    from steer_core.evaluate.metrics import half_width, prompts_for_precision

    assert half_width(0.5, 100) == pytest.approx(1.959964 * 0.05, rel=1e-5)
    n = prompts_for_precision(0.5, 0.1)
    assert half_width(0.5, n) <= 0.1 < half_width(0.5, n - 1)
    assert half_width(0.5, 100, 0.99) > half_width(0.5, 100, 0.9)
    with pytest.raises(ValueError):
        half_width(0.5, 0)
