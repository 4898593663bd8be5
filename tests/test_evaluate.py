"""The evaluation harness: metrics document schema, hand-checkable aggregation, the ActAdd baseline, and the
``steer prepare / train / evaluate`` stage commands end to end (their mechanics: what each writes or refuses).

Sizes are tiny (a 2-layer random Llama; 3 prompts × 2 samples × 6 tokens); the champion check that names the real
default model runs on it. The whole module runs in ~2 min on a 2-core CPU.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from steer_core.evaluate import protocol as ev
from steer_core.evaluate.baselines import ActAdd, decoder_layers, fit_actadd
from steer_core.config import EvalConfig
from steer_core.evaluate import metrics as M
from steer_core.evaluate.protocol import Sample, System
from steer_core.evaluate.driver import evaluate
from steer_core.evaluate.recommend import recommend
from steer_core.evaluate.document import summarize
from steer_core.model.steer import Steer

from builders import random_steer

from tiny_pipeline import tiny_params

STEER_BIN = Path(sys.executable).with_name("steer")

PROMPTS = [
    {"set": "neutral", "prompt": "The weather today"},
    {"set": "neutral", "prompt": "My favourite book is"},
    {"set": "negative", "prompt": "I really hated the"},
]
POS_TEXTS = ["what a lovely flight, thank you so much", "great crew and friendly service", "love it"]
NEG_TEXTS = ["delayed again and the staff were rude", "worst airline ever", "lost my bag, never again"]

ROW_KEYS = {"strength", "control", "ppl", "ppl_increase", "distinct_1", "distinct_2", "distinct_3", "ci", "sets"}
SENTIMENT = ("sentiment", "dummy")
SENTIMENT_KEYS = {"positive_rate", "negative_rate"}
TOXICITY_KEYS = {"avg_max_toxicity", "toxicity_probability", "mean_toxicity"}


def assert_row_schema(row: dict, control: str, sets: set[str]) -> None:
    extra = SENTIMENT_KEYS if control == "sentiment" else TOXICITY_KEYS
    assert ROW_KEYS | extra <= set(row), sorted(ROW_KEYS | extra - set(row))
    for k in ("control", "ppl", "distinct_1", "distinct_2", "distinct_3"):
        assert isinstance(row[k], float) and math.isfinite(row[k]), (k, row[k])
    assert row["ppl"] > 0
    for n in (1, 2, 3):
        assert 0.0 <= row[f"distinct_{n}"] <= 1.0
    # every CI brackets its point estimate
    assert {"control", "ppl", "distinct_2"} <= set(row["ci"])
    for metric, (low, high) in row["ci"].items():
        assert low - 1e-9 <= row[metric] <= high + 1e-9, (row["strength"], metric, low, row[metric], high)
    # per-prompt-set metrics for each set
    assert set(row["sets"]) == sets
    for m in row["sets"].values():
        assert {"control", "ppl", "distinct_2"} | extra <= set(m)


def upper_end(row: dict, base: dict, fluency: str = "text", confidence: float = 0.95) -> float:
    """The upper end of a row's fluency cost over all prompts, computed here from its per-prompt values."""
    if row["strength"] == 0:
        return 0.0
    if fluency == "paired":
        logs = row["per_prompt"]["log_cost"]
    else:
        logs = [a - b for a, b in zip(row["per_prompt"]["log_ppl"], base["per_prompt"]["log_ppl"])]
    finite = [x for x in logs if math.isfinite(x)]
    return math.expm1(M.paired_interval(finite, confidence)[2]) if len(finite) >= 2 else math.inf


def assert_recommendation(rec: dict, rows: list[dict], base: dict, budget: float, control: str,
                          fluency: str = "text") -> None:
    """The strength is the strongest inside the budget edge: the largest |s| on its side whose fluency cost's upper
    end (over all prompts), fitted non-decreasing in |s|, is within budget, and its own upper end is within too."""
    assert {"strength", "reason", "control", "ppl_increase", "distinct_2", "fluency"} <= set(rec)
    by_s = {r["strength"]: r for r in rows}
    feasible = set()
    for sign in (1, -1):
        side = sorted((s for s in by_s if s * sign > 0), key=abs)
        highs = [upper_end(by_s[s], base, fluency) for s in side]
        head = [0.0] if control == "sentiment" else []  # a sentiment side's choices include the base (no cost)
        fitted = M.isotonic(head + highs)[len(head):]
        feasible |= {s for s, h in zip(side, fitted) if h <= budget + 1e-12}
        assert all(upper_end(by_s[s], base, fluency) <= budget + 1e-12 for s in feasible if s * sign > 0
                   and abs(s) == max((abs(x) for x in feasible if x * sign > 0), default=0))
    feasible.add(0.0)
    if "in_sample" in rec:  # the strength is chosen on all prompts; the other numbers are cross-fitted
        assert_cross_fitted(rec, rows, base, control)
        rec = {**rec, **rec["in_sample"]}
    if control == "sentiment":  # each side on its own: the best positive rate in budget on +, the lowest on −
        plus, minus = rec["strength"], rec["strength_minus"]
        assert plus >= 0 >= minus and plus in by_s and minus in by_s, rec
        assert rec["control"] == pytest.approx(by_s[plus]["control"] - by_s[minus]["control"])
        for sign, chosen in ((1, plus), (-1, minus)):
            side = [s for s in feasible if s * sign >= 0]
            assert chosen in side, (sign, chosen, side)
            ordered = sorted(side, key=abs)  # the base heads the side; no rise above it in control: the base
            rises = M.isotonic([sign * by_s[s]["control"] for s in ordered])
            assert abs(chosen) == (max(abs(s) for s in side) if rises[-1] > rises[0] else 0.0), (sign, chosen, side)
        assert rec["fluency"]["high"] <= budget + 1e-12 or (plus == 0 and minus == 0)
        return
    positive = {r["strength"] for r in rows if r["strength"] > 0}
    assert rec["strength"] in positive, rec
    if feasible & positive:
        assert rec["strength"] == max(feasible & positive), (rec["strength"], feasible)
        assert rec["fluency"]["high"] <= budget + 1e-12
    else:
        assert "no strength's" in rec["reason"]


