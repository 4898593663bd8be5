"""The LM-Steer formula, exactness at s = 0, and the steer file format."""

from __future__ import annotations

import pytest
import torch

from steer_core.model.generate import steering
from steer_core.model.steer import BaseModelMismatch, Steer, SteerFileError, parse_strengths

from builders import random_steer


@pytest.mark.parametrize("rank", [None, 4])
def test_formula_matches_direct_computation(tiny_lm, rank):
    st = random_steer(tiny_lm.dim, rank)
    st.metadata["base_fingerprint"] = tiny_lm.fingerprint
    ids = tiny_lm.tokenizer(["a short text", "another one here"], return_tensors="pt", padding=True)
    values = torch.tensor([2.0, -0.5])
    with torch.no_grad():
        h = tiny_lm.body(**ids).last_hidden_state
        W = st.matrices()
        direct_h = h + st.epsilon * (values[0] * h @ W[0].T + values[1] * h @ W[1].T)
        expected = direct_h @ tiny_lm.output_embeddings.weight.T
        with steering(tiny_lm, st, values):
            got = tiny_lm.model(**ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_per_row_values_match_one_setting_at_a_time(tiny_lm):
    st = random_steer(tiny_lm.dim)
    ids = tiny_lm.tokenizer(["one", "two"], return_tensors="pt", padding=True)
    rows = torch.tensor([[3.0, 0.0], [-1.0, 1.0]])
    with torch.no_grad():
        with steering(tiny_lm, st, rows):
            both = tiny_lm.model(**ids).logits
        for r in range(2):
            with steering(tiny_lm, st, rows[r]):
                single = tiny_lm.model(**ids).logits[r]
            torch.testing.assert_close(both[r], single, rtol=1e-5, atol=1e-5)


def test_token_packed_delta_matches_per_token(tiny_lm):
    st = random_steer(tiny_lm.dim, rank=3)
    h = torch.randn(5, tiny_lm.dim)
    v = torch.randn(5, 2)
    packed = st.delta(h, v)
    for t in range(5):
        torch.testing.assert_close(packed[t], st.delta(h[t], v[t]), rtol=1e-5, atol=1e-6)


def test_zero_strength_reproduces_base_logits_exactly(tiny_lm):
    st = random_steer(tiny_lm.dim)
    ids = tiny_lm.tokenizer(["the base model must not move"], return_tensors="pt")
    with torch.no_grad():
        base = tiny_lm.model(**ids).logits
        with steering(tiny_lm, st, torch.zeros(2)):
            steered = tiny_lm.model(**ids).logits
    assert torch.equal(base, steered)


@pytest.mark.parametrize("rank", [None, 3])
def test_save_load_round_trip(tmp_path, rank):
    st = random_steer(16, rank)
    st.metadata.update(base_fingerprint="abc", labels={"positive": 1})
    path = st.save(tmp_path / "s.safetensors")
    back = Steer.load(path)
    assert back.names == st.names and back.rank == st.rank and back.epsilon == st.epsilon
    assert back.metadata == st.metadata
    torch.testing.assert_close(back.matrices(), st.matrices())
    assert not list(tmp_path.glob("*.tmp"))


def test_load_refuses_other_base_model(tmp_path):
    st = random_steer(8)
    st.metadata.update(base_fingerprint="a" * 64, base_model="default")
    path = st.save(tmp_path / "s.safetensors")
    with pytest.raises(BaseModelMismatch, match="steer transfer"):
        Steer.load(path, expect_fingerprint="b" * 64)
    Steer.load(path, expect_fingerprint="a" * 64)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path = random_steer(8).save(tmp_path / "s.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SteerFileError):
        Steer.load(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SteerFileError, match="not a steer"):
        Steer.load(tmp_path / "other.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(SteerFileError):
        Steer.load(tmp_path / "text.safetensors")


def test_parse_strengths():
    st = random_steer(4, names=("sentiment", "dummy"))
    assert parse_strengths("2.5", st).tolist() == [2.5, 0.0]
    assert parse_strengths("sentiment=-1,dummy=1", st).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="not a number"):
        parse_strengths("strong", st)
    with pytest.raises(ValueError, match="unknown steer name"):
        parse_strengths("detox=1", st)


def test_a_copy_is_independent_of_its_original():
    for st in (random_steer(6), random_steer(6, rank=2)):
        twin = st.copy()
        torch.testing.assert_close(twin.matrices(), st.matrices())
        before = st.matrices().clone()
        with torch.no_grad():
            for p in twin.parameters():
                p.mul_(-1.0)
        twin.metadata["note"] = "changed"
        torch.testing.assert_close(st.matrices(), before)
        assert "note" not in st.metadata