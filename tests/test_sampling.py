"""The nucleus sampler: HF's top-p support and distribution, widening past first_k; per-row random numbers
(seeded, independent of batch mates and threads); base NLLs recorded during sampling equal a forward pass."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from steer_core.model.generate import generate, steering, values_for
from steer_core.model.sampling import NucleusSampler

from builders import random_steer


def _hf_support(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    return torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone()))


@pytest.mark.parametrize("first_k", [2, 256])
def test_support_matches_hf_top_p_including_rows_wider_than_first_k(first_k: int) -> None:
    g = torch.Generator().manual_seed(0)
    vocab = 3000
    logits = torch.randn(64, vocab, generator=g) * torch.tensor([0.1, 1.0, 4.0, 12.0]).repeat(16)[:, None]
    support = _hf_support(logits, 0.9)
    assert support.sum(1).max() > first_k  # flat rows: their nucleus is wider than first_k
    sampler = NucleusSampler(0.9, 1.0, torch.empty(0, 0), first_k=first_k)
    for _ in range(20):
        picks = sampler.sample(logits, torch.rand(64, generator=g))
        assert support[torch.arange(64), picks].all()


def test_draws_follow_the_renormalised_nucleus() -> None:
    logits = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.0, -1.0, -2.0, -4.0] + [-6.0] * 92)
    temperature = 0.8
    scaled = logits / temperature
    keep = _hf_support(scaled[None], 0.9)[0]
    target = torch.where(keep, scaled.softmax(-1), torch.zeros(())).double()
    target /= target.sum()
    n = 40_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(3))
    picks = NucleusSampler(0.9, temperature, torch.empty(0, 0), first_k=2).sample(logits.expand(n, -1), u)
    freq = torch.bincount(picks, minlength=logits.numel()).double() / n
    assert (freq[~keep] == 0).all()
    assert 0.5 * (freq - target).abs().sum() < 0.015  # total variation; sampling noise is ~0.005 here


def test_top_p_one_samples_the_whole_vocabulary_and_bad_settings_fail() -> None:
    logits = torch.zeros(20_000, 5)
    picks = NucleusSampler(1.0, 1.0, torch.empty(0, 0)).sample(logits, torch.rand(20_000))
    assert torch.bincount(picks, minlength=5).tolist() == pytest.approx([4000] * 5, abs=250)
    with pytest.raises(ValueError, match="top_p"):
        NucleusSampler(0.0, 1.0, torch.empty(0, 0))
    with pytest.raises(ValueError, match="temperature"):
        NucleusSampler(0.9, 0.0, torch.empty(0, 0))


def test_generation_is_seeded_per_row_and_unaffected_by_batch_mates_or_threads(tiny_lm) -> None:
    steer = random_steer(tiny_lm, eps=1.0, scale=0.5)
    kw = dict(num_samples=3, max_new_tokens=8, batch_size=4)
    prompts = ["The city", "A river runs"]

    def run(seed: int, strength: float) -> list[str]:
        return [g.text for g in generate(tiny_lm, prompts, steer, [0.0, strength], seed=seed, **kw)]

    alone = {seed: run(seed, 2.0) for seed in (0, 1)}
    assert alone[0] != alone[1]
    torch.manual_seed(123)  # the global generator plays no part
    assert run(0, 2.0) == alone[0]
    together: dict[int, list[str]] = {}
    threads = [threading.Thread(target=lambda s=s: together.__setitem__(s, run(s, 2.0))) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone

    # a row's draw is keyed by (seed, prompt, sample): the strength-0 rows of a sweep are the unsteered samples
    unsteered = [g.text for g in generate(tiny_lm, prompts, None, None, seed=0, **kw)]
    assert alone[0][:6] == unsteered


def test_base_nll_recorded_while_sampling_equals_an_unsteered_forward_pass(tiny_lm) -> None:
    from steer_core.scorers.perplexity import token_perplexity

    steer = random_steer(tiny_lm, eps=1.0, scale=2.0)
    prompts = ["The city", "A river runs through the old"]
    gens = generate(tiny_lm, prompts, steer, [0.0, 3.0], num_samples=2, max_new_tokens=10, seed=4, base_nll=True)
    assert all(len(g.base_nll) == len(g.token_ids) > 0 for g in gens)
    prompt_ids = [tiny_lm.tokenizer(g.prompt)["input_ids"] for g in gens]
    direct = token_perplexity(tiny_lm.model, prompt_ids, [g.token_ids for g in gens])
    recorded = [math.exp(sum(g.base_nll) / len(g.base_nll)) for g in gens]
    assert recorded == pytest.approx(direct, rel=1e-4)
    # and the steered rows really were steered: their own (steered) NLL differs from the base one
    steered = [g for g in gens if g.strength == 3.0]
    with steering(tiny_lm, steer, values_for(steer, 3.0)):
        under_steer = token_perplexity(tiny_lm.model, [tiny_lm.tokenizer(g.prompt)["input_ids"] for g in steered],
                                       [g.token_ids for g in steered])
    assert all(abs(a - b) / b > 1e-3 for a, b in zip(under_steer, recorded[len(gens) // 2:]))


def _outside_base_nucleus(lm, gens, top_p: float = 0.9) -> int:
    """How many sampled tokens lie outside the unsteered model's top-p nucleus at their step."""
    checker = NucleusSampler(top_p, 1.0, torch.empty(0, 0))
    outside = 0
    for g in gens:
        ids = lm.tokenizer(g.prompt)["input_ids"]
        if not g.token_ids:
            continue
        with torch.no_grad():
            logits = lm.model(torch.tensor([ids + g.token_ids])).logits[0, len(ids) - 1: len(ids) - 1 + len(g.token_ids)]
        mask = checker.nucleus(logits)
        outside += int((~mask[torch.arange(len(g.token_ids)), torch.tensor(g.token_ids)]).sum())
    return outside