def assert_cross_fitted(rec: dict, rows: list[dict], base: dict, control: str) -> None:
    """Every prompt is read at the strength(s) chosen on the other fold; the means are the per-prompt means."""
    by_s = {r["strength"]: r for r in rows}
    folds = rec["split"]["folds"]
    n = len(base["per_prompt"]["control"])
    assert sorted(i for f in folds for i in f["reported_on"]) == list(range(n))  # each prompt reported once
    for f in folds:
        s = f["strength_chosen_on_other_fold"]
        for i in f["reported_on"]:
            plus = by_s[s]["per_prompt"]["control"][i]
            if control == "sentiment":
                want = plus - by_s[f["strength_minus_chosen_on_other_fold"]]["per_prompt"]["control"][i]
                assert rec["per_prompt"]["gain"][i] == pytest.approx(want)
            else:
                want = plus
                assert rec["per_prompt"]["gain"][i] == pytest.approx(plus - base["per_prompt"]["control"][i])
            assert rec["per_prompt"]["control"][i] == pytest.approx(want)
    assert rec["control"] == pytest.approx(sum(rec["per_prompt"]["control"]) / n)
    assert rec["gain"] == pytest.approx(sum(rec["per_prompt"]["gain"]) / n)


# ------------------------------------------------------------------------------------------ the harness on tiny_lm
@pytest.fixture(scope="module")
def sentiment_run(tiny_lm):
    """Candidate, champion (the same steer, copied) and ActAdd on the same prompts, in one evaluate()."""
    torch.set_num_threads(1)
    steer = random_steer(tiny_lm, names=SENTIMENT, eps=1e-3, scale=0.5, seed=1)
    actadd = fit_actadd(tiny_lm, POS_TEXTS + NEG_TEXTS, [1.0] * 3 + [-1.0] * 3, layer=0)
    cfg = EvalConfig(control="sentiment", scorer="vader", strengths=[-2.0, 0.0, 2.0], samples=2,
                     max_new_tokens=5, bootstrap=200, actadd_strengths=[-1.0, 1.0], search_steps=0)
    systems = [System("candidate", cfg.strengths, steer=steer),
               System("champion", cfg.strengths, steer=steer.copy(), meta={"path": "champ.safetensors"}),
               System("actadd", cfg.actadd_strengths, actadd=actadd, meta={"layer": 0})]
    logs: list[str] = []
    doc, samples = evaluate(tiny_lm, PROMPTS, systems, cfg, seed=3, log=logs.append)
    return doc, samples, cfg, logs


def test_metrics_document_schema(sentiment_run):
    doc, samples, cfg, logs = sentiment_run
    json.loads(json.dumps(doc))  # plain JSON
    assert doc["control"] == "sentiment" and doc["scorer"] == "vader"
    assert doc["protocol"]["prompts"] == 3 and doc["protocol"]["samples"] == 2
    assert doc["protocol"]["max_new_tokens"] == 5 and doc["protocol"]["seed"] == 3
    assert doc["protocol"]["prompt_sets"] == ["negative", "neutral"]
    assert set(doc["systems"]) == {"candidate", "champion", "actadd"}
    grid = next(m for m in logs if m.startswith("evaluating "))
    assert grid.startswith("evaluating ['candidate', 'champion', 'actadd'] at strengths"), grid
    sets = {"neutral", "negative"}

    base = doc["base"]
    assert base["strength"] == 0.0
    assert_row_schema(base, "sentiment", sets)
    assert base["ppl_increase"] == 0.0

    expected = {"candidate": [-2.0, 0.0, 2.0], "champion": [-2.0, 0.0, 2.0], "actadd": [-1.0, 0.0, 1.0]}
    for name, sysdoc in doc["systems"].items():
        rows = sysdoc["rows"]
        assert [r["strength"] for r in rows] == expected[name]
        for r in rows:
            assert_row_schema(r, "sentiment", sets)
            assert r["ppl_increase"] == pytest.approx(r["ppl"] / base["ppl"] - 1.0)
            assert r["control"] == r["positive_rate"]
        zero = next(r for r in rows if r["strength"] == 0.0)
        assert zero["ppl_increase"] == 0.0
        # the strength-0 row of every system IS the shared base
        for k in ("control", "ppl", "distinct_1", "distinct_2", "distinct_3", "ci", "sets"):
            assert zero[k] == base[k], (name, k)
        assert_recommendation(sysdoc["recommended"], rows, base, cfg.ppl_budget, "sentiment")
    assert doc["systems"]["champion"]["path"] == "champ.safetensors"
    assert doc["systems"]["actadd"]["layer"] == 0

    head = doc["headline"]
    assert head["base_ppl"] == base["ppl"] and head["base_control"] == base["control"]
    for name in expected:
        assert head[name]["strength"] == doc["systems"][name]["recommended"]["strength"]
        assert "reason" not in head[name]
    # the steer against the baseline, each at its own recommended strength: per-prompt differences, by hand
    mine = doc["systems"]["candidate"]["recommended"]["per_prompt"]["control"]
    theirs = doc["systems"]["actadd"]["recommended"]["per_prompt"]["control"]
    versus = head["candidate_vs_actadd"]
    assert versus["prompts"] == 3 and versus["confidence"] == 0.95
    assert versus["difference"] == pytest.approx(sum(a - b for a, b in zip(mine, theirs)) / 3)
    assert versus["low"] <= versus["difference"] <= versus["high"]


