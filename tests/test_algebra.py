"""Steer algebra and insight: compose, merge, transfer, explain, highlight (tiny models; spans on the real LM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from steer_core.tools.algebra import compose, parse_part
from steer_core.cli import app
from steer_core.tools.explain import best_spans, explain, highlight, mean_hidden_state, render_html, render_terminal, word_like_mask
from steer_core.model.generate import steering
from steer_core.tools.merge import MERGE_INFO, merge_into_model
from steer_core.model.steer import BaseModelMismatch, Steer
from steer_core.tools.transfer import transfer

from builders import random_steer

runner = CliRunner()


def _inputs(lm):
    return lm.tokenizer(["a short text for the test", "another one"], return_tensors="pt", padding=True)


def _manual_logits(lm, ids, M: torch.Tensor) -> torch.Tensor:
    """Logits with h + M h at the output layer, M = ε Σ s_i W_i computed by hand."""
    with torch.no_grad():
        h = lm.body(**ids).last_hidden_state
        return (h + h @ M.T) @ lm.output_embeddings.weight.T


# --------------------------------------------------------------------------------------------- compose
@pytest.mark.parametrize("ranks", [(None, None), (4, 3), (None, 5)])
def test_composition_equals_the_weighted_sum(tiny_lm, ranks):
    fp = tiny_lm.fingerprint
    A = random_steer(tiny_lm.dim, ranks[0], eps=1e-2, seed=1, fp=fp, base_model="test-model")
    B = random_steer(tiny_lm.dim, ranks[1], eps=3e-2, seed=2, fp=fp, base_model="test-model")  # another ε: folded into W
    a, b = 1.5, -0.5
    C = compose([(A, a), (B, b)], ["A", "B"])
    assert C.names == ["A.style", "B.style"]  # same name in both parts → prefixed; dummies dropped
    assert C.epsilon == A.epsilon
    assert C.metadata["base_fingerprint"] == fp
    assert (C.rank is None) == (None in ranks)
    if None not in ranks:
        assert C.rank == max(ranks)
    WA, WB = A.matrices()[0].detach(), B.matrices()[0].detach()
    ids = _inputs(tiny_lm)
    with torch.no_grad(), steering(tiny_lm, C, torch.tensor([1.0, 1.0])):
        got = tiny_lm.model(**ids).logits
    expected = _manual_logits(tiny_lm, ids, a * A.epsilon * WA + b * B.epsilon * WB)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # each part keeps its own strength knob
    with torch.no_grad(), steering(tiny_lm, C, torch.tensor([2.0, 0.0])):
        only_a = tiny_lm.model(**ids).logits
    torch.testing.assert_close(only_a, _manual_logits(tiny_lm, ids, 2 * a * A.epsilon * WA), rtol=1e-4, atol=1e-4)


def test_compose_names_dummy_and_collapse(tiny_lm):
    d = tiny_lm.dim
    A = random_steer(d, 3, names=("sentiment", "dummy"), seed=1)
    B = random_steer(d, 2, names=("formality", "dummy"), seed=2, eps=2e-2)
    C = compose([(A, 1.0), (B, 2.0)], ["a", "b"])
    assert C.names == ["sentiment", "formality"]  # no clash: names kept
    K = compose([(A, 1.0), (B, 2.0)], ["a", "b"], keep_dummy=True)
    assert K.names == ["sentiment", "a.dummy", "formality", "b.dummy"]
    assert [e["as"] for e in K.metadata["composition"]] == [["sentiment", "a.dummy"], ["formality", "b.dummy"]]
    # collapse: one steer, low-rank factors concatenated (rank 3 + 2), exactly the weighted sum
    S = compose([(A, 1.0), (B, 2.0)], collapse="mix")
    assert S.names == ["mix"] and S.rank == 5
    expected = A.matrices()[0] + 2.0 * (B.epsilon / A.epsilon) * B.matrices()[0]
    torch.testing.assert_close(S.matrices()[0], expected.detach(), rtol=1e-5, atol=1e-5)
    # a part with only a dummy has nothing to give
    with pytest.raises(ValueError, match="only a dummy"):
        compose([(A, 1.0), (random_steer(d, names=("dummy",)), 1.0)])


def test_compose_refuses_other_base_or_dim(tiny_lm):
    d = tiny_lm.dim
    A = random_steer(d, fp="a" * 64, base_model="test-model")
    B = random_steer(d, fp="b" * 64, base_model="test-model")
    with pytest.raises(BaseModelMismatch, match="different base models"):
        compose([(A, 1.0), (B, 1.0)])
    with pytest.raises(ValueError, match="hidden sizes"):
        compose([(A, 1.0), (random_steer(d + 8, fp="a" * 64, base_model="test-model"), 1.0)])


def test_parse_part():
    assert parse_part("x/a.safetensors:-0.5") == ("x/a.safetensors", -0.5)
    assert parse_part("a.safetensors") == ("a.safetensors", 1.0)
    with pytest.raises(ValueError):
        parse_part("a.safetensors:nan")


# --------------------------------------------------------------------------------------------- merge
def test_merged_model_reproduces_steered_logits(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    st = random_steer(tiny_lm.dim, rank=4, fp=tiny_lm.fingerprint, base_model="test-model", eps=5e-2)
    values = torch.tensor([2.0, -1.0])
    ids = _inputs(tiny_lm)
    with torch.no_grad():
        before = tiny_lm.model(**ids).logits
        with steering(tiny_lm, st, values):
            steered = tiny_lm.model(**ids).logits
    out = merge_into_model(tiny_lm, st, values, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(out))  # plain transformers, no steer code
    assert merged.config.tie_word_embeddings is False
    assert merged.get_output_embeddings().weight.data_ptr() != merged.get_input_embeddings().weight.data_ptr()
    with torch.no_grad():
        got = merged(**ids).logits
        after = tiny_lm.model(**ids).logits
    torch.testing.assert_close(got, steered, rtol=1e-4, atol=1e-4)
    assert (got - before).abs().max() > 1e-2  # the steer really changed something
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # the loaded LM is left as it was
    assert tiny_lm.model.get_output_embeddings().weight is tiny_lm.model.get_input_embeddings().weight
    info = json.loads((out / MERGE_INFO).read_text())
    assert info["values"] == {"style": 2.0, "dummy": -1.0} and info["base_fingerprint"] == tiny_lm.fingerprint
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    with pytest.raises(FileExistsError):
        merge_into_model(tiny_lm, st, values, out)


# --------------------------------------------------------------------------------------------- transfer
def test_transfer_to_the_same_model_is_exact(tiny_lm):
    st = random_steer(tiny_lm.dim, fp=tiny_lm.fingerprint, base_model="test-model")
    new, report = transfer(st, tiny_lm, tiny_lm)
    torch.testing.assert_close(new.matrices(), st.matrices().detach(), rtol=1e-4, atol=1e-4)
    assert report["r2_mean"] > 0.999999 and report["r2_back_mean"] > 0.999999
    assert report["shared_tokens"] > 40000  # same tokenizer: every ordinary token is shared
    assert new.metadata["transfer"]["source_fingerprint"] == tiny_lm.fingerprint


@pytest.fixture(scope="module")
def rotated(tiny_dir, tmp_path_factory):
    """The tiny model with output embeddings E·Q (Q random orthogonal, untied), same body and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steer_core.model.lm import load_lm

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    d = model.config.hidden_size
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    E = model.get_output_embeddings().weight.detach().double()
    model.config.tie_word_embeddings = False
    model._tied_weights_keys = {}
    model.get_output_embeddings().weight = torch.nn.Parameter((E @ Q).float())
    path = tmp_path_factory.mktemp("rotated") / "model"
    model.save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(tiny_dir)).save_pretrained(str(path))
    return load_lm(str(path), device="cpu"), Q.float()


