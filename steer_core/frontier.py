"""Measure a steering method at any strength: the ``evaluate_at(s)`` that :mod:`steer_core.strength_search` needs.

One :class:`Measurer` holds a method (an LM-Steer steer or an :class:`~steer_core.baselines.ActAdd` vector), a
prompt set and the sampling settings. Calling it at a strength samples every prompt × sample with the seed's
paired random numbers (``steer_core.generate`` keys them by (seed, prompt, sample)), scores the control, and reads
the judge perplexity under the unsteered model, relative to s = 0 on the very same prompts and random numbers.
The strength-0 samples are the base model's for any method, so two measurers on the same prompts and settings
share one base (pass it with ``base=``). Results are memoised per strength; ``rows`` keeps the details (per
prompt set, distinct-2, a few texts) for reports.

The judge is the base model itself, as in the pipeline's default (``evaluate.judge: base``): a steer's samples
read their base NLL during sampling; ActAdd changes the body, so each of its rows runs beside an unsteered twin that
reads it (``generate(body=...)``). ``base_nucleus`` holds either method's draws inside the base model's nucleus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Sequence

import numpy as np

from .baselines import ActAdd, actadd_steering
from .generate import Generation, generate
from .lm import LoadedLM
from .metrics import control_metrics
from .scorers import cuts_of, get_scorer
from .scorers.diversity import distinct_n
from .steer import Steer


@dataclass
class Measurer:
    """``measurer(s) -> (control, ppl_increase)`` for one method on one prompt set (see the module docstring).

    ``control`` is the positive rate for sentiment (VADER compound above the scorer's cut-off) and 1 − average
    max toxicity for toxicity. ``prompts`` are evaluate's prompt rows (``set``, ``prompt``).
    """

    lm: LoadedLM
    prompts: Sequence[dict]
    steer: Steer | None = None
    actadd: ActAdd | None = None
    control: str = "sentiment"
    scorer: str = "vader"
    samples: int = 2
    max_new_tokens: int = 20
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 64
    base_nucleus: bool = False  # sample within the base model's top-p nucleus, reweighted by the method
    check_scorer: str | None = None  # a second scorer of the same control, reported as each row's "check"
    base: dict[str, Any] | None = None  # another measurer's row at s = 0 (same prompts and settings)
    rows: dict[float, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.steer is None) == (self.actadd is None):
            raise ValueError("a Measurer measures exactly one method: give steer= or actadd=")
        if self.control not in ("sentiment", "toxicity"):
            raise ValueError(f"control must be 'sentiment' or 'toxicity', got {self.control!r}")
        self._scorer = get_scorer(self.scorer)
        if self.base is not None:
            self.rows[0.0] = self.base

    def _generate(self, s: float) -> tuple[list[Generation], list[float]]:
        texts = [p["prompt"] for p in self.prompts]
        kw = dict(num_samples=self.samples, max_new_tokens=self.max_new_tokens, top_p=self.top_p,
                  temperature=self.temperature, seed=self.seed, batch_size=self.batch_size, base_nll=True,
                  base_nucleus=self.base_nucleus)
        if self.steer is not None or s == 0.0:
            gens = generate(self.lm, texts, self.steer, float(s), **kw)
        else:  # ActAdd changes the body: each row runs beside an unsteered twin that reads the base model
            gens = generate(self.lm, texts, body=partial(actadd_steering, self.lm, self.actadd, s), **kw)
        return gens, [sum(g.base_nll) / len(g.base_nll) if g.base_nll else math.nan for g in gens]

    def measure(self, s: float) -> dict[str, Any]:
        """The full row at strength ``s`` (memoised): control, perplexity, per prompt set, distinct-2, examples."""
        s = float(s)
        if s in self.rows:
            return self.rows[s]
        gens, log_ppl = self._generate(s)
        scores = self._scorer.score([g.text for g in gens])
        cuts = cuts_of(self._scorer)
        by_prompt: dict[int, list[tuple[Generation, float, float]]] = {}
        for g, c, lp in zip(gens, scores, log_ppl):
            by_prompt.setdefault(g.prompt_index, []).append((g, float(c), lp))

        def summary(idx: list[int]) -> dict[str, float]:
            ctrl, lps, d2 = [], [], []
            for i in idx:
                group = by_prompt[i]
                cs = np.asarray([c for _, c, _ in group])
                ctrl.append(control_metrics(cs, self.control, cuts)["control"])
                finite = [lp for _, _, lp in group if lp == lp]
                lps.append(float(np.mean(finite)) if finite else math.nan)
                d2.append(distinct_n([g.text for g, _, _ in group], 2))
            return {"control": float(np.mean(ctrl)), "ppl": float(np.exp(np.nanmean(lps))),
                    "distinct_2": float(np.mean(d2))}

        all_idx = sorted(by_prompt)
        row: dict[str, Any] = {"strength": s, **summary(all_idx)}
        row["sets"] = {name: summary([i for i in all_idx if self.prompts[i]["set"] == name])
                       for name in dict.fromkeys(p["set"] for p in self.prompts)}
        if self.check_scorer:  # the same control under an independent scorer, averaged per prompt as above
            checker = get_scorer(self.check_scorer)
            per: dict[int, list[float]] = {}
            for g, c in zip(gens, checker.score([g.text for g in gens])):
                per.setdefault(g.prompt_index, []).append(float(c))
            row["check"] = float(np.mean([control_metrics(np.asarray(v), self.control, cuts_of(checker))["control"]
                                          for _, v in sorted(per.items())]))
        row["examples"] = [g.text for g in gens[: 3 * self.samples : self.samples]]
        self.rows[s] = row
        return row

    def ppl_increase(self, row: dict[str, Any], prompt_set: str | None = None) -> float:
        """A row's judge perplexity relative to s = 0 (overall, or for one prompt set)."""
        base = self.measure(0.0)
        if prompt_set is None:
            return row["ppl"] / base["ppl"] - 1.0
        return row["sets"][prompt_set]["ppl"] / base["sets"][prompt_set]["ppl"] - 1.0

    def __call__(self, s: float) -> tuple[float, float]:
        row = self.measure(s)
        return row["control"], self.ppl_increase(row)