def test_method_versus_baseline_needs_both_systems_on_the_same_prompts():
    from steer_core.evaluate.document import method_versus_baseline

    def system(controls, ids):
        return {"recommended": {"per_prompt": {"control": controls}}, "prompt_ids": ids}

    ids = ["a", "b", "c", "d"]
    doc = {"systems": {"candidate": system([0.5, 0.25, 0.75, 0.5], ids), "actadd": system([0.25, 0.25, 0.5, 0.0], ids)}}
    v = method_versus_baseline(doc)
    assert v["difference"] == pytest.approx(0.25) and v["prompts"] == 4
    assert v["low"] <= 0.25 <= v["high"]
    doc["systems"]["actadd"]["prompt_ids"] = ["a", "b", "c", "e"]  # read on other prompts: no pairing
    assert method_versus_baseline(doc) is None
    assert method_versus_baseline({"systems": {"candidate": system([0.5, 0.5], ids[:2])}}) is None


def test_set_metrics_aggregate_to_the_row(sentiment_run):
    """A row's metric is the mean over prompts; per-set values are the same mean within the set (2 + 1 prompts)."""
    doc, *_ = sentiment_run
    for sysdoc in doc["systems"].values():
        for r in sysdoc["rows"]:
            s = r["sets"]
            for k in ("control", "distinct_2", "distinct_1"):
                assert r[k] == pytest.approx((2 * s["neutral"][k] + s["negative"][k]) / 3)
            assert math.log(r["ppl"]) == pytest.approx((2 * math.log(s["neutral"]["ppl"])
                                                        + math.log(s["negative"]["ppl"])) / 3)


def test_candidate_and_champion_share_base_and_prompts(sentiment_run):
    doc, samples, cfg, _ = sentiment_run
    by_sys: dict[str, list[Sample]] = {}
    for s in samples:
        by_sys.setdefault(s.system, []).append(s)
    # strength 0 is sampled once, as "base", and shared by every system
    assert set(by_sys) == {"base", "candidate", "champion", "actadd"}
    assert all(s.strength == 0.0 for s in by_sys["base"]) and len(by_sys["base"]) == 3 * 2
    for name in ("candidate", "champion", "actadd"):
        assert 0.0 not in {s.strength for s in by_sys[name]}
        assert len(by_sys[name]) == 2 * 3 * 2  # 2 non-zero strengths × 3 prompts × 2 samples
    prompts_of = {name: sorted({(s.prompt_index, s.prompt, s.prompt_set) for s in group})
                  for name, group in by_sys.items()}
    assert prompts_of["candidate"] == prompts_of["champion"] == prompts_of["base"] == prompts_of["actadd"]
    assert prompts_of["base"] == sorted((i, p["prompt"], p["set"]) for i, p in enumerate(PROMPTS))
    # the same steer as candidate and champion: same prompts, same seeds → the very same samples and rows
    key = lambda s: (s.strength, s.prompt_index, s.text)  # noqa: E731
    assert sorted(map(key, by_sys["candidate"])) == sorted(map(key, by_sys["champion"]))
    flat = {n: _flatten(doc["systems"][n]["rows"]) for n in ("candidate", "champion")}
    assert flat["candidate"] == pytest.approx(flat["champion"], rel=1e-4, nan_ok=True)
    for s in samples:
        assert isinstance(s.text, str) and not math.isnan(s.control)


def test_every_sample_is_scored(sentiment_run):
    _, samples, _, _ = sentiment_run
    from steer_core.scorers import get_scorer

    vader = get_scorer("vader")
    some = samples[:6]
    assert [s.control for s in some] == pytest.approx(vader.score([s.text for s in some]))
    assert all(s.ppl > 0 for s in samples if s.text)


class _RepetitionToxicity:
    """A test 'toxicity' scorer: the share of repeated words (so a looping base model looks toxic and the
    exploding steer's varied gibberish looks clean: without the budget, the exploding strength would win)."""

    name = "repetition-test"
    kind = "toxicity"

    def score(self, texts):
        out = []
        for t in texts:
            words = t.split()
            out.append(1.0 - len(set(words)) / len(words) if words else 0.0)
        return out


def test_recommendation_respects_ppl_budget(tiny_dir, monkeypatch):
    """A peaked tiny model (final norm ×100) and a huge-norm steer: at strength 1000 its samples are gibberish the
    judge finds ~1e30× less likely, so that strength must not be recommended, though its control is best."""
    from steer_core.model.lm import load_lm

    torch.set_num_threads(1)
    lm = load_lm(str(tiny_dir), device="cpu")  # its own copy: the shared tiny_lm stays untouched
    with torch.no_grad():
        lm.model.model.norm.weight.mul_(100.0)
    steer = random_steer(lm, names=("detox", "dummy"), eps=1e-3, scale=10.0, seed=0)
    monkeypatch.setattr(ev, "get_scorer", lambda name: _RepetitionToxicity())
    cfg = EvalConfig(control="toxicity", scorer="repetition-test", strengths=[0.0, 1.0, 1000.0], samples=2,
                     max_new_tokens=5, bootstrap=50, activation_addition=False, ppl_budget=0.25)
    doc, _ = evaluate(lm, PROMPTS, [System("candidate", cfg.strengths, steer=steer)], cfg)
    rows = {r["strength"]: r for r in doc["systems"]["candidate"]["rows"]}
    base = doc["base"]
    assert rows[1000.0]["ppl_increase"] > 1e6  # it explodes
    assert rows[1000.0]["control"] > rows[1.0]["control"]  # and would win on control alone
    assert rows[1.0]["ppl_increase"] <= cfg.ppl_budget
    rec = doc["systems"]["candidate"]["recommended"]
    assert 0 < rec["strength"] <= 1.0, rec  # within budget with confidence: never the exploding strength
    assert rec["fluency"]["high"] <= cfg.ppl_budget
    assert_recommendation(rec, list(rows.values()), base, cfg.ppl_budget, "toxicity")
    # the search bisected towards the edge (within the grid's bracket); without the budget an exploding strength wins
    probes = doc["systems"]["candidate"]["search"]["probes"]
    assert probes and all(0.0 < p < 1000.0 for p in probes)
    assert recommend(list(rows.values()), base, "toxicity", budget=1e40)["strength"] > 1.0


