"""Nucleus sampling with per-row random numbers, as a logits processor inside a greedy ``generate``.

Why not ``generate``'s own top-p: HF sorts the whole vocabulary for every row at every step and then draws over
the whole vocabulary, which on a CPU costs more than the model's forward pass (``bench/eval_speed.py``).
:class:`NucleusSampler` finds the nucleus with ``topk`` (widening only for rows
whose nucleus is larger) and hands ``generate`` (run with ``do_sample=False``) a one-hot score row, so greedy
decoding picks exactly the sampled token.

Why our own random numbers: they are per row, keyed by (seed, prompt, sample) (:func:`row_uniforms`), so a row's
draw does not depend on which other rows share its batch or thread. The same steer evaluated twice, as candidate and
as champion, yields the same samples, and every strength of a sweep uses the same random numbers (paired samples:
lower-variance differences between strengths and between steers).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import LogitsProcessor


def row_uniforms(seed: int, keys: Sequence[tuple[int, int]], steps: int) -> torch.Tensor:
    """(rows, steps) uniforms in (0, 1), one reproducible stream per (prompt index, sample index) key."""
    out = torch.empty(len(keys), steps, dtype=torch.float64)
    for r, (p, s) in enumerate(keys):
        g = torch.Generator().manual_seed((seed * 1_000_003 + p * 10_007 + s) % (2**63))
        out[r] = torch.rand(steps, generator=g, dtype=torch.float64)
    return out.clamp_(1e-12, 1 - 1e-12)


def _within_weights(probs: torch.Tensor, within: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The (unnormalised) weights of ``probs`` on the kept candidates of ``within`` = (ids, kept), rows × k; a row
    whose steered mass all underflowed off the candidates gets uniform weights over them."""
    idx, keep = within
    p = probs.gather(1, idx) * keep
    empty = p.sum(-1) <= 0
    if empty.any():
        p[empty] = keep[empty].to(p.dtype)
    return p


