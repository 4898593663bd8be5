"""The fair activation-addition baseline (sinks excluded, norm-calibrated, layer chosen by measurement), the
strength search, the held-out prompt set, and the recommendation rule (issue 11)."""

from __future__ import annotations

import math

import pytest
import torch

from steer_core.evaluate.baselines import ActAdd, actadd_steering, choose_layer, decoder_layers, default_layer_candidates, fit_actadd
from steer_core.config import EvalConfig

POS = ["what a lovely flight, thank you so much", "great crew and friendly service", "love it so much"]
NEG = ["delayed again and the staff were rude", "worst airline ever", "lost my bag, never again"]
VALUES = [1.0] * 3 + [-1.0] * 3


def _outputs(lm, texts, layer):
    """Each text alone (no padding): the layer's output, (seq, d) per text."""
    captured = []
    handle = decoder_layers(lm)[layer].register_forward_hook(
        lambda m, a, o: captured.append((o[0] if isinstance(o, tuple) else o).detach()[0]))
    try:
        with torch.no_grad():
            for t in texts:
                lm.model(**lm.tokenizer([t], return_tensors="pt"))
    finally:
        handle.remove()
    return captured


# ------------------------------------------------------------------------------------------ fitting
def test_sink_position_does_not_enter_the_mean(tiny_lm):
    """The vector and typical norm are the mean over positions 1.. only: blowing up position 0's activation (a
    synthetic attention sink, different for every text) changes neither; with sink_positions=0 it dominates."""
    fitted = fit_actadd(tiny_lm, POS + NEG, VALUES, layer=0, batch_size=4)
    outs = _outputs(tiny_lm, POS + NEG, 0)
    direct = torch.stack([o[1:].mean(0) for o in outs[:3]]).mean(0) - torch.stack([o[1:].mean(0) for o in outs[3:]]).mean(0)
    torch.testing.assert_close(fitted.vector, direct, atol=1e-5, rtol=1e-4)
    norms = torch.cat([o[1:].norm(dim=-1) for o in outs])
    assert fitted.typical_norm == pytest.approx(float(norms.mean()), rel=1e-4)
    assert fitted.sink_positions == 1

    def sink(module, args, out):  # position 0 gets a huge, text-dependent activation
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[:, 0] = h[:, 0] * 1000.0
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    handle = decoder_layers(tiny_lm)[0].register_forward_hook(sink)
    try:
        with_sink = fit_actadd(tiny_lm, POS + NEG, VALUES, layer=0, batch_size=4)
        all_pos = fit_actadd(tiny_lm, POS + NEG, VALUES, layer=0, batch_size=4, sink_positions=0)
    finally:
        handle.remove()
    torch.testing.assert_close(with_sink.vector, fitted.vector, atol=1e-5, rtol=1e-4)
    assert with_sink.typical_norm == pytest.approx(fitted.typical_norm, rel=1e-5)
    assert all_pos.vector.norm() > 20 * fitted.vector.norm()  # the old mean is the sink's


def test_the_fit_stops_the_body_at_the_deepest_layer_it_reads(tiny_lm):
    """Layer 0's vector needs only layer 0: the layers above it do not run (the vector is the full pass's, the
    test above), and once the fit is done the body runs to its end again."""
    calls: list[int] = []
    handle = decoder_layers(tiny_lm)[-1].register_forward_hook(lambda *_: calls.append(1))
    try:
        fit_actadd(tiny_lm, POS + NEG, VALUES, layer=0, batch_size=4)
        assert calls == []
        tiny_lm.body(**tiny_lm.tokenizer(["a plain forward"], return_tensors="pt"))
        assert calls == [1]
    finally:
        handle.remove()


