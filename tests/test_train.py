"""Fitting on cached hidden states: it learns, it never reruns the body, and it resumes to the same steer."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from steer_core.config import TrainConfig
from steer_core.model.steer import Steer
from steer_core.train import fit_steer
from steer_core.model.hidden import cache_hidden_states

POS = ["I love this, it is wonderful and great", "what a lovely happy day, thank you so much",
       "great service, really excellent and kind", "amazing food and a wonderful friendly crew",
       "thanks so much, best trip ever", "so happy with the great help today"]
NEG = ["this is terrible and I hate it", "awful delay, worst service ever, so angry",
       "rude staff and a horrible broken seat", "lost my bag again, terrible and useless",
       "cancelled flight, awful, never again", "the worst day, angry and disappointed"]


def _data():
    texts = POS + NEG
    values = torch.tensor([[1.0, 1.0]] * len(POS) + [[-1.0, 1.0]] * len(NEG))
    return texts, values


def test_cache_holds_only_real_tokens(tiny_lm):
    texts = ["a b c d e f g", "hi there"]
    cache = cache_hidden_states(tiny_lm, texts, max_length=64)
    lens = [len(tiny_lm.tokenizer(t)["input_ids"]) for t in texts]
    assert cache.tokens == sum(n - 1 for n in lens)
    # the cached states equal an unpadded forward of each text alone
    for i, t in enumerate(texts):
        ids = tiny_lm.tokenizer(t, return_tensors="pt")
        with torch.no_grad():
            h = tiny_lm.body(**ids).last_hidden_state[0, :-1]
        torch.testing.assert_close(cache.h[cache.text_index == i], h, rtol=1e-4, atol=1e-5)


def test_fit_lowers_val_loss_and_never_reruns_the_body(tiny_lm, tmp_path):
    texts, values = _data()
    calls = {"n": 0}
    hook = tiny_lm.body.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        cfg = TrainConfig(epochs=4, lr=0.05, epsilon=0.1, tokens_per_batch=32, patience=0)
        steer, summary = fit_steer(tiny_lm, texts, values, texts[:4], values[:4], ["style", "dummy"], cfg)
        body_calls = calls["n"]
    finally:
        hook.remove()
    n_batches = 2  # train + val cache, each one batch at these sizes
    assert body_calls <= n_batches, f"the body ran {body_calls} times; it must only build the cache"
    assert summary.best_val_loss < summary.base_val_loss
    assert steer.metadata["base_fingerprint"] == tiny_lm.fingerprint
    assert steer.matrices().abs().sum() > 0


def test_a_bfloat16_gradient_pass_fits_the_same_steer_and_reports_float32_losses(tiny_lm):
    """train.precision bfloat16 runs the output layer of the gradient pass in bfloat16: the fit lands on the float32
    fit's steer (up to bf16 rounding) and validation loss, every reported loss is computed in float32, and the steer
    records the precision it was fitted in."""
    from steer_core.train import OutputHead, evaluate_loss, fit_precision

    torch.set_num_threads(1)
    texts, values = _data()
    fits = {}
    for precision in ("float32", "bfloat16"):
        cfg = TrainConfig(epochs=3, lr=0.05, epsilon=0.1, tokens_per_batch=32, patience=0, precision=precision)
        fits[precision] = fit_steer(tiny_lm, texts, values, texts[:4], values[:4], ["style", "dummy"], cfg)
    (exact, s32), (low, s16) = fits["float32"], fits["bfloat16"]
    assert exact.metadata["fit_precision"] == "float32" and low.metadata["fit_precision"] == "bfloat16"
    w32, w16 = exact.W.detach(), low.W.detach()
    assert not torch.equal(w32, w16)  # the bf16 pass did run
    assert float((w32 - w16).norm() / w32.norm()) < 0.05
    assert s16.best_val_loss == pytest.approx(s32.best_val_loss, rel=2e-3)
    assert s16.base_val_loss == s32.base_val_loss  # the untrained steer's loss: float32 both ways, bit for bit
    cache = cache_hidden_states(tiny_lm, texts[:4], max_length=64)
    cpu = torch.device("cpu")
    assert evaluate_loss(OutputHead(tiny_lm, cpu, "bfloat16"), low, cache, values[:4]) == evaluate_loss(
        OutputHead(tiny_lm, cpu, "float32"), low, cache, values[:4])
    assert fit_precision("auto", torch.device("cuda")) == "bfloat16" and fit_precision("auto", cpu) == "float32"


def test_low_rank_and_lbfgs_fit(tiny_lm):
    texts, values = _data()
    for cfg in (TrainConfig(rank=4, epochs=2, lr=0.05, epsilon=0.1, tokens_per_batch=32),
                TrainConfig(optimizer="lbfgs", epochs=2, epsilon=0.1)):
        steer, summary = fit_steer(tiny_lm, texts, values, texts[:4], values[:4], ["style", "dummy"], cfg)
        assert summary.best_val_loss < summary.base_val_loss, cfg.optimizer


def test_contrastive_term(tiny_lm):
    """The term is softplus(CE at the text's own sign − CE at the flipped sign), averaged over tokens: log 2 for an
    untrained steer, lower once a steer separates the signs; a fit with it differs from the plain fit and still
    lowers the validation loss. (Whether it buys control per unit of perplexity is bench/steer_variants.py's job.)"""
    import math

    from steer_core.train import OutputHead

    texts, values = _data()
    cache = cache_hidden_states(tiny_lm, texts, max_length=64)
    head = OutputHead(tiny_lm, torch.device("cpu"))
    v = values[cache.text_index]
    base = dict(epochs=3, lr=0.05, epsilon=0.1, tokens_per_batch=32, patience=0)
    untrained = Steer(["style", "dummy"], tiny_lm.dim, None, 0.1)  # W = 0: both signs give the same logits
    with torch.no_grad():
        assert float(head.contrastive(untrained, cache.h, v, cache.targets)) == pytest.approx(math.log(2), abs=1e-6)
    plain, _ = fit_steer(tiny_lm, texts, values, texts[:4], values[:4], ["style", "dummy"], TrainConfig(**base))
    with torch.no_grad():
        flipped = v.clone()
        flipped[:, 0] = -flipped[:, 0]
        want = torch.nn.functional.softplus(head.loss(plain, cache.h, v, cache.targets, reduction="none")
                                            - head.loss(plain, cache.h, flipped, cache.targets, reduction="none")).mean()
        assert float(head.contrastive(plain, cache.h, v, cache.targets)) == pytest.approx(float(want))
        assert float(want) < math.log(2)  # the plain fit already separates the signs a little
    contra, summary = fit_steer(tiny_lm, texts, values, texts[:4], values[:4], ["style", "dummy"],
                                TrainConfig(**base, contrastive=4.0))
    assert not torch.equal(contra.matrices(), plain.matrices())
    assert summary.best_val_loss < summary.base_val_loss
    with pytest.raises(ValueError, match="contrastive"):
        TrainConfig(contrastive=1.0, optimizer="lbfgs")


def test_two_fits_with_equal_inputs_give_byte_identical_steer_files(tiny_lm, tmp_path):
    """Content addressing (DVC, the registry's dedupe) needs equal inputs to give equal bytes: no timings inside."""
    texts, values = _data()
    cfg = TrainConfig(epochs=2, lr=0.05, epsilon=0.1, tokens_per_batch=32)
    shas = []
    for i in range(2):
        steer, summary = fit_steer(tiny_lm, texts, values, texts[:4], values[:4], ["style", "dummy"], cfg, seed=3)
        assert summary.fit_seconds > 0  # the timings exist, just not in the file
        path = steer.save(tmp_path / f"{i}.safetensors")
        shas.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert shas[0] == shas[1]
    assert "fit_seconds" not in Steer.load(tmp_path / "0.safetensors").metadata["summary"]


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("cfg, crash_at, resumes_from", [
    (TrainConfig(epochs=3, lr=0.05, epsilon=0.1, tokens_per_batch=16, checkpoint_every=2, patience=0), 5, 4),
    # L-BFGS keeps lists of tensors in its state: they go into the checkpoint one tensor each (no pickle)
    (TrainConfig(optimizer="lbfgs", epochs=3, epsilon=0.1, patience=0), 2, 1),
], ids=["adam", "lbfgs"])
def test_resume_after_interruption_gives_the_same_steer(tiny_lm, tmp_path, cfg, crash_at, resumes_from):
    texts, values = _data()
    args = (tiny_lm, texts, values, texts[:4], values[:4], ["style", "dummy"], cfg)
    whole, _ = fit_steer(*args, seed=1, work_dir=tmp_path / "a")

    def crash(step, loss):
        if step == crash_at:
            raise Crash()

    with pytest.raises(Crash):
        fit_steer(*args, seed=1, work_dir=tmp_path / "b", on_step=crash)
    resumed, summary = fit_steer(*args, seed=1, work_dir=tmp_path / "b")
    assert summary.resumed_from_step == resumes_from
    torch.testing.assert_close(resumed.matrices(), whole.matrices(), rtol=0, atol=0)


def test_a_fit_that_stopped_early_stays_stopped_when_run_again(tiny_lm, tmp_path):
    """A kill after the last checkpoint of an early-stopped fit (before its steer is written) must not train on."""
    texts, values = _data()
    cfg = TrainConfig(epochs=8, lr=10.0, epsilon=0.5, tokens_per_batch=16, patience=1)  # overshoots at epoch 2
    args = (tiny_lm, texts, values, texts[:4], values[:4], ["style", "dummy"], cfg)
    first, summary = fit_steer(*args, seed=1, work_dir=tmp_path)
    assert summary.stopped_early and len(summary.val_history) < cfg.epochs  # the premise: patience ran out
    again, resumed = fit_steer(*args, seed=1, work_dir=tmp_path)  # the same work dir, as after a kill
    assert resumed.val_history == summary.val_history
    torch.testing.assert_close(again.matrices(), first.matrices(), rtol=0, atol=0)


@pytest.mark.slow  # fits in subprocesses
def test_kill_9_then_rerun_resumes_to_the_same_steer(tiny_dir, tmp_path):
    """A real crash: the CLI is SIGKILLed mid-fit; the same command then resumes from its checkpoint."""
    data = tmp_path / "d.jsonl"
    rows = [{"text": t * 3, "label": "positive"} for t in POS] + [{"text": t * 3, "label": "negative"} for t in NEG]
    data.write_text("\n".join(json.dumps(r) for r in rows * 6))
    env = {**os.environ, "STEER_CACHE_DIR": str(tmp_path / "cache")}

    def cmd(out, work):
        return [sys.executable, "-m", "steer_core.cli", "train", "--model", str(tiny_dir), "--data", str(data),
                "--out", str(out), "--work-dir", str(work), "--epochs", "10", "--batch-tokens", "16",
                "--epsilon", "0.1", "--lr", "0.01", "--threads", "1", "--quiet", "--val-fraction", "0"]

    ref = subprocess.run(cmd(tmp_path / "ref.safetensors", tmp_path / "wref"), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    work = tmp_path / "w"
    proc = subprocess.Popen(cmd(tmp_path / "out.safetensors", work), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = work / "checkpoint.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists() and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    if proc.poll() is not None:
        pytest.skip("the fit finished before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out.safetensors").exists(), "a killed run must not leave a steer file"
    again = subprocess.run(cmd(tmp_path / "out.safetensors", work), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    a, b = Steer.load(tmp_path / "ref.safetensors"), Steer.load(tmp_path / "out.safetensors")
    assert json.loads((tmp_path / "out.json").read_text())["run"]["resumed_from_step"] > 0  # the card says so
    torch.testing.assert_close(a.matrices(), b.matrices(), rtol=0, atol=0)
    # the resumed fit's file is byte-identical to the uninterrupted one's: run circumstances stay out of it
    assert hashlib.sha256((tmp_path / "ref.safetensors").read_bytes()).digest() == \
        hashlib.sha256((tmp_path / "out.safetensors").read_bytes()).digest()
