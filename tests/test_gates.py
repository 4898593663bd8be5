"""The promotion gate is pure: these need no model, no MLflow."""

from __future__ import annotations

import math

import pytest

from steer_core.config import GateConfig
from steer_core.gate import GateDecision, decide

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
    name, value, threshold, ok, low, high = c  # checks are plain tuples too; low/high: an interval's ends
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


# ------------------------------------------------------------------------------ decide_doc: the paired, interval gate
import numpy as np  # noqa: E402

from steer_core.gate import decide_doc  # noqa: E402

PAIRED = GateConfig(max_ppl_increase=0.25, min_distinct_2=0.5, min_margin=0.0, min_gain=0.0, confidence=0.95)


def system(control: list[float], gain: list[float] | None = None, ppl: float = 0.10, d2: float = 0.9,
           ids: list[str] | None = None) -> dict:
    """A system entry of an evaluation document, as evaluate() writes it (only what the gate reads)."""
    gain = control if gain is None else gain
    return {"recommended": {"strength": 2.0, "control": float(np.mean(control)), "gain": float(np.mean(gain)),
                            "ppl_increase": ppl, "distinct_2": d2,
                            "per_prompt": {"control": list(control), "gain": list(gain)}},
            "prompt_ids": ids or [f"p{i}" for i in range(len(control))]}


def sentiment_swings(rng: np.random.Generator, n: int, samples: int, effect: float, prompt_sd: np.ndarray
                     ) -> np.ndarray:
    """Per-prompt swings (positive rate at +s minus at −s, each from `samples` Bernoulli draws) of a steer whose
    true per-prompt swing is 0.25 + prompt effect + `effect`: the structure of the shipped sentiment protocol."""
    p_plus = np.clip(0.55 + prompt_sd + effect / 2, 0.02, 0.98)
    p_minus = np.clip(0.30 - prompt_sd - effect / 2, 0.02, 0.98)
    return rng.binomial(samples, p_plus) / samples - rng.binomial(samples, p_minus) / samples


def doc_of(cand: dict, champ: dict | None = None) -> dict:
    return {"control": "sentiment", "base": {}, "systems": {"candidate": cand, **({"champion": champ} if champ else {})}}


def test_zero_effect_is_promoted_at_most_at_the_expected_rate() -> None:
    """Equal steers, independent sampling noise (24 prompts × 4 samples, as shipped): over 200 seeds the gate
    promotes at most about (1 − confidence)/2 = 2.5 % of the time (the point-estimate gate: about half)."""
    n, trials, promoted, point_wins = 24, 200, 0, 0
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        prompt_effect = rng.normal(0, 0.1, n)
        a = sentiment_swings(rng, n, 4, 0.0, prompt_effect)
        b = sentiment_swings(rng, n, 4, 0.0, prompt_effect)
        d = decide_doc(doc_of(system(list(a)), system(list(b))), PAIRED)
        promoted += d.passed
        point_wins += a.mean() > b.mean()
    assert promoted / trials <= 0.05, promoted
    assert point_wins / trials > 0.35  # what the old point-estimate comparison would have done


def test_large_effect_is_promoted_with_the_interval_in_the_reason() -> None:
    rng = np.random.default_rng(0)
    n = 24
    prompt_effect = rng.normal(0, 0.1, n)
    champ = sentiment_swings(rng, n, 4, 0.0, prompt_effect)
    cand = sentiment_swings(rng, n, 4, 0.4, prompt_effect)
    d = decide_doc(doc_of(system(list(cand)), system(list(champ))), PAIRED)
    assert d.passed, d.reasons
    c = by_name(d)["control_vs_champion"]
    assert c.ok and c.value > 0 and c.threshold == 0.0
    reason = next(r for r in d.reasons if "over the champion" in r)
    mean = float(np.mean(cand - champ))
    assert f"control {mean:+.3f} [" in reason and "95% paired bootstrap interval over 24 prompts" in reason
    assert "passed" in d.summary()
    import json

    assert json.loads(json.dumps(d.to_dict()))["passed"] is True


def test_identical_champion_is_never_promoted() -> None:
    vals = [0.25, 0.5, 0.0, 0.75, 0.25, 0.5] * 4
    d = decide_doc(doc_of(system(vals), system(list(vals))), PAIRED)
    assert not d.passed
    assert any("control +0.000 [+0.000, +0.000] over the champion" in r for r in d.reasons)