def test_scaled_vector_norm_is_multiplier_times_typical_norm(tiny_lm):
    actadd = fit_actadd(tiny_lm, POS + NEG, VALUES, layer=1)
    assert actadd.typical_norm and actadd.typical_norm > 0
    for m in (0.1, 0.5, -2.0):
        assert float(actadd.added(m).norm()) == pytest.approx(abs(m) * actadd.typical_norm, rel=1e-5)
    # the direction is the mean difference's
    cos = torch.nn.functional.cosine_similarity(actadd.added(1.0), actadd.vector, dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-6)
    # what the layer actually receives at a steered position is exactly that vector
    enc = tiny_lm.tokenizer([POS[0]], return_tensors="pt")
    layer = decoder_layers(tiny_lm)[1]
    seen = []
    handle = layer.register_forward_hook(lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o).clone()))
    try:
        with torch.no_grad():
            tiny_lm.model(**enc)
            with actadd_steering(tiny_lm, actadd, 0.5):
                tiny_lm.model(**enc)
    finally:
        handle.remove()
    # hooks run in registration order: ours (capture) ran before the steering hook, so compare the next layer's
    # input instead: re-run capturing the final output of the steered layer via a later-registered hook
    with torch.no_grad(), actadd_steering(tiny_lm, actadd, 0.5):
        after = []
        h2 = layer.register_forward_hook(lambda m, a, o: after.append((o[0] if isinstance(o, tuple) else o).clone()))
        try:
            tiny_lm.model(**enc)
        finally:
            h2.remove()
    delta = after[0][0] - seen[0][0]
    torch.testing.assert_close(delta[1:], actadd.added(0.5).expand_as(delta[1:]), atol=1e-5, rtol=1e-4)
    assert float(delta[0].abs().max()) == 0.0  # position 0 is never steered
    # un-normalised: the raw vector times the strength (the old baseline)
    raw = fit_actadd(tiny_lm, POS + NEG, VALUES, layer=1, normalise=False)
    assert raw.typical_norm is None
    torch.testing.assert_close(raw.added(2.0), raw.vector * 2.0)


def test_strength_zero_leaves_logits_unchanged_and_position_zero_untouched(tiny_lm):
    actadd = fit_actadd(tiny_lm, POS + NEG, VALUES, layer=0)
    # left-padded batch of unequal lengths: each row's first *real* token is its position 0
    texts = ["The weather today is", "A", "Scientists have recently discovered that the"]
    enc = tiny_lm.tokenizer(texts, return_tensors="pt", padding=True)
    assert tiny_lm.tokenizer.padding_side == "left"
    first = enc["attention_mask"].argmax(1)  # index of each row's first real token
    with torch.no_grad():
        base = tiny_lm.model(**enc).logits
        with actadd_steering(tiny_lm, actadd, 0.0):
            zero = tiny_lm.model(**enc).logits
        with actadd_steering(tiny_lm, actadd, 2.0):
            steered = tiny_lm.model(**enc).logits
        after = tiny_lm.model(**enc).logits
    assert torch.equal(zero, base)
    assert torch.equal(after, base)  # the hooks are gone
    rows = torch.arange(len(texts))
    # position 0 of every row: the causal model's logits there depend on position 0 alone, which is not steered
    torch.testing.assert_close(steered[rows, first], base[rows, first], atol=1e-5, rtol=1e-5)
    real = enc["attention_mask"].bool()
    real[rows, first] = False
    assert (steered - base)[real].abs().max() > 1e-3  # every later position is steered
    # in cached generation too: the prompt's first token is untouched, the sampled tokens are steered
    from steer_core.model.generate import generate

    kw = dict(num_samples=2, max_new_tokens=6, seed=0)
    plain = generate(tiny_lm, texts, **kw)
    with actadd_steering(tiny_lm, actadd, 0.0):
        same = generate(tiny_lm, texts, **kw)
    with actadd_steering(tiny_lm, actadd, 3.0):
        moved = generate(tiny_lm, texts, **kw)
    assert [g.token_ids for g in same] == [g.token_ids for g in plain]
    assert [g.token_ids for g in moved] != [g.token_ids for g in plain]