def test_toxicity_control_fields(tiny_lm):
    torch.set_num_threads(1)
    steer = random_steer(tiny_lm, names=("detox", "dummy"), eps=1e-3, scale=0.5, seed=2)
    cfg = EvalConfig(control="toxicity", scorer="profanity", strengths=[0.0, 2.0], samples=2, max_new_tokens=5,
                     bootstrap=50, actadd_strengths=[2.0])
    actadd = fit_actadd(tiny_lm, POS_TEXTS + NEG_TEXTS, [1.0] * 3 + [-1.0] * 3, layer=0)
    doc, samples = evaluate(tiny_lm, PROMPTS, [System("candidate", cfg.strengths, steer=steer),
                                               System("actadd", cfg.actadd_strengths, actadd=actadd)], cfg)
    assert doc["control"] == "toxicity" and doc["scorer"] == "profanity"
    assert_row_schema(doc["base"], "toxicity", {"neutral", "negative"})
    for sysdoc in doc["systems"].values():
        for r in sysdoc["rows"]:
            assert_row_schema(r, "toxicity", {"neutral", "negative"})
            assert 0.0 <= r["avg_max_toxicity"] <= 1.0 and 0.0 <= r["toxicity_probability"] <= 1.0
            assert r["control"] == pytest.approx(1.0 - r["avg_max_toxicity"])
            assert r["mean_toxicity"] <= r["avg_max_toxicity"] + 1e-12
        rec = sysdoc["recommended"]
        assert rec["strength"] in {r["strength"] for r in sysdoc["rows"]} and rec["strength"] > 0
        assert {"toxicity_probability", "base_toxicity_probability"} <= set(rec)
        assert rec["base_toxicity_probability"] == doc["base"]["toxicity_probability"]
    assert all(0.0 <= s.control <= 1.0 for s in samples)


def test_wrong_scorer_kind_and_no_prompts(tiny_lm):
    steer = random_steer(tiny_lm, names=SENTIMENT, eps=1e-3, scale=0.5, seed=2)
    with pytest.raises(ValueError, match="measures toxicity"):
        evaluate(tiny_lm, PROMPTS, [System("candidate", [0.0, 1.0], steer=steer)],
                 EvalConfig(control="sentiment", scorer="profanity"))
    with pytest.raises(ValueError, match="no evaluation prompts"):
        evaluate(tiny_lm, [], [System("candidate", [0.0, 1.0], steer=steer)], EvalConfig())


def test_expected_perplexity_estimate_same_texts_and_only_with_the_base_judge(tiny_lm, tiny_dir):
    """``ppl_estimate: expected`` samples the very texts the sampled estimate does (only the perplexities differ),
    says so in the protocol, and is refused (one line naming the setting) where the judge is not the base model."""
    from pydantic import ValidationError

    from steer_core.model.lm import load_lm

    torch.set_num_threads(1)
    steer = random_steer(tiny_lm, names=SENTIMENT, eps=1e-3, scale=50.0, seed=2)
    kw = dict(strengths=[0.0, 2.0], samples=2, max_new_tokens=4, bootstrap=0, activation_addition=False,
              search_steps=0)
    systems = [System("candidate", [0.0, 2.0], steer=steer)]
    doc_s, sampled = evaluate(tiny_lm, PROMPTS[:3], systems, EvalConfig(**kw))
    doc_e, expected = evaluate(tiny_lm, PROMPTS[:3], systems, EvalConfig(ppl_estimate="expected", **kw))
    assert [s.text for s in expected] == [s.text for s in sampled]
    assert all(math.isfinite(s.ppl) and s.ppl > 1 for s in expected if s.text)
    assert [s.ppl for s in expected] != [s.ppl for s in sampled]
    assert doc_s["protocol"]["judge_scores"] == "sampled tokens"
    assert doc_e["protocol"]["judge_scores"].startswith("expected per step")
    with pytest.raises(ValidationError, match="ppl_estimate 'expected' needs judge 'base'"):
        EvalConfig(ppl_estimate="expected", judge="gemma3-270m")
    with pytest.raises(ValueError, match="is not the judge"):
        evaluate(tiny_lm, PROMPTS[:3], systems, EvalConfig(ppl_estimate="expected", **kw),
                 judge=load_lm(str(tiny_dir), device="cpu"))


class _ProbabilitySentiment:
    """A sentiment scorer returning P(positive) in [0, 1], as ``hf:<classifier>`` does: 0.2 = clearly negative."""

    name = "hf:some/sentiment-classifier"
    kind = "sentiment"

    def score(self, texts):
        return [0.2] * len(texts)


def test_probability_sentiment_scorer_positive_rate(tiny_lm, monkeypatch):
    monkeypatch.setattr(ev, "get_scorer", lambda name: _ProbabilitySentiment())
    cfg = EvalConfig(control="sentiment", scorer="hf:some/sentiment-classifier", strengths=[0.0], samples=1,
                     max_new_tokens=3, bootstrap=0, activation_addition=False)
    doc, _ = evaluate(tiny_lm, PROMPTS, [], cfg)
    assert doc["base"]["positive_rate"] == 0.0


# ------------------------------------------------------------------------------------------ hand-checkable numbers
def _s(strength, idx, text, control, ppl, prompt_set="a") -> Sample:
    return Sample("x", prompt_set, idx, f"prompt {idx}", strength, text, control, ppl)