@pytest.mark.parametrize("rank", [None, 3])
def test_transfer_to_rotated_embeddings_keeps_the_steered_logits(tiny_lm, rotated, rank):
    dst, Q = rotated
    st = random_steer(tiny_lm.dim, rank=rank, fp=tiny_lm.fingerprint, base_model="test-model")
    new, report = transfer(st, tiny_lm, dst)
    assert report["r2_mean"] > 0.99999 and report["r2_min"] > 0.9999
    assert new.rank == st.rank
    assert new.metadata["base_fingerprint"] == dst.fingerprint != tiny_lm.fingerprint
    new.check_base(dst.fingerprint)  # loads onto the target, not onto the source
    with pytest.raises(BaseModelMismatch):
        new.check_base(tiny_lm.fingerprint)
    W = st.matrices().detach()
    torch.testing.assert_close(new.matrices().detach(), Q.T @ W @ Q, rtol=1e-3, atol=1e-3)
    # the target's steered logits at h equal the source's steered logits at the matching state Q h
    ids = _inputs(dst)
    values = torch.tensor([3.0, -1.0])
    with torch.no_grad(), steering(dst, new, values):
        got = dst.model(**ids).logits
        h = dst.body(**ids).last_hidden_state @ Q.T  # h_src = Q h_dst (row vectors: h Qᵀ)
    expected = st.apply(h, values).detach() @ tiny_lm.output_embeddings.weight.T
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------------------------- explain
# "dot" is the same computation without the row normalisation: in the full run only (18 s at load 7)
@pytest.mark.parametrize("score", ["cosine", pytest.param("dot", marks=pytest.mark.slow)])
def test_explain_directions_match_a_direct_svd(tiny_lm, score):
    st = random_steer(tiny_lm.dim, names=("style", "dummy"), seed=3)
    res = explain(st, tiny_lm, k=4, top_tokens=5, score=score)
    W = st.matrices()[0].detach().double()
    U, S, Vh = torch.linalg.svd(W)
    assert res["steer_name"] == "style" and res["k"] == 4
    torch.testing.assert_close(torch.tensor([d["singular_value"] for d in res["directions"]], dtype=torch.float64),
                               S[:4], rtol=1e-6, atol=1e-8)
    E = tiny_lm.output_embeddings.weight.detach().double()
    if score == "cosine":
        E = E / E.norm(dim=1, keepdim=True)
    mask = word_like_mask(tiny_lm.tokenizer, E.shape[0], word_start=True)
    hbar = mean_hidden_state(tiny_lm)
    for j, d in enumerate(res["directions"]):
        sign = 1.0 if float(Vh[j] @ hbar) >= 0 else -1.0  # the documented orientation: v_k·h̄ ≥ 0
        assert d["reference_gain"] == pytest.approx(sign * float(Vh[j] @ hbar))
        proj = (E @ U[:, j]) * sign
        top = torch.topk(torch.where(mask, proj, -1e9), 5).indices.tolist()
        bottom = torch.topk(torch.where(mask, proj, 1e9), 5, largest=False).indices.tolist()
        assert [t["id"] for t in d["promoted"]] == top
        assert [t["id"] for t in d["demoted"]] == bottom
        for t in d["promoted"]:  # word-like: a word start, alphabetic after the space marker, ≥ 3 characters
            assert t["token"].startswith(" ") and t["token"].strip().isalpha() and len(t["token"].strip()) >= 3
    # overall: the tokens whose logits +1 raises most at h̄ (ε E W h̄)
    delta = st.epsilon * (tiny_lm.output_embeddings.weight.detach().double() @ (W @ hbar))
    expected = torch.topk(torch.where(mask, delta, -1e9), 5).indices.tolist()
    assert [t["id"] for t in res["overall"]["promoted"]] == expected