def test_actadd_reads_the_base_model_beside_each_row_through_an_unsteered_twin(tiny_lm):
    """``generate(body=...)`` with base_nll / base_nucleus runs each ActAdd row beside an unsteered twin: the same
    draws as ActAdd alone, each token's base NLL equal to an unsteered forward pass over the text, and (base_nucleus)
    every token inside the base model's nucleus, which free ActAdd draws leave."""
    from functools import partial

    from steer_core.model.generate import generate
    from steer_core.scorers.perplexity import token_perplexity

    from test_sampling import _outside_base_nucleus

    torch.set_num_threads(1)
    actadd = fit_actadd(tiny_lm, POS + NEG, VALUES, layer=0)
    prompts = ["The weather today is", "A river runs through the old"]
    kw = dict(num_samples=3, max_new_tokens=8, seed=4, batch_size=4)  # several batches, twins halve each
    with actadd_steering(tiny_lm, actadd, 3.0):
        alone = generate(tiny_lm, prompts, **kw)
    body = partial(actadd_steering, tiny_lm, actadd, 3.0)
    twinned = generate(tiny_lm, prompts, body=body, base_nll=True, **kw)
    assert [g.token_ids for g in twinned] == [g.token_ids for g in alone]
    direct = token_perplexity(tiny_lm.model, [tiny_lm.tokenizer(g.prompt)["input_ids"] for g in twinned],
                              [g.token_ids for g in twinned])
    recorded = [math.exp(sum(g.base_nll) / len(g.base_nll)) for g in twinned]
    assert recorded == pytest.approx(direct, rel=1e-4)
    with actadd_steering(tiny_lm, actadd, 3.0):  # and the rows were steered: their own NLL is another number
        own = token_perplexity(tiny_lm.model, [tiny_lm.tokenizer(g.prompt)["input_ids"] for g in twinned],
                               [g.token_ids for g in twinned])
    assert all(abs(a - b) / b > 1e-3 for a, b in zip(own, recorded))
    held = generate(tiny_lm, prompts, body=body, base_nll=True, base_nucleus=True, **kw)
    assert _outside_base_nucleus(tiny_lm, alone) > 0
    assert _outside_base_nucleus(tiny_lm, held) == 0
    # at strength 0 the held draws are the base model's own
    zero = generate(tiny_lm, prompts, body=partial(actadd_steering, tiny_lm, actadd, 0.0), base_nucleus=True, **kw)
    assert [g.token_ids for g in zero] == [g.token_ids for g in generate(tiny_lm, prompts, **kw)]
    # a sweep (values) scales the change per row: each strength's rows draw what a call at that strength draws
    swept = generate(tiny_lm, prompts, values=[0.0, 3.0], body=partial(actadd_steering, tiny_lm, actadd, 1.0),
                     base_nll=True, base_nucleus=True, **dict(kw, batch_size=64))
    assert [g.token_ids for g in swept if g.strength == 3.0] == [g.token_ids for g in held]
    assert [g.token_ids for g in swept if g.strength == 0.0] == [g.token_ids for g in zero]
    with pytest.raises(ValueError, match="one of a steer, a body change"):
        from builders import random_steer

        generate(tiny_lm, prompts, random_steer(tiny_lm), 1.0, body=body)


def test_fit_actadd_checks(tiny_lm):
    with pytest.raises(ValueError, match="both sides"):
        fit_actadd(tiny_lm, POS, [1.0] * 3)
    with pytest.raises(ValueError, match="out of range"):
        fit_actadd(tiny_lm, POS + NEG, VALUES, layer=99)
    with pytest.raises(ValueError, match="sink_positions"):
        fit_actadd(tiny_lm, POS + NEG, VALUES, sink_positions=-1)


def test_choose_layer_keeps_best_control_at_budget(tiny_lm):
    seen = []

    def control_at_budget(actadd: ActAdd):
        seen.append(actadd.layer)
        return {0: 0.1, 1: 0.3}[actadd.layer], {"strength": 0.5}

    choice = choose_layer(tiny_lm, POS + NEG, VALUES, [0, 1], control_at_budget)
    assert seen == [0, 1] and choice.actadd.layer == 1
    assert [r["layer"] for r in choice.table] == [0, 1] and choice.table[1]["strength"] == 0.5
    assert choice.actadd.meta["layer_sweep"] == choice.table
    # one pass over the texts fits every candidate exactly as one fit per layer does
    from steer_core.evaluate.baselines import fit_actadd_layers

    both = fit_actadd_layers(tiny_lm, POS + NEG, VALUES, [1, 0])
    for layer in (0, 1):
        one = fit_actadd(tiny_lm, POS + NEG, VALUES, layer=layer)
        torch.testing.assert_close(both[layer].vector, one.vector)
        assert both[layer].typical_norm == pytest.approx(one.typical_norm)
    assert default_layer_candidates(30) == [8, 10, 15, 20]
    assert default_layer_candidates(2) == [0, 1]