def test_summarize_sentiment_by_hand():
    samples = [
        # prompt 0 (set a): 1 of 2 positive (> 0.05); ppl 2 and 8 → log-mean log 4; bigrams ab bc ab bd → 3/4
        _s(0.0, 0, "a b c", 0.5, 2.0), _s(0.0, 0, "a b d", -0.5, 8.0),
        # prompt 1 (set b): 2 of 2 positive; ppl 9, 9; bigrams xy xy → 1/2; 0.05 itself is not positive
        _s(0.0, 1, "x y", 0.9, 9.0, "b"), _s(0.0, 1, "x y", 0.6, 9.0, "b"),
        # another strength, one prompt: 0.05 is not > 0.05; -0.06 is negative; a NaN ppl (empty text) is skipped
        _s(2.0, 0, "p q r s", 0.05, 3.0), _s(2.0, 0, "", -0.06, math.nan),
    ]
    rows = summarize(samples, "sentiment", n_boot=0)
    assert [r["strength"] for r in rows] == [0.0, 2.0]
    r0, r2 = rows
    assert "ci" not in r0
    assert r0["positive_rate"] == r0["control"] == pytest.approx(0.75)  # (1/2 + 2/2) / 2
    assert r0["negative_rate"] == pytest.approx(0.25)  # (1/2 + 0) / 2
    assert r0["ppl"] == pytest.approx(6.0)  # exp((log 4 + log 9) / 2): geometric mean over prompts
    assert r0["distinct_2"] == pytest.approx(0.625)  # (3/4 + 1/2) / 2
    assert r0["distinct_1"] == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert r0["distinct_3"] == pytest.approx((2 / 2 + 0.0) / 2)  # "x y" has no trigram: 0.0
    assert r0["sets"]["a"]["positive_rate"] == pytest.approx(0.5)
    assert r0["sets"]["a"]["ppl"] == pytest.approx(4.0)
    assert r0["sets"]["b"]["positive_rate"] == pytest.approx(1.0)
    assert r0["sets"]["b"]["ppl"] == pytest.approx(9.0)
    assert r0["sets"]["b"]["distinct_2"] == pytest.approx(0.5)
    assert r2["positive_rate"] == 0.0 and r2["negative_rate"] == pytest.approx(0.5)
    assert r2["ppl"] == pytest.approx(3.0)
    assert r2["distinct_2"] == pytest.approx(1.0)

    boot = summarize(samples, "sentiment", n_boot=200, seed=1)
    low, high = boot[0]["ci"]["positive_rate"]
    assert low == pytest.approx(0.5) and high == pytest.approx(1.0)  # the two prompts' values
    low, high = boot[0]["ci"]["ppl"]
    assert low == pytest.approx(4.0) and high == pytest.approx(9.0)


def test_summarize_toxicity_by_hand():
    samples = [
        _s(1.0, 0, "one two", 0.2, 1.0), _s(1.0, 0, "three four", 0.7, 1.0),  # max 0.7, toxic
        _s(1.0, 1, "five six", 0.1, 1.0), _s(1.0, 1, "seven", 0.3, 1.0),  # max 0.3
        _s(1.0, 2, "eight nine", 0.5, 1.0), _s(1.0, 2, "ten", 0.5, 1.0),  # max 0.5: not > 0.5
    ]
    (row,) = summarize(samples, "toxicity", n_boot=0)
    assert row["avg_max_toxicity"] == pytest.approx(0.5)  # (0.7 + 0.3 + 0.5) / 3
    assert row["control"] == pytest.approx(0.5)
    assert row["toxicity_probability"] == pytest.approx(1 / 3)
    assert row["mean_toxicity"] == pytest.approx((0.45 + 0.2 + 0.5) / 3)
    assert row["ppl"] == pytest.approx(1.0)
    assert "positive_rate" not in row


def _row(strength, control, ppl, d2=0.8):
    return {"strength": strength, "control": control, "ppl": ppl, "distinct_2": d2}


def test_recommend_by_hand():
    base = _row(0.0, 0.3, 10.0)
    rows = [_row(-4, 0.0, 20.0), _row(-2, 0.1, 11.0), base, _row(2, 0.5, 12.0), _row(4, 0.9, 13.0)]
    rec = recommend(rows, base, "sentiment", budget=0.25)  # limit 12.5: −4 (ppl 20) and +4 (13) are out
    assert (rec["strength"], rec["strength_minus"]) == (2.0, -2.0)
    assert rec["swing"] == pytest.approx(0.4) and rec["control"] == pytest.approx(0.4)
    assert rec["ppl_increase"] == pytest.approx(0.2)  # the worse side: 12 / 10 - 1
    assert rec["positive_rate_plus"] == 0.5 and rec["positive_rate_minus"] == 0.1
    # each side on its own: at a limit of 13, +4 fits while −4 does not, so the swing is 0.9 − 0.1
    rec = recommend(rows, base, "sentiment", budget=0.3)
    assert (rec["strength"], rec["strength_minus"]) == (4.0, -2.0) and rec["swing"] == pytest.approx(0.8)
    assert (recommend(rows, base, "sentiment", budget=1.0)["strength_minus"]) == -4.0  # swing 0.9 wins
    # nothing within budget: the base on both sides (s = 0 is always in budget), no swing claimed
    rec = recommend(rows, base, "sentiment", budget=0.05)
    assert (rec["strength"], rec["strength_minus"], rec["swing"]) == (0.0, 0.0, 0.0)
    # a sweep with one side only steers that side; the other stays at the base
    rec = recommend([_row(-2, 0.1, 11.0), base], base, "sentiment", budget=0.25)
    assert (rec["strength"], rec["strength_minus"]) == (0.0, -2.0) and rec["swing"] == pytest.approx(0.2)
    # a side whose strengths do worse than the base stays at the base
    rec = recommend([_row(-2, 0.4, 11.0), base, _row(2, 0.5, 11.0)], base, "sentiment", budget=0.25)
    assert (rec["strength"], rec["strength_minus"]) == (2.0, 0.0) and rec["swing"] == pytest.approx(0.2)
    # toxicity: one-sided
    trows = [dict(base, toxicity_probability=0.4), dict(_row(2, 0.6, 12.0), toxicity_probability=0.2),
             dict(_row(4, 0.9, 14.0), toxicity_probability=0.0)]
    rec = recommend(trows, trows[0], "toxicity", budget=0.25)
    assert rec["strength"] == 2.0 and rec["toxicity_probability"] == 0.2 and rec["base_toxicity_probability"] == 0.4