class NucleusSampler(LogitsProcessor):
    """Top-p (nucleus) sampling at temperature T as a logits processor that returns one-hot scores.

    The nucleus is HF's: tokens in descending probability order are kept while the mass *before* them is below
    ``top_p`` (so at least one is kept). ``topk(first_k)`` suffices for a row when its top-k mass already reaches
    ``top_p``; other rows retry with 8× more candidates, up to the whole vocabulary. The draw inverts the nucleus'
    cumulative distribution at the row's uniform for this step (``uniforms``: rows × max steps).

    The step is read from the sequence length (``input_ids`` holds the ``prompt_length`` padded prompt tokens and
    the tokens generated so far), so a call depends on its arguments only. ``recorder`` (optional) is told each
    step's scores and choice (``recorder.record(scores, choice, dist)``: the base-model NLLs of ``steer_core.model.generate``;
    ``dist`` is the step's distribution, :meth:`distribution`, when the recorder's ``expected`` is true, else None).
    ``twins`` > 0: rows [twins, 2·twins) are unsteered twins of rows [0, twins) and take their draws, token for token
    (``steer_core.model.generate``: the base model's logits beside a body-changing baseline). ``guidance`` (with
    twins; one number, or one per row): each row draws from its twin's logits + guidance × (its own − its twin's),
    classifier-free guidance.
    """

    def __init__(self, top_p: float, temperature: float, uniforms: torch.Tensor, first_k: int = 256, *,
                 prompt_length: int = 0, recorder: Any = None, base_nucleus: bool = False,
                 twins: int = 0, guidance: float | torch.Tensor | None = None) -> None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.top_p, self.temperature, self.uniforms, self.first_k = top_p, temperature, uniforms, first_k
        self.prompt_length, self.recorder = prompt_length, recorder
        if base_nucleus and recorder is None:
            raise ValueError("base_nucleus needs a recorder that holds the step's unsteered logits")
        self.base_nucleus = base_nucleus
        self.twins = twins
        if guidance is not None and not twins:
            raise ValueError("guidance mixes each row with its unsteered twin: it needs twins")
        self.guidance = guidance if guidance is None or isinstance(guidance, torch.Tensor) else torch.tensor(
            [float(guidance)])

    def sample(self, scores: torch.Tensor, u: torch.Tensor,
               within: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One token id per row of ``scores`` (rows × vocab logits), drawn at uniforms ``u`` (rows,).

        ``within`` = (candidate ids, kept mask), both rows × k (:meth:`nucleus_candidates` of the base logits): draw
        from the distribution of ``scores`` restricted to the kept candidates and renormalised, with no further
        top-p cut: the base model's nucleus, reweighted by a steer. The draw inverts the CDF in the candidates'
        order (the base's descending order), so an unsteered row draws the very token the plain nucleus path does."""
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        u = u.to(probs.device, torch.float32)
        if within is not None:
            idx, _ = within
            cdf = _within_weights(probs, within).cumsum(-1)
            pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp_(max=idx.shape[1] - 1)
            return idx.gather(1, pick).squeeze(1)
        if self.top_p >= 1.0:
            cdf = probs.cumsum(-1)
            return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(1).clamp_(max=probs.shape[1] - 1)
        rows, vocab = probs.shape
        choice = torch.empty(rows, dtype=torch.long, device=probs.device)
        todo = torch.arange(rows, device=probs.device)
        k = min(self.first_k, vocab)
        while todo.numel():
            top, idx = probs[todo].topk(k, dim=-1)  # descending
            before = top.cumsum(-1) - top  # mass strictly before each candidate
            done = (before[:, -1] + top[:, -1] >= self.top_p) if k < vocab else torch.ones_like(todo, dtype=torch.bool)
            if done.any():
                cdf = torch.where(before[done] < self.top_p, top[done], torch.zeros_like(top[done])).cumsum(-1)
                pick = torch.searchsorted(cdf, (u[todo[done]] * cdf[:, -1])[:, None]).clamp_(max=k - 1)
                choice[todo[done]] = idx[done].gather(1, pick).squeeze(1)
            todo = todo[~done]
            k = min(k * 8, vocab)
        return choice

    def nucleus_candidates(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-p nucleus of each row of ``scores`` at this sampler's temperature (HF's rule, as :meth:`sample`
        applies it): (ids, kept), both rows × k, ids in descending probability, kept a prefix of each row, k the
        largest nucleus of the rows. With top_p = 1 the nucleus is the whole vocabulary, in vocabulary order (the
        order :meth:`sample` draws it in)."""
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        rows, vocab = probs.shape
        if self.top_p >= 1.0:
            return torch.arange(vocab, device=probs.device).expand(rows, vocab), probs > 0
        # topk(first_k) for every row, then 8× more candidates for the rows whose nucleus is larger, and so on: a
        # flat row widens alone (widening every row with it cost more than the model's forward pass)
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        todo = torch.arange(rows, device=probs.device)
        k = min(self.first_k, vocab)
        while todo.numel():
            top, idx = probs[todo].topk(k, dim=-1)
            before = top.cumsum(-1) - top  # mass strictly before each candidate
            done = (before[:, -1] + top[:, -1] >= self.top_p) if k < vocab else torch.ones_like(todo, dtype=torch.bool)
            parts.append((todo[done], idx[done], before[done] < self.top_p))
            todo = todo[~done]
            k = min(k * 8, vocab)
        width = max(int(keep.sum(-1).max()) for r, _, keep in parts if r.numel())
        ids = torch.empty(rows, width, dtype=torch.long, device=probs.device)
        kept = torch.zeros(rows, width, dtype=torch.bool, device=probs.device)
        for r, idx, keep in parts:
            if not r.numel():
                continue
            w = min(width, idx.shape[1])
            ids[r, :w], kept[r, :w] = idx[:, :w], keep[:, :w]
            if w < width:  # past a row's candidates: its top token, never kept
                ids[r, w:] = idx[:, :1]
        return ids, kept

    def nucleus(self, scores: torch.Tensor) -> torch.Tensor:
        """:meth:`nucleus_candidates` as a (rows × vocab) bool mask."""
        idx, keep = self.nucleus_candidates(scores)
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        rows = torch.arange(idx.shape[0], device=idx.device)[:, None].expand_as(idx)
        mask[rows[keep], idx[keep]] = True  # kept ids only: a row's padding repeats its top id, never kept
        return mask

    def distribution(self, scores: torch.Tensor, within: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The distribution :meth:`sample` draws each row's token from: (ids, probabilities), both rows × k, each
        row summing to 1 (``within``: as in :meth:`sample`)."""
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if within is not None:
            idx, p = within[0], _within_weights(probs, within)
        elif self.top_p >= 1.0:
            idx, p = torch.arange(probs.shape[1], device=probs.device).expand_as(probs), probs
        else:
            idx, keep = self.nucleus_candidates(scores)
            p = probs.gather(1, idx) * keep
        return idx, p / p.sum(-1, keepdim=True)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.guidance is not None:
            t = self.twins
            scores = scores.float().clone()
            g = self.guidance.to(scores.device, scores.dtype)[:, None]  # one per row, or one for all
            scores[:t] = scores[t : 2 * t] + g * (scores[:t] - scores[t : 2 * t])
        within = base = None
        if self.recorder is not None and (self.base_nucleus or getattr(self.recorder, "expected", False)):
            base = self.recorder.base_scores(scores)  # the unsteered logits of this step, from the recorder's hook
        if self.base_nucleus:
            within = self.nucleus_candidates(base)
        choice = self.sample(scores, self.uniforms[:, input_ids.shape[1] - self.prompt_length], within)
        if self.twins:
            choice[self.twins : 2 * self.twins] = choice[: self.twins]
        if self.recorder is not None:
            dist = base_dist = None
            if getattr(self.recorder, "expected", False):
                dist = self.distribution(scores, within)
                base_dist = self.distribution(base, within)  # the base nucleus is the base's own distribution
            self.recorder.record(scores, choice, dist, base_dist)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, choice[:, None], 0.0)