def test_margin_and_gain_use_the_lower_bound() -> None:
    rng = np.random.default_rng(1)
    cand = list(0.3 + rng.normal(0, 0.05, 40))
    champ = list(0.1 + rng.normal(0, 0.05, 40))
    assert decide_doc(doc_of(system(cand), system(champ)), PAIRED).passed
    # the mean difference (~0.2) clears a 0.15 margin, but not a 0.19 one once the interval's width counts
    assert decide_doc(doc_of(system(cand), system(champ)), PAIRED.model_copy(update={"min_margin": 0.15})).passed
    high = decide_doc(doc_of(system(cand), system(champ)), PAIRED.model_copy(update={"min_margin": 0.2}))
    assert not high.passed and any("gate.min_margin" in r for r in high.reasons)
    # gain over base: a steer whose gain interval straddles 0 is refused even with no champion
    noisy = list(rng.normal(0.02, 0.3, 24))
    d = decide_doc(doc_of(system(noisy)), PAIRED)
    assert not d.passed and any("gate.min_gain" in r and "over the unsteered base model" in r for r in d.reasons)
    assert not by_name(d)["gain_over_base"].ok


def test_first_model_passes_on_gain_and_floors() -> None:
    d = decide_doc(doc_of(system([0.3, 0.4, 0.2, 0.5] * 6)), PAIRED)
    assert d.passed and by_name(d)["first_model"].ok
    assert any("No champion yet" in r for r in d.reasons)


@pytest.mark.parametrize("where", ["candidate_control", "champion_control", "gain"])
def test_nan_anywhere_refuses_with_the_reason(where: str) -> None:
    cand_ctrl, champ_ctrl = [0.6] * 24, [0.1] * 24
    gain = list(cand_ctrl)
    {"candidate_control": cand_ctrl, "champion_control": champ_ctrl, "gain": gain}[where][5] = math.nan
    d = decide_doc(doc_of(system(cand_ctrl, gain), system(champ_ctrl)), PAIRED)
    assert not d.passed
    assert any("not a finite number" in r and "prompt 5" in r for r in d.reasons), d.reasons


@pytest.mark.parametrize("override, metric", [({"ppl": 0.31}, "ppl_increase"), ({"d2": 0.4}, "distinct_2")])
def test_floors_still_hold(override: dict, metric: str) -> None:
    d = decide_doc(doc_of(system([0.6] * 24, **override), system([0.1] * 24)), PAIRED)
    assert not d.passed and not by_name(d)[metric].ok and len(d.reasons) == 1
    nan = decide_doc(doc_of(system([0.6] * 24, ppl=math.nan)), PAIRED)
    assert not nan.passed and any("ppl_increase" in r and "not a finite number" in r for r in nan.reasons)