def test_base_nucleus_keeps_every_steered_token_inside_the_unsteered_nucleus(tiny_lm) -> None:
    torch.set_num_threads(1)
    steer = random_steer(tiny_lm, eps=1.0, scale=2.0)
    prompts = ["The city", "A river runs through the old"]
    kw = dict(num_samples=3, max_new_tokens=8, seed=4, base_nll=True)
    free = generate(tiny_lm, prompts, steer, [0.0, 3.0], **kw)
    held = generate(tiny_lm, prompts, steer, [0.0, 3.0], base_nucleus=True, **kw)
    # strength 0: the base model's own nucleus, so the very same draws as without the constraint
    assert [g.token_ids for g in held if g.strength == 0.0] == [g.token_ids for g in free if g.strength == 0.0]
    steered_free = [g for g in free if g.strength == 3.0]
    steered_held = [g for g in held if g.strength == 3.0]
    assert _outside_base_nucleus(tiny_lm, steered_free) > 0  # a strong steer leaves the base's nucleus...
    assert _outside_base_nucleus(tiny_lm, steered_held) == 0  # ...unless sampling is held inside it
    assert [g.token_ids for g in steered_held] != [g.token_ids for g in steered_free]
    # a sampler asked to hold rows inside a nucleus needs the step's unsteered logits
    with pytest.raises(ValueError, match="recorder"):
        NucleusSampler(0.9, 1.0, torch.empty(0, 0), base_nucleus=True)


def test_within_the_base_nucleus_draws_only_its_tokens_and_equals_plain_top_p_unsteered() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(256, 3000, generator=g) * torch.tensor([0.1, 1.0, 4.0, 12.0]).repeat(64)[:, None]
    steered = base + torch.randn(256, 3000, generator=g) * 3
    sampler = NucleusSampler(0.9, 1.0, torch.empty(0, 0), first_k=4)  # rows wider than first_k widen k
    u = torch.rand(256, generator=g)
    within = sampler.nucleus_candidates(base)
    mask = sampler.nucleus(base)
    assert torch.equal(mask, _hf_support(base, 0.9))  # HF's nucleus
    picks = sampler.sample(steered, u, within)
    assert mask[torch.arange(256), picks].all()
    assert not mask[torch.arange(256), sampler.sample(steered, u)].all()  # free steered draws leave it
    assert torch.equal(sampler.sample(base, u, within), sampler.sample(base, u))  # unsteered: the same draws