def test_best_spans_are_greedy_non_overlapping_max_sums():
    scores = [-1.0, 2.0, 3.0, -10.0, 4.0, -0.5, 0.7, -3.0, 1.0]
    assert best_spans(scores, 3) == [(1, 3, 5.0), (4, 7, 4.2), (8, 9, 1.0)]
    assert best_spans([-1.0, -2.0], 3) == []
    assert best_spans(scores, 0) == []


# --------------------------------------------------------------------------------------------- highlight (real model)
def _wonderful_steer(lm) -> Steer:
    """W = u vᵀ: u the direction of ' wonderful''s output embedding, v the mean direction of real hidden states, so
    +s raises the logit of ' wonderful'-like tokens in ordinary contexts."""
    tok = lm.tokenizer
    E = lm.output_embeddings.weight.detach()
    (wid,) = tok(" wonderful", add_special_tokens=False)["input_ids"]
    u = E[wid] / E[wid].norm()
    with torch.no_grad():
        h = torch.cat([lm.body(**tok(c, return_tensors="pt")).last_hidden_state[0]
                       for c in ("The weather today is", "I went to the market and", "She said that the movie was")])
    v = h.mean(0) / h.mean(0).norm()
    st = Steer(["wonder", "dummy"], lm.dim, None, 1e-3, {"base_fingerprint": lm.fingerprint, "base_model": "default"})
    with torch.no_grad():
        st.W[0] = torch.outer(u, v) * 100.0
    return st