def test_eval_config_actadd_fields():
    cfg = EvalConfig()
    assert cfg.actadd_sink_positions == 1 and cfg.actadd_normalise and cfg.actadd_layer_candidates is None
    assert EvalConfig(actadd_layer_candidates=[4, 8]).actadd_layer_candidates == [4, 8]
    for bad in ({"actadd_layer_candidates": []}, {"actadd_layer_candidates": [3, 3]},
                {"actadd_layer_candidates": [-1]}, {"actadd_sink_positions": -1}, {"actadd_layer": -2},
                {"actadd_sink": 1}):
        with pytest.raises(Exception):
            EvalConfig(**bad)


# ------------------------------------------------------------------------------------------ held-out prompts
def test_heldout_prompts_are_fixed_three_domain_sets():
    from steer_core.data.corpora import DOMAINS, heldout_prompts

    rows = heldout_prompts(per_domain=6, words=5, seed=0)
    assert [r["set"] for r in rows] == [d for d in DOMAINS for _ in range(6)]
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert all(len(r["prompt"].split()) == 5 for r in rows)
    assert heldout_prompts(per_domain=6, words=5, seed=0) == rows  # fixed
    assert heldout_prompts(per_domain=6, words=5, seed=1) != rows  # seeded
    product = [r["prompt"].lower() for r in rows if r["set"] == "product"]
    assert not any(a in p for p in product for a in ("@", "http", "united", "jetblue"))
    with pytest.raises(ValueError, match="unknown"):
        heldout_prompts(domains=["poetry"])


# ------------------------------------------------------------------------------------------ the recommendation rule
def _row(strength, control, ppl, d2=0.9):
    return {"strength": strength, "control": control, "ppl": ppl, "distinct_2": d2, "toxicity_probability": 0.0}


def test_recommend_takes_the_strongest_strength_inside_the_fitted_budget_edge():
    """Random tables: on each side the recommended strength is the largest |s| whose cost, fitted non-decreasing in
    |s|, is within budget, whatever the control readings say (both controls); a sentiment side whose control,
    fitted the same way, never rises above the base's stays at the base."""
    import random

    from steer_core.evaluate.metrics import isotonic
    from steer_core.evaluate.recommend import recommend

    rng = random.Random(0)
    for _ in range(300):
        base = _row(0.0, 0.3, 10.0)
        mags = sorted(rng.sample([0.5, 1.0, 1.5, 2.0, 3.0, 4.0], 3))
        rows = [base]
        for m in mags:
            rows += [_row(m, rng.choice([0.3, 0.3, 0.4, 0.6]), 10.0 + rng.random() * 4 * m),
                     _row(-m, rng.choice([0.3, 0.2, 0.1]), 10.0 + rng.random() * 4 * m)]
        by_s = {r["strength"]: r for r in rows}
        for control in ("sentiment", "toxicity"):
            rec = recommend(rows, base, control, budget=0.25)
            sides = [(1, rec["strength"]), (-1, rec["strength_minus"])] if control == "sentiment" else [
                (1, rec["strength"])]
            for sign, s in sides:
                head = [0.0] if control == "sentiment" else []
                fitted = isotonic(head + [by_s[sign * m]["ppl"] / 10.0 - 1.0 for m in mags])[len(head):]
                inside = [m for m, f in zip(mags, fitted) if f <= 0.25 + 1e-12]
                rises = isotonic([sign * by_s[sign * m]["control"] for m in [0.0, *inside]])
                if inside and control == "sentiment" and rises[-1] <= rises[0]:  # no control above the base
                    assert s == 0.0, (control, sign, rows, rec)
                elif inside:
                    assert abs(s) == max(inside), (control, sign, rows, rec)
                else:  # sentiment falls back to the base, toxicity to its mildest strength (and says so)
                    assert abs(s) == (0.0 if control == "sentiment" else mags[0]), (control, sign, rows, rec)