@pytest.mark.slow  # the sampled NLLs' mean needs many samples: ~13 s a case, the full suite's
@pytest.mark.parametrize("base_nucleus", [False, True])
def test_expected_nll_is_the_sampled_nlls_mean_given_the_text_so_far(tiny_lm, base_nucleus: bool) -> None:
    """``nll="expected"``: at step 0 every sample of a prompt shares its text so far, so the recorded expected NLL is
    one number per (prompt, strength), it equals −Σ q·log p_base over the sampling distribution q (EOS excluded,
    renormalised) computed by hand, and the sampled tokens' NLLs average to it. Later steps differ per sample; the
    texts themselves are the sampled path's, token for token."""
    torch.set_num_threads(1)
    steer = random_steer(tiny_lm, eps=1.0, scale=2.0)
    prompt, n = "A river runs through the old", 100
    kw = dict(num_samples=n, max_new_tokens=2, seed=2, base_nll=True, base_nucleus=base_nucleus, batch_size=100)
    sampled = generate(tiny_lm, [prompt], steer, [0.0, 3.0], **kw)
    expected = generate(tiny_lm, [prompt], steer, [0.0, 3.0], nll="expected", **kw)
    assert [g.token_ids for g in expected] == [g.token_ids for g in sampled]
    ids = torch.tensor([tiny_lm.tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        h = tiny_lm.model.model(ids).last_hidden_state[:, -1]
    head = tiny_lm.output_embeddings
    sampler = NucleusSampler(0.9, 1.0, torch.empty(0, 0))
    for s in (0.0, 3.0):
        with torch.no_grad():
            base = head(h).float()
            steered = head(steer.apply(h, values_for(steer, s)[None])).float()
        within = sampler.nucleus_candidates(base) if base_nucleus else None
        tok, q = sampler.distribution(steered, within)
        q = q.masked_fill(tok == tiny_lm.tokenizer.eos_token_id, 0.0)
        q = q / q.sum()
        by_hand = float(-(q * torch.log_softmax(base, -1).gather(1, tok)).sum())
        first = [g.base_nll[0] for g in expected if g.strength == s and g.base_nll]
        assert len(set(first)) == 1 and first[0] == pytest.approx(by_hand, rel=1e-4)
        draws = torch.tensor([g.base_nll[0] for g in sampled if g.strength == s and g.base_nll])
        assert abs(float(draws.mean()) - by_hand) < 4 * float(draws.std()) / math.sqrt(len(draws))
    later = [g.base_nll[1] for g in expected if g.strength == 3.0 and len(g.base_nll) > 1]
    assert len(set(later)) > 1  # the text so far differs per sample after the first token
    with pytest.raises(ValueError, match="'sampled' or 'expected'"):
        generate(tiny_lm, [prompt], steer, 1.0, nll="mean")


# ------------------------------------------------------------------------------------------ paired cost, prompting
PROMPTS = ["The weather today is", "Scientists have found", "My neighbour said that"]


def test_the_paired_cost_is_zero_for_the_base_model_and_read_for_a_steer(tiny_lm) -> None:
    """Per step, the expected base NLL of the sampling distribution minus that of the base model's own: exactly 0
    where the row samples as the base model does (strength 0), non-zero where a steer reweights the nucleus; and
    one value per counted token, beside the base NLLs."""
    torch.set_num_threads(1)
    steer = random_steer(tiny_lm, names=("style", "dummy"), eps=1e-3, scale=20.0, seed=1)
    gens = generate(tiny_lm, PROMPTS, steer, [0.0, 3.0], num_samples=2, max_new_tokens=6, seed=5, base_nll=True,
                    nll="expected", base_nucleus=True)
    for g in gens:
        assert g.cost is not None and len(g.cost) == len(g.base_nll) == len(g.token_ids)
        if g.strength == 0.0:
            assert all(c == 0.0 for c in g.cost)
    steered = [c for g in gens if g.strength == 3.0 for c in g.cost]
    assert steered and all(math.isfinite(c) for c in steered) and any(abs(c) > 1e-4 for c in steered)
    plain = generate(tiny_lm, PROMPTS, steer, [3.0], max_new_tokens=6, seed=5, base_nll=True, base_nucleus=True)
    assert all(g.cost is None for g in plain)  # sampled-token NLLs: no expectation, no paired cost


def test_prompting_draws_from_guidance_between_the_instructed_and_the_plain_prompt(tiny_lm) -> None:
    """The prompting baseline: each row reads its instructed prompt beside a twin on the plain prompt. Guidance 0
    samples exactly as the twin (the base model: zero cost); guidance > 0 follows the instruction; the texts are
    continuations of the plain prompt either way."""
    torch.set_num_threads(1)
    instructed = [f"Write about cats and dogs.\n{p}" for p in PROMPTS]
    kw = dict(num_samples=2, max_new_tokens=6, seed=5, base_nll=True, nll="expected", base_nucleus=True)
    zero = generate(tiny_lm, PROMPTS, instructed=instructed, guidance=0.0, **kw)
    assert [g.prompt for g in zero] == [p for p in PROMPTS for _ in range(2)]
    assert all(c == 0.0 for g in zero for c in g.cost) and all(g.strength == 0.0 for g in zero)
    strong = generate(tiny_lm, PROMPTS, instructed=instructed, guidance=4.0, **kw)
    assert all(g.strength == 4.0 for g in strong)
    assert [g.text for g in strong] != [g.text for g in zero]
    assert any(abs(c) > 1e-4 for g in strong for c in g.cost)
    with pytest.raises(ValueError, match="one of a steer"):
        generate(tiny_lm, PROMPTS, random_steer(tiny_lm), 1.0, instructed=instructed)
    with pytest.raises(ValueError, match="instructed prompts for"):
        generate(tiny_lm, PROMPTS, instructed=instructed[:1])


def test_batches_side_by_side_in_threads_draw_the_same_samples(tiny_lm) -> None:
    """generate(workers=2) samples two batches at once in threads sharing the model: the same batches with the same
    random numbers, so the same samples, steered rows included (each hook steers its own thread's passes)."""
    torch.set_num_threads(1)
    steer = random_steer(tiny_lm, names=("style", "dummy"), eps=1e-3, scale=20.0, seed=1)
    kw = dict(num_samples=3, max_new_tokens=6, seed=7, batch_size=4, base_nll=True, nll="expected", base_nucleus=True)
    one = generate(tiny_lm, PROMPTS, steer, [-2.0, 0.0, 2.0], workers=1, **kw)
    two = generate(tiny_lm, PROMPTS, steer, [-2.0, 0.0, 2.0], workers=2, **kw)
    assert [(g.prompt_index, g.sample_index, g.strength, g.token_ids, g.base_nll, g.cost) for g in one] == \
        [(g.prompt_index, g.sample_index, g.strength, g.token_ids, g.base_nll, g.cost) for g in two]


def test_a_prompting_sweep_draws_each_row_as_its_strength_alone(tiny_lm) -> None:
    """The prompting baseline's strengths run as one sweep (``values`` with ``instructed`` as a function of the
    prompt and the strength): each row reads its side's instruction at guidance |s|, with the random numbers of its
    prompt and sample, so it draws what a call at that strength alone draws."""
    torch.set_num_threads(1)
    plus = [f"Write about cats.\n{p}" for p in PROMPTS]
    minus = [f"Write about trains.\n{p}" for p in PROMPTS]
    kw = dict(num_samples=2, max_new_tokens=6, seed=5, base_nll=True, nll="expected", base_nucleus=True,
              batch_size=64)
    swept = generate(tiny_lm, PROMPTS, values=[-2.0, 1.0, 3.0], instructed=lambda i, s: (plus if s > 0 else minus)[i],
                     **kw)
    assert [g.strength for g in swept] == [s for s in (-2.0, 1.0, 3.0) for _ in range(2 * len(PROMPTS))]
    for s in (-2.0, 1.0, 3.0):
        alone = generate(tiny_lm, PROMPTS, instructed=plus if s > 0 else minus, guidance=abs(s), **kw)
        assert [g.token_ids for g in swept if g.strength == s] == [g.token_ids for g in alone]
    with pytest.raises(ValueError, match="sweep a body change or instructed prompts"):
        generate(tiny_lm, PROMPTS, values=[1.0])


def test_a_shared_instruction_prefix_is_computed_once_with_the_same_draws(tiny_lm, monkeypatch) -> None:
    """The prompting baseline's rows share their instruction's tokens: the batch's prefill starts from one pass over
    them (a KV cache shifted to each row's padding). The draws and their NLLs are those of the plain batched
    prefill."""
    from steer_core.model import generate as gen_mod

    torch.set_num_threads(1)
    head = "Please continue the following text in a calm, friendly and positive tone of voice, briefly:\n"
    kw = dict(values=[-1.0, 2.0], instructed=lambda i, s: head + ("Sadly. " if s < 0 else "") + PROMPTS[i],
              num_samples=2, max_new_tokens=6, seed=3, base_nll=True, nll="expected", base_nucleus=True)
    built = []
    monkeypatch.setattr(gen_mod, "_prefix_cache", lambda *a, _f=gen_mod._prefix_cache: built.append(_f(*a)) or built[-1])
    shared = generate(tiny_lm, PROMPTS, **kw)
    assert built and all(c is not None and c.get_seq_length() >= 8 for c in built)  # every batch shared its prefix
    monkeypatch.setattr(gen_mod, "MIN_SHARED_PREFIX", 10**9)  # the plain prefill of every column
    plain = generate(tiny_lm, PROMPTS, **kw)
    assert [g.token_ids for g in shared] == [g.token_ids for g in plain]
    assert [x for g in shared for x in g.base_nll] == pytest.approx([x for g in plain for x in g.base_nll], abs=1e-4)