@pytest.mark.slow  # the real default model
def test_highlight_finds_the_style_word(default_lm, tmp_path):
    st = _wonderful_steer(default_lm)
    text = "The hotel was clean and the staff were wonderful to us."
    res = highlight(default_lm, st, text, strength=1.0, top_spans=3)
    assert [t["text"] for t in res["tokens"]][:2] == ["The", " hotel"]  # every token scored (BOS prepended)
    top = res["spans"][0]
    assert "wonderful" in top["text"] and top["score"] > 0
    assert text[top["start"] : top["end"]] == top["text"]
    best_token = max(res["tokens"], key=lambda t: t["evidence"])
    assert best_token["text"] == " wonderful"
    page = render_html(res)
    assert page.startswith("<!doctype html>") and "wonderful" in page and 'class="span span0"' in page
    assert "wonderful" in render_terminal(res).plain
    # the opposite strength flips the evidence
    neg = highlight(default_lm, st, text, strength=-1.0)
    assert all(abs(a["evidence"] + b["evidence"]) < 1e-3 for a, b in zip(res["tokens"], neg["tokens"]))


# --------------------------------------------------------------------------------------------- CLI
def _save(st: Steer, path: Path) -> Path:
    st.save(path)
    return path


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_compose_json_and_refusal(tiny_lm, tiny_dir, tmp_path):
    fp = tiny_lm.fingerprint
    a = _save(random_steer(tiny_lm.dim, fp=fp, base_model="test-model", seed=1), tmp_path / "a.safetensors")
    b = _save(random_steer(tiny_lm.dim, rank=2, fp=fp, base_model="test-model", seed=2), tmp_path / "b.safetensors")
    out = tmp_path / "c.safetensors"
    doc = _json(runner.invoke(app, ["compose", f"{a}:1.0", f"{b}:-0.5", "--out", str(out), "--json"]))
    assert doc["names"] == ["a.style", "b.style"] and [p["weight"] for p in doc["parts"]] == [1.0, -0.5]
    C = Steer.load(out, expect_fingerprint=fp)
    torch.testing.assert_close(C.matrices()[1], -0.5 * Steer.load(b).matrices()[0].detach(), rtol=1e-5, atol=1e-6)
    other = _save(random_steer(tiny_lm.dim, fp="f" * 64, base_model="test-model"), tmp_path / "other.safetensors")
    bad = tmp_path / "bad.safetensors"
    res = runner.invoke(app, ["compose", f"{a}:1", f"{other}:1", "--out", str(bad)])
    assert res.exit_code != 0
    assert len(res.stderr.strip().splitlines()) == 1 and "different base models" in res.stderr
    assert not bad.exists()


@pytest.mark.slow  # the CLI loads the model from disk per command (23 s at load 7.5)
def test_cli_explain_highlight_merge_transfer(tiny_lm, tiny_dir, tmp_path):
    st = random_steer(tiny_lm.dim, fp=tiny_lm.fingerprint, base_model="test-model")
    st.metadata["base_model"] = str(tiny_dir)
    path = _save(st, tmp_path / "s.safetensors")
    doc = _json(runner.invoke(app, ["explain", str(path), "--k", "2", "--top-tokens", "3", "--json",
                                    "--out", str(tmp_path / "explain.json")]))
    assert len(doc["directions"]) == 2 and len(doc["directions"][0]["promoted"]) == 3
    assert json.loads((tmp_path / "explain.json").read_text())["k"] == 2
    table = runner.invoke(app, ["explain", str(path), "--model", str(tiny_dir), "--k", "2"])
    assert table.exit_code == 0 and "singular" in table.stdout

    html = tmp_path / "h.html"
    doc = _json(runner.invoke(app, ["highlight", str(path), "--text", "a short test sentence", "--strength", "2",
                                    "--html", str(html), "--json"]))
    assert doc["strength"] == 2.0 and len(doc["tokens"]) >= 4 and html.read_text().startswith("<!doctype html>")

    doc = _json(runner.invoke(app, ["merge", str(path), "--strength", "2", "--out", str(tmp_path / "m"), "--json"]))
    assert doc["values"]["style"] == 2.0 and (tmp_path / "m" / "config.json").is_file()
    again = runner.invoke(app, ["merge", str(path), "--strength", "2", "--out", str(tmp_path / "m")])
    assert again.exit_code != 0 and "exists" in again.stderr

    doc = _json(runner.invoke(app, ["transfer", str(path), "--to", str(tiny_dir), "--out",
                                    str(tmp_path / "t.safetensors"), "--json"]))
    assert doc["r2_mean"] > 0.99999 and doc["shared_tokens"] > 40000
    assert Steer.load(tmp_path / "t.safetensors").metadata["transfer"]["target_fingerprint"] == tiny_lm.fingerprint

    missing = runner.invoke(app, ["explain", str(tmp_path / "nope.safetensors")])
    assert missing.exit_code != 0 and "not found" in missing.stderr