def with_fluency(sys_entry: dict, plus: np.ndarray, minus: np.ndarray, estimate: str = "text",
                 text: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """``sys_entry`` with per-prompt log fluency costs on each side and the worse side's interval over them, as
    recommend() writes them; ``text``: the judge-perplexity log ratios beside a paired estimate."""
    from steer_core.evaluate.recommend import interval

    rec = sys_entry["recommended"]
    rec["per_prompt"].update(log_fluency_plus=list(plus), log_fluency_minus=list(minus))
    text_plus, text_minus = text if text is not None else (plus, minus)
    rec["per_prompt"].update(log_ppl_ratio_plus=list(text_plus), log_ppl_ratio_minus=list(text_minus))
    sides = [interval(np.asarray(v), 0.95) for v in (plus, minus)]
    inc, low, high = max(sides, key=lambda x: x[2] if math.isfinite(x[2]) else math.inf)
    rec["fluency"] = {"estimate": estimate, "increase": inc, "low": low, "high": high, "confidence": 0.95}
    rec["ppl_increase"] = math.expm1(max(float(np.mean(text_plus)), float(np.mean(text_minus))))
    return sys_entry


def test_fluency_must_be_shown_within_budget_by_its_upper_end() -> None:
    """Harm must be shown absent, as control must be shown present: a steer whose fluency interval reaches over the
    budget is refused even when its point estimate is within it; the check records the point and both ends."""
    rng = np.random.default_rng(0)
    quiet = np.log(1.05) + rng.normal(0, 0.02, 24)
    noise = rng.normal(0, 0.25, 24)
    within = np.log(1.10) + rng.normal(0, 0.03, 24)
    d = decide_doc(doc_of(with_fluency(system([0.4] * 24), quiet, within)), PAIRED)
    assert d.passed, d.reasons
    c = by_name(d)["fluency_increase"]
    assert c.ok and c.threshold == 0.25 and c.low < c.value < c.high <= 0.25
    assert c.value == pytest.approx(0.10, abs=0.02)
    assert any("judge perplexity +" in r and "the worse side" in r for r in d.reasons), d.reasons
    # +15 % on average, but 24 noisy prompts cannot show it is within +25 %: refused, with both ends in the reason
    noisy = np.log(1.15) + noise - noise.mean()
    bad = decide_doc(doc_of(with_fluency(system([0.4] * 24), quiet, noisy)), PAIRED)
    c = by_name(bad)["fluency_increase"]
    assert not bad.passed and not c.ok and c.value == pytest.approx(0.15) and c.high > 0.25 > c.value > c.low
    assert len(bad.reasons) == 1 and "+15.0% [" in bad.reasons[0] and "upper end is above" in bad.reasons[0]
    # nothing finite: fluency cannot be shown, refused
    nan = decide_doc(doc_of(with_fluency(system([0.4] * 24), quiet, np.full(24, math.nan))), PAIRED)
    assert not nan.passed and not by_name(nan)["fluency_finite"].ok


def test_a_paired_budget_still_refuses_text_that_is_shown_over_it() -> None:
    """With the budget held to the paired per-step cost, the judge perplexity of the text is checked too: a lower end
    above the limit refuses; a wide text interval around the limit does not."""
    rng = np.random.default_rng(1)
    cheap = np.log(1.08) + rng.normal(0, 0.03, 24)
    noise = rng.normal(0, 0.3, 24)
    around = np.log(1.25) + noise - noise.mean()
    ok = decide_doc(doc_of(with_fluency(system([0.4] * 24), cheap, cheap, "paired", (around, around))), PAIRED)
    assert ok.passed, ok.reasons
    assert by_name(ok)["text_perplexity_increase"].ok and by_name(ok)["fluency_increase"].ok
    over = np.log(1.80) + rng.normal(0, 0.05, 24)
    bad = decide_doc(doc_of(with_fluency(system([0.4] * 24), cheap, cheap, "paired", (over, cheap))), PAIRED)
    assert not bad.passed and not by_name(bad)["text_perplexity_increase"].ok
    assert "judge perplexity of the steered text rose" in bad.reasons[0]


def test_an_independent_judge_must_see_the_gain_too() -> None:
    """gate.independent_judge: the gain over the base model must also clear its margin as read by each judge."""
    gate = PAIRED.model_copy(update={"independent_judge": True})
    rng = np.random.default_rng(2)
    gain = 0.4 + rng.normal(0, 0.1, 24)
    cand = system(list(gain))
    doc = {**doc_of(cand), "judges": ["textblob"]}
    cand["recommended"]["per_prompt"]["judges"] = {"textblob": {"control": list(gain), "gain": list(gain * 0.8)}}
    d = decide_doc(doc, gate)
    assert d.passed and by_name(d)["gain_by_textblob"].ok, d.reasons
    assert any("independent judge textblob" in r for r in d.reasons)
    cand["recommended"]["per_prompt"]["judges"]["textblob"]["gain"] = list(rng.normal(0, 0.2, 24))
    d = decide_doc(doc, gate)
    assert not d.passed and not by_name(d)["gain_by_textblob"].ok
    assert any("by the independent judge textblob" in r and "lower bound must be above" in r for r in d.reasons)
    no_judge = decide_doc(doc_of(system(list(gain))), gate)
    assert not no_judge.passed and "no independent judge read this evaluation" in no_judge.reasons[0]
    assert decide_doc(doc_of(system(list(gain))), PAIRED).passed  # off: the labeller's gain is enough


def test_independent_judge_without_a_judge_is_a_config_error() -> None:
    from steer_core.config import SteerSpec

    with pytest.raises(Exception, match="evaluate.judges is empty"):
        SteerSpec.model_validate({"gate": {"independent_judge": True}})
    SteerSpec.model_validate({"gate": {"independent_judge": True}, "evaluate": {"judges": ["textblob"]}})


def test_unpaired_or_old_documents_are_refused() -> None:
    other = decide_doc(doc_of(system([0.6] * 24), system([0.1] * 24, ids=[f"q{i}" for i in range(24)])), PAIRED)
    assert not other.passed and by_name(other)["same_prompts"].ok is False
    shorter = decide_doc(doc_of(system([0.6] * 24), system([0.1] * 20)), PAIRED)
    assert not shorter.passed
    old = {"systems": {"candidate": {"recommended": GOOD}}}
    d = decide_doc(old, PAIRED)
    assert not d.passed and "re-run the evaluate stage" in d.reasons[0]
    assert not decide_doc({"systems": {}}, PAIRED).passed


def test_the_baseline_margin_is_checked_only_when_set_and_on_the_lower_bound() -> None:
    """gate.min_margin_over_baseline: off by default (a baseline that wins does not block), and when set the lower
    end of candidate − ActAdd must clear it: 0 = better on evidence, a negative margin = non-inferiority."""
    rng = np.random.default_rng(4)
    cand = list(0.35 + rng.normal(0, 0.2, 24))
    better_baseline = list(np.array(cand) + 0.15 + rng.normal(0, 0.05, 24))  # wins on every prompt, about +0.15
    doc = doc_of(system(cand))
    doc["systems"]["actadd"] = system(better_baseline)
    assert decide_doc(doc, PAIRED).passed  # not checked unless asked: the comparison is only reported
    d = decide_doc(doc, PAIRED.model_copy(update={"min_margin_over_baseline": -0.05}))
    assert not d.passed
    check = by_name(d)["control_vs_baseline"]
    diffs = np.array(cand) - np.array(better_baseline)
    assert not check.ok and check.threshold == -0.05 and check.value < diffs.mean() < -0.1
    reason = next(r for r in d.reasons if "actadd baseline" in r)
    assert f"control {diffs.mean():+.3f} [" in reason and "gate.min_margin_over_baseline" in reason
    # a margin the lower end clears passes, with the interval among the reasons
    ok = decide_doc(doc, PAIRED.model_copy(update={"min_margin_over_baseline": -0.3}))
    assert ok.passed and by_name(ok)["control_vs_baseline"].ok
    assert any("clears gate.min_margin_over_baseline -0.3" in r for r in ok.reasons)
    # asked for, but no baseline in the document, or one read on other prompts: refused, and it says why
    missing = decide_doc(doc_of(system(cand)), PAIRED.model_copy(update={"min_margin_over_baseline": 0.0}))
    assert not missing.passed and not by_name(missing)["baseline_control_present"].ok
    assert any("no per-prompt control of the 'actadd' baseline" in r for r in missing.reasons)
    doc["systems"]["actadd"] = system(better_baseline, ids=[f"q{i}" for i in range(24)])
    other = decide_doc(doc, PAIRED.model_copy(update={"min_margin_over_baseline": -0.3}))
    assert not other.passed and not by_name(other)["baseline_same_prompts"].ok


def test_a_baseline_margin_without_the_baseline_is_a_config_error() -> None:
    from steer_core.config import SteerSpec

    with pytest.raises(ValueError, match="gate.min_margin_over_baseline -0.05 .*evaluate.activation_addition is false"):
        SteerSpec.model_validate({"gate": {"min_margin_over_baseline": -0.05},
                                  "evaluate": {"activation_addition": False}})
    assert SteerSpec.model_validate({"gate": {"min_margin_over_baseline": -0.05}}).gate.min_margin_over_baseline == -0.05


def test_decision_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    cand, champ = list(rng.normal(0.1, 0.3, 24)), list(rng.normal(0.0, 0.3, 24))
    a = decide_doc(doc_of(system(cand), system(champ)), PAIRED).to_dict()
    assert a == decide_doc(doc_of(system(cand), system(champ)), PAIRED).to_dict()


# ------------------------------------------------------------------------------ protocol sizing (steer power)
from steer_core.evaluate import metrics as M  # noqa: E402
from steer_core.gate import power_report  # noqa: E402


def sentiment_doc(cand: dict, champ: dict | None = None, samples: int = 4) -> dict:
    return {**doc_of(cand, champ), "protocol": {"samples": samples, "prompts": len(cand["prompt_ids"])}}


def test_prompts_for_power_is_what_the_gate_achieves() -> None:
    """The size the formula gives (sd 0.3, +0.1, 80 %, 95 %) promotes a true +0.1 about 80 % of the time under the
    very gate (decide_doc) on synthetic paired differences; half the prompts fall well short."""
    n = M.prompts_for_power(0.3, 0.10, 0.95, 0.8)
    assert n == math.ceil(((1.959964 + 0.841621) * 3) ** 2)  # 71
    rates = {}
    for size in (n, n // 2):
        hits = 0
        for seed in range(150):
            d = np.random.default_rng(seed).normal(0.10, 0.3, size)
            hits += decide_doc(doc_of(system(list(d + 0.5)), system([0.5] * size)), PAIRED).passed
        rates[size] = hits / 150
    assert 0.65 <= rates[n] <= 0.92, rates
    assert rates[n // 2] < rates[n] - 0.2, rates
    assert M.detectable_effect(0.3, n) == pytest.approx(0.10, rel=0.02)
    with pytest.raises(ValueError):
        M.prompts_for_power(0.3, 0.0)


def test_power_report_from_an_evaluation() -> None:
    rng = np.random.default_rng(0)
    n = 24
    pe = rng.normal(0, 0.1, n)
    plus, minus = np.clip(0.55 + pe, 0, 1), np.clip(0.3 - pe, 0, 1)
    a = rng.binomial(4, plus) / 4 - rng.binomial(4, minus) / 4
    b = rng.binomial(4, plus) / 4 - rng.binomial(4, minus) / 4
    cand = system(list(a))
    cand["recommended"]["per_prompt"].update(positive_rate_plus=list(plus), positive_rate_minus=list(minus))
    rep = power_report(sentiment_doc(cand, system(list(b))), effect=0.10)
    assert rep["basis"].startswith("measured") and rep["prompts"] == 24 and rep["samples"] == 4
    assert rep["sd_per_prompt"] == pytest.approx(float(np.std(a - b, ddof=1)))
    assert rep["prompts_needed"] == M.prompts_for_power(rep["sd_per_prompt"], 0.10)
    assert rep["prompts_needed"] > 24 and rep["detectable_now"] > 0.10  # the shipped size cannot see +0.10
    by = {r["samples"]: r for r in rep["by_samples"]}
    assert by[4]["prompts_needed"] == rep["prompts_needed"]
    assert by[16]["prompts_needed"] < by[8]["prompts_needed"] < by[4]["prompts_needed"] < by[2]["prompts_needed"]
    # no champion: the cautious spread (no pairing credit)
    alone = power_report(sentiment_doc(cand), effect=0.10)
    assert alone["basis"].startswith("no champion")
    assert alone["sd_per_prompt"] == pytest.approx(math.sqrt(2) * float(np.std(a, ddof=1)))
    assert power_report(sentiment_doc(cand), effect=0.2)["prompts_needed"] < alone["prompts_needed"]
    assert "perplexity" not in rep  # no per-prompt perplexity ratios in this document
    # with them: how well the perplexity the gate checks is pinned, and the prompts for ±5 / ±10 points
    lr = np.log(1.25) + rng.normal(0, 0.4, n)
    with_ppl = with_fluency(system(list(a)), np.log(1.05) + rng.normal(0, 0.1, n), lr)
    q = power_report(sentiment_doc(with_ppl), effect=0.10)["perplexity"]
    assert q["increase"] == pytest.approx(math.expm1(lr.mean())) and q["prompts"] == n  # the worse side
    width = 1.959964 * float(np.std(lr, ddof=1)) / math.sqrt(n) * math.exp(lr.mean())
    assert q["half_width_now"] == pytest.approx(width, rel=1e-4)
    need = q["prompts_for_half_width"]
    assert need["0.05"] == math.ceil(n * (width / 0.05) ** 2) and need["0.1"] < need["0.05"]
    with pytest.raises(ValueError, match="above the margin"):
        power_report(sentiment_doc(cand), effect=0.05, margin=0.05)
    with pytest.raises(ValueError, match="re-run the evaluate stage"):
        power_report({"systems": {"candidate": {"recommended": GOOD}}}, effect=0.1)


def _steer_power(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "steer_core.cli", "power", *args], capture_output=True, text=True,
                          timeout=300)


def test_steer_power_command(tmp_path) -> None:
    import json

    rng = np.random.default_rng(1)
    doc = sentiment_doc(system(list(rng.normal(0.2, 0.3, 24))), system(list(rng.normal(0.1, 0.3, 24))))
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(doc))
    ok = _steer_power(str(path), "--effect", "0.1")
    assert ok.returncode == 0, ok.stderr
    assert "prompts × 4 samples" in ok.stdout and "this protocol detects" in ok.stdout
    js = _steer_power(str(path), "--effect", "0.1", "--power", "0.9", "--json")
    assert js.returncode == 0 and json.loads(js.stdout)["power"] == 0.9
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"systems": {"candidate": {"recommended": GOOD}}}))
    for args, needle in [((str(tmp_path / "missing.json"),), "no evaluation at"),
                         ((str(bad_json),), "not JSON"),
                         ((str(old),), "re-run the evaluate stage"),
                         ((str(path), "--effect", "-0.1"), "above the margin"),
                         ((str(path), "--power", "1.5"), "power must be in (0, 1)")]:
        proc = _steer_power(*args)
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (args, proc.stderr)
        assert needle in lines[0], (needle, lines[0])