def test_a_lucky_reading_moves_neither_the_choice_nor_the_edge():
    """A mild strength whose control reads a few lucky points above a stronger in-budget one is not chosen over it,
    and a strength past the edge whose cost reads lucky-low is pooled with its neighbours, not let in."""
    from steer_core.evaluate.recommend import recommend

    base = _row(0.0, 0.0, 10.0)
    rows = [base, _row(1.0, 0.50, 10.5), _row(2.0, 0.45, 11.5), _row(3.0, 0.7, 13.5), _row(4.0, 0.8, 12.0),
            _row(5.0, 0.9, 16.0)]
    rec = recommend(rows, base, "toxicity", budget=0.25)
    assert rec["strength"] == 2.0, rec["reason"]  # not 1 (its lucky 0.50), not 4 (its lucky 12.0 after 13.5)
    assert "fitted non-decreasing" in rec["reason"]


def test_a_fold_chooses_at_the_width_of_all_prompts():
    """Cross-fitting: a fold's choosing prompts take the deployed rule's interval width (all prompts), not the wider
    one of their own half, so a fold is not timider than the strength deployed; each fold is still read at the
    strength chosen on the other."""
    import math

    from steer_core.evaluate.recommend import as_if_all, recommend

    assert as_if_all(0.10, 0.30, 12, 48) == pytest.approx(math.expm1(math.log1p(0.1) + (math.log1p(0.3)
                                                                                     - math.log1p(0.1)) / 2))
    assert as_if_all(0.10, 0.30, 48, 48) == 0.30 and as_if_all(0.10, 0.30, 12, None) == 0.30
    n = 24
    cost = [0.12 + 0.06 * ((i * 7) % 5 - 2) / 2 for i in range(n)]  # mean 0.12 (log scale), spread ±0.06

    def row(s: float, scale: float) -> dict:
        return {"strength": s, "control": 0.5, "ppl": 10.0, "distinct_2": 0.9, "toxicity_probability": 0.0,
                "per_prompt": {"control": [0.5] * n, "log_ppl": [math.log(10.0)] * n, "distinct_2": [0.9] * n,
                               "log_cost": [c * scale for c in cost], "toxicity_probability": [0.0] * n}}

    base = {**row(0.0, 0.0), "control": 0.0, "per_prompt": {**row(0.0, 0.0)["per_prompt"], "control": [0.0] * n}}
    rows = [row(1.0, 0.5), row(2.0, 1.0)]
    folds = [i % 2 for i in range(n)]
    rec = recommend(rows, base, "toxicity", 0.152, folds, fluency="paired")
    assert rec["strength"] == 2.0  # all 24 prompts: 2 is within +15.2 % (+14.7 %)
    chosen = [f["strength_chosen_on_other_fold"] for f in rec["split"]["folds"]]
    assert chosen == [2.0, 2.0], rec["split"]  # each fold's 12 prompts, at the width of 24, agree
    assert "√(fold / all)" in rec["split"]["chooser"]
    # at a fold's own width the same readings would have chosen the milder strength: the rule is what moved it
    from steer_core.evaluate.recommend import choose
    by_s = {r["strength"]: r for r in rows} | {0.0: base}
    assert choose(by_s, base, "toxicity", 0.152, list(range(0, n, 2)), "paired")[0] == 1.0  # +15.9 % at 12


def test_isotonic_pools_adjacent_violators():
    from steer_core.evaluate.search import isotonic

    assert isotonic([0.0, 0.3, 0.1, 0.5]) == pytest.approx([0.0, 0.2, 0.2, 0.5])
    assert isotonic([3.0, 2.0, 1.0]) == pytest.approx([2.0, 2.0, 2.0])


