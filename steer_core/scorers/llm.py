"""``llm`` / ``llm:<model spec>``: a language model as a few-shot sentiment judge, calibrated without labels.

Why: the lexicons (VADER, TextBlob) read words; a steer trained on VADER-labelled text can learn VADER's words. An
LM reads the whole text. Its score is log p(" positive") − log p(" negative") at the answer of a fixed few-shot
prompt (four hand-written examples, none from any corpus we train or evaluate on), minus the same score on
content-free texts ("Calibrate before use", Zhao et al. 2021): 0 is the cut, where a text that says nothing sits.

Cost: one forward pass of the text's tokens a text. The few-shot prefix is run once and its key/value cache
reused for every batch (texts right-padded after it; each row is read at its own last token).

Its accuracy on human labels is measured by ``bench/studies/llm_judge.py`` (docs/experiments.md, "An LM as the
sentiment judge"); read it before trusting this judge for a new style or language.
"""

from __future__ import annotations

import threading
from typing import Sequence

from .base import Cuts, Scorer, ScorerUnavailable, register

PREFIX = ("Decide whether each text is positive or negative.\n\n"
          "Text: Thanks so much, the staff were wonderful and the room was lovely!\nAnswer: positive\n\n"
          "Text: Still waiting two hours later, nobody answers the phone. Awful.\nAnswer: negative\n\n"
          "Text: Really happy with how the new update turned out.\nAnswer: positive\n\n"
          "Text: I regret buying this, it broke on the first day.\nAnswer: negative\n\n"
          "Text:")
SUFFIX = "\nAnswer:"
CONTENT_FREE = ("N/A", "", "[MASK]")
MAX_TEXT_TOKENS = 96  # a continuation longer than this is read by its first 96 tokens


class LLMJudgeScorer(Scorer):
    """Sentiment by an LM's few-shot answer; higher = more positive, > 0 positive, < 0 negative."""

    kind = "sentiment"
    cuts = Cuts(positive_above=0.0, negative_below=0.0)
    batch_size = 32

    def __init__(self, spec: str = "default") -> None:
        from steer_core.model.lm import ModelLoadError, check_spec

        try:  # a judge that cannot load is refused when named, before any sampling
            check_spec(spec)
        except ModelLoadError as exc:
            raise ScorerUnavailable(str(exc)) from None
        self.spec = spec
        self.name = "llm" if spec == "default" else f"llm:{spec}"
        self._lm = None
        self._prefix_cache = None
        self._answer_ids: tuple[int, int] | None = None
        self._prefix_len = 0
        self._suffix_ids: list[int] = []
        self._offset = 0.0
        self._lock = threading.Lock()

    def _load(self) -> None:
        """The judge LM (shared with the process's other users of the same spec), its prefix cache and offset."""
        import torch

        from steer_core.model.lm import shared_lm

        lm = shared_lm(self.spec)
        tok = lm.tokenizer
        pos = tok(" positive", add_special_tokens=False).input_ids
        neg = tok(" negative", add_special_tokens=False).input_ids
        if pos[0] == neg[0]:
            raise ValueError(f"scorer {self.name!r}: ' positive' and ' negative' share their first token in "
                             f"{lm.name}'s tokenizer; this judge cannot read it")
        self._lm, self._answer_ids = lm, (pos[0], neg[0])
        self._suffix_ids = tok(SUFFIX, add_special_tokens=False).input_ids
        ids = tok(PREFIX, return_tensors="pt").input_ids.to(lm.device)
        with torch.inference_mode():
            self._prefix_cache = lm.model(input_ids=ids, use_cache=True).cache
        self._prefix_len = ids.shape[1]
        self._offset = 0.0
        free = self._raw(list(CONTENT_FREE))
        self._offset = sum(free) / len(free)

    def _raw(self, texts: list[str]) -> list[float]:
        import copy

        import torch

        lm, tok = self._lm, self._lm.tokenizer
        rows = [tok(" " + t.strip() if t.strip() else "", add_special_tokens=False).input_ids[:MAX_TEXT_TOKENS]
                + self._suffix_ids for t in texts]
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=lm.device)
        mask = torch.tensor([[1] * (self._prefix_len + len(r)) + [0] * (width - len(r)) for r in rows],
                            device=lm.device)
        cache = copy.deepcopy(self._prefix_cache)
        cache.batch_repeat_interleave(len(rows))
        with torch.inference_mode():
            logits = lm.model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True).logits
        last = torch.tensor([len(r) - 1 for r in rows], device=lm.device)
        logp = logits[torch.arange(len(rows)), last].float().log_softmax(-1)
        p, n = self._answer_ids
        return [float(x) - self._offset for x in (logp[:, p] - logp[:, n]).tolist()]

    def score(self, texts: Sequence[str]) -> list[float]:
        """Scores in the given order; batches are formed over texts sorted by length (less padding)."""
        texts = [str(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        by_length = super().score([texts[i] for i in order])
        out = [0.0] * len(texts)
        for i, value in zip(order, by_length):
            out[i] = value
        return out

    def _score_batch(self, texts: list[str]) -> Sequence[float]:
        with self._lock:  # loaded once; evaluation threads then share the model (no hook acts in their passes)
            if self._lm is None:
                self._load()
        return self._raw(texts)


@register("llm", "llm[:<model spec>] (an LM's few-shot sentiment answer; default: the default model)")
def _make_llm(arg: str | None = None, **_: object) -> LLMJudgeScorer:
    return LLMJudgeScorer(arg or "default")
