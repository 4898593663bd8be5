"""The promotion gate is pure: these need no model, no MLflow."""

from __future__ import annotations

import math

import pytest

from steer_core.config import GateConfig
from steer_core.gates import GateDecision, decide

GATE = GateConfig(max_ppl_increase=0.25, min_distinct_2=0.5, min_margin=0.02)
GOOD = {"control": 0.60, "ppl_increase": 0.10, "distinct_2": 0.80, "gain": 0.30}
CHAMP = {"control": 0.50, "ppl_increase": 0.05, "distinct_2": 0.85, "gain": 0.20}


def by_name(d: GateDecision) -> dict[str, tuple]:
    return {c.name: c for c in d.checks}


def test_pass_beats_champion_and_floors() -> None:
    d = decide(GOOD, CHAMP, GATE)
    assert d.passed and d.reasons
    assert all(c.ok for c in d.checks)
    c = by_name(d)["control_vs_champion"]
    assert c.value == 0.60 and c.threshold == pytest.approx(0.52)
    name, value, threshold, ok = c  # checks are plain (name, value, threshold, ok) tuples too
    assert ok and "passed" in d.summary()


def test_fail_on_control() -> None:
    d = decide({**GOOD, "control": 0.45}, CHAMP, GATE)
    assert not d.passed
    assert len(d.reasons) == 1
    assert "0.4500" in d.reasons[0] and "0.5000" in d.reasons[0] and "0.5200" in d.reasons[0]
    assert not by_name(d)["control_vs_champion"].ok


def test_margin_is_strict() -> None:
    within = decide({**GOOD, "control": 0.51}, CHAMP, GATE)  # better than champion, but not by the margin
    assert not within.passed and "min_margin" in within.reasons[0]
    equal = decide({**GOOD, "control": 0.50}, CHAMP, GateConfig(min_margin=0.0))
    assert not equal.passed  # a tie never replaces the champion
    assert decide({**GOOD, "control": 0.53}, CHAMP, GATE).passed


@pytest.mark.parametrize(
    "override, metric, numbers",
    [
        ({"ppl_increase": 0.31}, "ppl_increase", ["31.0%", "25.0%"]),
        ({"distinct_2": 0.42}, "distinct_2", ["0.420", "0.500"]),
    ],
)
def test_fail_on_floor(override: dict, metric: str, numbers: list[str]) -> None:
    d = decide({**GOOD, **override}, CHAMP, GATE)
    assert not d.passed
    assert not by_name(d)[metric].ok
    assert len(d.reasons) == 1 and all(n in d.reasons[0] for n in numbers)
    assert decide({**GOOD, **override}, None, GATE).passed is False  # floors hold for a first model too


def test_all_failures_are_reported_together() -> None:
    d = decide({"control": 0.1, "ppl_increase": 0.9, "distinct_2": 0.1, "gain": -0.1}, CHAMP, GATE)
    assert not d.passed and len(d.reasons) == 4


@pytest.mark.parametrize("bad", [math.nan, float("inf"), "n/a"])
def test_nan_metric_fails_and_names_it(bad: object) -> None:
    d = decide({**GOOD, "ppl_increase": bad}, CHAMP, GATE)
    assert not d.passed
    assert any("ppl_increase" in r and "not a finite number" in r for r in d.reasons)


def test_missing_metric_fails_and_names_it() -> None:
    cand = {k: v for k, v in GOOD.items() if k != "distinct_2"}
    d = decide(cand, None, GATE)
    assert not d.passed
    assert d.reasons == ["The candidate's metric 'distinct_2' is missing from its evaluation summary."]


def test_champion_without_control_blocks_promotion() -> None:
    d = decide(GOOD, {"control": math.nan}, GATE)
    assert not d.passed and "champion" in d.reasons[0]


def test_first_model_needs_only_floors_and_a_gain_over_base() -> None:
    d = decide({**GOOD, "control": -5.0}, None, GATE)
    assert d.passed
    assert by_name(d)["first_model"].ok and by_name(d)["gain_over_base"].ok
    assert any("No champion yet" in r for r in d.reasons)


def test_lower_direction() -> None:
    assert decide({**GOOD, "control": 0.40}, CHAMP, GATE, direction="lower").passed
    assert not decide({**GOOD, "control": 0.49}, CHAMP, GATE, direction="lower").passed
    with pytest.raises(ValueError):
        decide(GOOD, CHAMP, GATE, direction="up")  # type: ignore[arg-type]


def test_decision_serialises() -> None:
    import json

    d = decide(GOOD, CHAMP, GATE)
    assert json.loads(json.dumps(d.to_dict()))["passed"] is True


@pytest.mark.parametrize("gain", [0.0, -0.05, math.nan, None])
def test_a_steer_that_does_not_beat_the_base_model_is_refused_even_without_a_champion(gain) -> None:
    cand = {**GOOD, "gain": gain}
    for champion in (None, CHAMP):
        d = decide(cand, champion, GATE)
        assert not d.passed
        if gain is None or gain != gain:
            assert any("'gain'" in r for r in d.reasons)
        else:
            assert any("gate.min_gain" in r and f"{gain:+.4f}" in r for r in d.reasons)
            assert by_name(d)["gain_over_base"].ok is False
    assert decide({**GOOD, "gain": 0.05}, None, GateConfig(min_gain=0.04)).passed
    assert not decide({**GOOD, "gain": 0.04}, None, GateConfig(min_gain=0.04)).passed  # strictly more