# ------------------------------------------------------------------------------------------ the search in evaluate
def test_next_magnitude_bisects_the_fitted_budget_edge():
    from steer_core.evaluate.search import next_magnitude

    cands = lambda pairs: [{"strength": m, "ppl": p} for m, p in pairs]  # noqa: E731
    assert next_magnitude(cands([(1.0, 11.0), (2.0, 14.0)]), 12.5) == 1.5  # between in-budget 1 and over-budget 2
    assert next_magnitude(cands([(1.0, 13.0), (2.0, 14.0)]), 12.5) == 0.5  # even the smallest breaks it
    assert next_magnitude(cands([(1.0, 11.0), (2.0, 12.0)]), 12.5) == 4.0  # all in budget: grow
    assert next_magnitude(cands([(1.0, 11.0), (1.05, 13.0)]), 12.5) is None  # bracket within 10 %: located
    # a lucky reading past the edge is pooled with its neighbours (isotonic), not trusted
    assert next_magnitude(cands([(1.0, 11.0), (2.0, 14.0), (3.0, 12.0), (4.0, 20.0)]), 12.5) == 1.5
    assert next_magnitude(cands([(64.0, 1.0)]), 12.5) is None and next_magnitude([], 12.5) is None


def test_evaluate_searches_the_strength_and_cross_fits_it(tiny_lm):
    """The grid brackets the budget edge; the search adds probes inside that bracket (placed by all prompts and by
    each fold's choosing prompts), the recommendation may land on a probe, and each fold is still read at the
    strength chosen on the other fold."""
    from steer_core.evaluate.protocol import System, split_folds
    from steer_core.evaluate.driver import evaluate
    from builders import random_steer

    torch.set_num_threads(1)
    prompts = [{"set": "a", "prompt": p} for p in ("The weather today is", "Scientists have found",
                                                   "My favourite food is", "The city council said",
                                                   "In the morning we", "The new phone has")]
    steer = random_steer(tiny_lm, names=("sentiment", "dummy"), eps=1e-3, scale=50.0, seed=1)
    grid = EvalConfig(control="sentiment", scorer="vader", strengths=[-100.0, -30.0, 0.0, 30.0, 100.0], samples=2,
                      max_new_tokens=4, bootstrap=20, activation_addition=False, search_steps=0)
    # without search: the grid alone, as before
    grid_doc, _ = evaluate(tiny_lm, prompts, [System("candidate", grid.strengths, steer=steer)], grid)
    rows = {r["strength"]: r for r in grid_doc["systems"]["candidate"]["rows"]}
    assert list(rows) == grid.strengths and grid_doc["systems"]["candidate"]["search"]["probes"] == []
    cost = lambda s: rows[s]["ppl_increase"]  # noqa: E731
    assert cost(30.0) < cost(100.0), "this steer must cost more at +100 than at +30"
    cfg = grid.model_copy(update={"search_steps": 2, "ppl_budget": (cost(30.0) + cost(100.0)) / 2})

    logs: list[str] = []
    doc, samples = evaluate(tiny_lm, prompts, [System("candidate", cfg.strengths, steer=steer)], cfg, log=logs.append)
    cand = doc["systems"]["candidate"]
    rows = {r["strength"]: r for r in cand["rows"]}
    search = cand["search"]
    assert 1 <= search["rounds"] <= 2 and search["probes"]
    # each side is searched on its own: the all-prompt chooser bisects the + side's bracket (30, 100); a fold's
    # chooser (half the prompts), or the − side, may see another bracket: below 30, or past 100 (then it grows ×2)
    assert any(30.0 < p < 100.0 for p in search["probes"])
    assert all(0.0 < abs(p) <= 200.0 for p in search["probes"])
    assert set(rows) == set(cfg.strengths) | set(search["probes"])  # the grid stays (for the plots)
    assert rows[0.0] == doc["base"] or rows[0.0]["control"] == doc["base"]["control"]
    assert sum(m.startswith("strength search") for m in logs) == search["rounds"]
    assert len(samples) == len(prompts) * cfg.samples * len(rows)
    rec = cand["recommended"]
    assert rec["strength"] in rows
    folds = split_folds([p["prompt"] for p in prompts])
    for f in rec["split"]["folds"]:
        assert f["strength_chosen_on_other_fold"] in rows
        assert all(folds[i] == f["fold"] for i in f["reported_on"])