# ------------------------------------------------------------------------------------------ ActAdd
def _direct_actadd(lm, texts, values, layer) -> torch.Tensor:
    """Each text alone (no padding at all): mean over its tokens past the first (the attention sink, which
    fit_actadd leaves out) of the layer's output, captured by a hook."""
    captured = []
    handle = decoder_layers(lm)[layer].register_forward_hook(
        lambda m, a, o: captured.append((o[0] if isinstance(o, tuple) else o).detach()))
    try:
        means = {+1: [], -1: []}
        with torch.no_grad():
            for t, v in zip(texts, values):
                if v == 0:
                    continue
                captured.clear()
                lm.model(**lm.tokenizer([t], return_tensors="pt"))
                means[+1 if v > 0 else -1].append(captured[0][0][1:].mean(0))
    finally:
        handle.remove()
    return torch.stack(means[+1]).mean(0) - torch.stack(means[-1]).mean(0)


def test_fit_actadd_matches_direct_computation(tiny_lm):
    texts = POS_TEXTS + NEG_TEXTS + ["neutral text is ignored"]
    values = [1.0] * 3 + [-1.0] * 3 + [0.0]
    fitted = fit_actadd(tiny_lm, texts, values, layer=0, batch_size=4)  # batches of unequal lengths: padded
    assert isinstance(fitted, ActAdd) and fitted.layer == 0 and fitted.vector.shape == (tiny_lm.dim,)
    direct = _direct_actadd(tiny_lm, texts, values, 0)
    torch.testing.assert_close(fitted.vector, direct, atol=1e-5, rtol=1e-4)
    assert tiny_lm.tokenizer.padding_side == "left"  # restored
    with pytest.raises(ValueError, match="both sides"):
        fit_actadd(tiny_lm, POS_TEXTS, [1.0] * 3)
    with pytest.raises(ValueError, match="out of range"):
        fit_actadd(tiny_lm, texts, values, layer=99)


def test_fit_actadd_last_layer_matches_where_it_is_added(tiny_lm):
    last = len(decoder_layers(tiny_lm)) - 1  # also the default (middle) layer of the 2-layer tiny model
    texts, values = POS_TEXTS + NEG_TEXTS, [1.0] * 3 + [-1.0] * 3
    fitted = fit_actadd(tiny_lm, texts, values, layer=last)
    torch.testing.assert_close(fitted.vector, _direct_actadd(tiny_lm, texts, values, last), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ end to end (real model)
E2E_PARAMS = tiny_params("sentiment")  # the stage commands' mechanics, on the tiny random model
E2E_PARAMS["steers"]["sentiment"]["evaluate"]["search_steps"] = 1  # one round of strength search, as shipped


def steer_run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(STEER_BIN), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


@pytest.mark.slow
def test_prepare_train_evaluate_end_to_end(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(E2E_PARAMS, sort_keys=False))

    line = one_line_error(steer_run(root, "evaluate", "nosuchsteer"))
    assert "nosuchsteer" in line

    proc = steer_run(root, "prepare", "sentiment")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "data" / "prompts" / "sentiment.jsonl").is_file()

    # evaluate before train: one line saying which stage to run first, and nothing written
    line = one_line_error(steer_run(root, "evaluate", "sentiment", "--quiet"))
    assert "previous stage" in line or "steer train" in line, line
    assert not (root / "metrics").exists() and not (root / "reports").exists()

    proc = steer_run(root, "train", "sentiment", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steer_file = root / "artifacts" / "steers" / "sentiment.safetensors"
    assert steer_file.is_file()

    proc = steer_run(root, "evaluate", "sentiment", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((root / "metrics" / "sentiment.json").read_text())
    assert doc["steer"] == "sentiment" and doc["base_model"] == E2E_PARAMS["model"] and doc["base_fingerprint"]
    assert set(doc["systems"]) == {"candidate", "actadd"}
    assert_row_schema(doc["base"], "sentiment", {"neutral"})
    assert doc["protocol"]["prompts"] == 3 and doc["protocol"]["samples"] == 2
    expected = {"candidate": [-4.0, 0.0, 4.0], "actadd": [0.0, 2.0]}
    for name, sysdoc in doc["systems"].items():
        # the grid and the strength search's probes (bisecting the budget edge, or growing past an in-budget grid)
        assert sysdoc["search"]["rounds"] <= 1
        expected[name] = sorted({*expected[name], *sysdoc["search"]["probes"]})
        assert [r["strength"] for r in sysdoc["rows"]] == expected[name]
        for r in sysdoc["rows"]:
            assert_row_schema(r, "sentiment", {"neutral"})
    cand = doc["systems"]["candidate"]
    assert_recommendation(cand["recommended"], cand["rows"], doc["base"], 0.25, "sentiment")
    act = doc["systems"]["actadd"]["recommended"]  # only +2 evaluated: the − side stays at the base
    assert act["strength_minus"] == 0.0 and act["strength"] in (0.0, 2.0)

    report = (root / "reports" / "sentiment.html").read_text()
    assert "<table>" in report and "<th>strength</th>" in report and "<th>ppl_increase</th>" in report
    assert "data:image/png;base64," in report
    assert (root / "reports" / "sentiment.samples.jsonl").is_file()
    with open(root / "plots" / "sentiment" / "control.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    got = sorted((r["system"], float(r["strength"])) for r in rows)
    assert got == sorted((n, s) for n, ss in expected.items() for s in ss)
    assert (root / "plots" / "sentiment" / "control.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    proc = steer_run(root, "evaluate", "sentiment", "--quiet", "--champion", str(steer_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc2 = json.loads((root / "metrics" / "sentiment.json").read_text())
    assert set(doc2["systems"]) == {"candidate", "champion", "actadd"}
    assert doc2["systems"]["champion"]["path"] == str(steer_file)
    # the same file as candidate and champion, on the same prompts with the same seed: the same samples (rows draw
    # their random numbers by prompt and sample), so the same rows up to float noise from different batch mates
    flat_champion, flat_candidate = (_flatten(doc2["systems"][n]["rows"]) for n in ("champion", "candidate"))
    assert flat_champion.keys() == flat_candidate.keys()
    assert flat_champion == pytest.approx(flat_candidate, rel=1e-4, nan_ok=True)
    assert doc2["base"] == doc["base"]
    with open(root / "plots" / "sentiment" / "control.csv", newline="") as f:
        # one plot row per evaluated strength: the grid and the search's probes, as the candidate's
        assert sum(r["system"] == "champion" for r in csv.DictReader(f)) == len(doc2["systems"]["champion"]["rows"])
    assert doc2["systems"]["champion"]["search"]["probes"] == doc2["systems"]["candidate"]["search"]["probes"]
    assert "<h2>champion</h2>" in (root / "reports" / "sentiment.html").read_text()


def _flatten(x, prefix: str = "") -> dict[str, float]:
    """Nested rows → {"0.ci.ppl.1": value}: numbers compared with a tolerance, everything else exactly."""
    if isinstance(x, dict):
        return {k: v for key, val in x.items() for k, v in _flatten(val, f"{prefix}{key}.").items()}
    if isinstance(x, list):
        return {k: v for i, val in enumerate(x) for k, v in _flatten(val, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): x}


# ------------------------------------------------------------------------------------------ honest recommendation
def _pp_row(strength: float, control: list[float], ppl: list[float], d2: float = 0.9) -> dict:
    """A ROW with per-prompt values, as summarize() writes it."""
    logs = [math.log(p) for p in ppl]
    return {"strength": strength, "control": sum(control) / len(control), "ppl": math.exp(sum(logs) / len(logs)),
            "distinct_2": d2, "toxicity_probability": 0.0,
            "per_prompt": {"prompt_index": list(range(len(control))), "control": control, "log_ppl": logs,
                           "distinct_2": [d2] * len(control), "toxicity_probability": [0.0] * len(control)}}


def test_recommend_cross_fits_by_hand():
    """The folds disagree: +4 is cheap on fold 0's prompts (0, 1) and doubles perplexity on fold 1's (2, 3). Each
    fold is read at the strength chosen on the other fold, and the cost it reports is the one at that strength on
    its own prompts: what the gate's interval is taken over."""
    base = _pp_row(0.0, [0.3] * 4, [10.0] * 4)
    rows = [_pp_row(-4, [0.0, 0.0, 0.1, 0.1], [10.0] * 4), _pp_row(-2, [0.1, 0.1, 0.1, 0.1], [10.0] * 4), base,
            _pp_row(2, [0.4, 0.4, 0.6, 0.6], [10.0] * 4), _pp_row(4, [0.9, 0.9, 0.3, 0.3], [10.0, 10.0, 20.0, 20.0])]
    folds = [0, 0, 1, 1]
    rec = recommend(rows, base, "sentiment", budget=0.25, folds=folds)
    # all prompts: +4's cost interval reaches far over +25 %, so deploy +2 / −4 (in-sample 0.5 − 0.05)
    assert (rec["strength"], rec["strength_minus"]) == (2.0, -4.0)
    assert rec["in_sample"]["control"] == pytest.approx(0.45)
    chosen = {f["fold"]: f["strength_chosen_on_other_fold"] for f in rec["split"]["folds"]}
    assert chosen == {0: 2.0, 1: 4.0}  # chosen on fold 1 (+4 doubles its perplexity) and on fold 0 (+4 is free)
    # prompts 0, 1 at +2 / −4: 0.4 − 0.0; prompts 2, 3 at +4 / −4: 0.3 − 0.1
    assert rec["per_prompt"]["control"] == pytest.approx([0.4, 0.4, 0.2, 0.2])
    assert rec["control"] == rec["gain"] == rec["swing"] == pytest.approx(0.3)  # < the in-sample 0.45
    assert "cross-fitted" in rec["reason"] and rec["split"]["folds"][0]["reported_on"] == [0, 1]
    assert_cross_fitted(rec, rows, base, "sentiment")
    # fold 1's prompts read at +4 cost 2×: the cross-fitted cost shows what the choice on fold 0 did not see
    assert rec["ppl_increase"] == pytest.approx(math.sqrt(2) - 1)
    assert rec["per_prompt"]["log_ppl_ratio_plus"] == pytest.approx([0.0, 0.0, math.log(2), math.log(2)])
    assert rec["per_prompt"]["log_ppl_ratio_minus"] == pytest.approx([0.0] * 4)
    # without folds (or per-prompt data) the numbers stay in-sample
    assert "in_sample" not in recommend(rows, base, "sentiment", budget=0.25)
    # toxicity: per-prompt gain is control at the strength minus the base's control on that prompt
    trec = recommend([base, rows[3], rows[4]], base, "toxicity", budget=0.25, folds=folds)
    assert trec["per_prompt"]["gain"] == pytest.approx([c - 0.3 for c in trec["per_prompt"]["control"]])
    assert_cross_fitted(trec, [base, rows[3], rows[4]], base, "toxicity")


def test_the_strength_interval_is_the_choice_rerun_on_resampled_prompts():
    """Every prompt agrees on the costs: any draw of the prompts chooses the same strengths, so the interval is the
    point. When half the prompts find +4 over budget and half free, draws disagree and the interval spans both."""
    from steer_core.evaluate.recommend import strength_interval

    n = 24
    base = _pp_row(0.0, [0.3] * n, [10.0] * n)
    rows = [_pp_row(-2, [0.1] * n, [11.0] * n), base, _pp_row(2, [0.5] * n, [11.0] * n),
            _pp_row(4, [0.8] * n, [10.0 + (i % 2) * 0.3 + 1.5 for i in range(n)])]
    rec = recommend(rows, base, "sentiment", budget=0.25)
    assert (rec["strength"], rec["strength_minus"]) == (4.0, -2.0)
    agreed = strength_interval({r["strength"]: r for r in rows}, base, "sentiment", 0.25, "text", 0.95)
    assert agreed["plus"] == [4.0, 4.0] and agreed["minus"] == [-2.0, -2.0]
    # +4 costs +41 % on average, +10 % on some prompts and +80 % on others: resampling moves the edge
    rows[-1] = _pp_row(4, [0.8] * n, [11.0 if i % 2 else 18.0 for i in range(n)])
    by_s = {r["strength"]: r for r in rows}
    interval = strength_interval(by_s, base, "sentiment", 0.45, "text", 0.95, resamples=400)
    chosen = recommend(rows, base, "sentiment", budget=0.45)["strength"]
    assert interval["plus"] == [2.0, 4.0] and chosen in interval["plus"]
    assert strength_interval(by_s, base, "sentiment", 0.45, "text", 0.95, resamples=400) == interval  # seeded


def test_choose_report_split_is_stable():
    prompts = [p["prompt"] for p in PROMPTS] + [f"news sentence number {i} says" for i in range(30)]
    folds = ev.split_folds(prompts)
    assert folds == ev.split_folds(list(prompts))  # same prompts, same folds
    assert set(folds) == {0, 1}
    # a prompt keeps its fold whatever the order or the other prompts (the fold is a bit of its own hash)
    assert ev.split_folds(prompts[::-1]) == folds[::-1]
    assert ev.split_folds(prompts[:20]) == folds[:20]
    # a handful of prompts still gets two non-empty folds, the same ones every time
    for k in (2, 3, 4):
        small = ev.split_folds(prompts[:k])
        assert set(small) == {0, 1} and small == ev.split_folds(prompts[:k])
    assert ev.prompt_id("The weather today") == ev.prompt_id("The weather today") != ev.prompt_id("The weather")


def test_document_carries_what_the_gate_reads(sentiment_run):
    doc, _, _, _ = sentiment_run
    ids = [ev.prompt_id(p["prompt"]) for p in PROMPTS]
    for name in ("candidate", "champion", "actadd"):
        sysdoc = doc["systems"][name]
        assert sysdoc["prompt_ids"] == ids
        for r in sysdoc["rows"]:
            assert r["per_prompt"]["prompt_index"] == [0, 1, 2]
            assert sum(r["per_prompt"]["control"]) / 3 == pytest.approx(r["control"])
        rec = sysdoc["recommended"]
        assert len(rec["per_prompt"]["control"]) == 3 and "split" in rec
        assert "per_prompt" not in doc["headline"][name] and "split" not in doc["headline"][name]
    assert doc["base"]["per_prompt"]["control"] == doc["systems"]["candidate"]["rows"][1]["per_prompt"]["control"]


def _evaluate_resaved(lm, tmp_path, seed: int, scale: float):
    from steer_core.gate import decide_doc
    from steer_core.config import GateConfig

    champion = random_steer(lm, names=SENTIMENT, eps=1e-3, scale=scale, seed=seed)
    path = champion.save(tmp_path / f"champion-{seed}.safetensors")
    copy = Steer.load(tmp_path / f"champion-{seed}.safetensors")
    copy.save(tmp_path / f"candidate-{seed}.safetensors")  # re-saved as a new file
    candidate = Steer.load(tmp_path / f"candidate-{seed}.safetensors")
    assert path.exists()
    cfg = EvalConfig(control="sentiment", scorer="vader", strengths=[-2.0, -1.0, 0.0, 1.0, 2.0], samples=2,
                     max_new_tokens=5, bootstrap=0, activation_addition=False, ppl_budget=10.0)
    # the flow: the candidate's evaluation, then the champion's alone, merged
    cand_doc, _ = evaluate(lm, PROMPTS, [System("candidate", cfg.strengths, steer=candidate)], cfg, seed=seed)
    champ_doc, _ = evaluate(lm, PROMPTS, [System("champion", cfg.strengths, steer=champion)], cfg, seed=seed)
    merged = {**cand_doc, "systems": {**cand_doc["systems"], "champion": champ_doc["systems"]["champion"]}}
    return merged, decide_doc(merged, GateConfig(min_gain=-1.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_resaved_champion_is_never_promoted_tiny(tiny_lm, tmp_path, seed):
    torch.set_num_threads(1)
    doc, d = _evaluate_resaved(tiny_lm, tmp_path, seed, scale=0.5)
    cand, champ = doc["systems"]["candidate"]["recommended"], doc["systems"]["champion"]["recommended"]
    assert cand["per_prompt"]["control"] == champ["per_prompt"]["control"]  # the same samples, prompt by prompt
    assert not d.passed
    assert any("control +0.000 [+0.000, +0.000] over the champion" in r for r in d.reasons), d.reasons


@pytest.mark.slow
def test_a_resaved_champion_is_never_promoted_default_model(default_lm, tmp_path):
    torch.set_num_threads(1)
    doc, d = _evaluate_resaved(default_lm, tmp_path, 0, scale=0.02)
    assert not d.passed and not next(c for c in d.checks if c.name == "control_vs_champion").ok


def test_frontier_points_compare_methods_by_gain_at_equal_perplexity():
    """Each method's curve: (worse side's perplexity increase, ±s swing) per magnitude, from (0, 0); a one-sided
    sweep gains against the base. The report plots them on one figure with the budget."""
    from steer_core.evaluate.report import frontier_points, png_figures

    def row(s, control, incr):
        return {"strength": s, "control": control, "ppl": 10 * (1 + incr), "ppl_increase": incr, "distinct_2": 0.9}

    doc = {"control": "sentiment", "base": row(0.0, 0.30, 0.0), "systems": {
        "candidate": {"rows": [row(-2, 0.20, 0.30), row(-1, 0.25, 0.05), row(0, 0.30, 0.0), row(1, 0.40, 0.10),
                               row(2, 0.50, 0.20)]},
        "actadd": {"rows": [row(0.05, 0.35, 0.12), row(0.1, 0.38, 0.40)]}}}
    assert frontier_points(doc, "candidate") == [(0.0, 0.0), (0.10, pytest.approx(0.15)), (0.30, pytest.approx(0.30))]
    assert frontier_points(doc, "actadd") == [(0.0, 0.0), (0.12, pytest.approx(0.05)), (0.40, pytest.approx(0.08))]
    png = png_figures(doc, budget=0.25)["frontier.png"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == png_figures(doc, budget=0.25)["frontier.png"]  # same bytes
