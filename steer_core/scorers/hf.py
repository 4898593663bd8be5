"""Any transformers text-classification model as a scorer (``hf:<hub id or local dir>``).

For users online this opens every published toxicity/sentiment classifier (e.g. ``hf:cardiffnlp/...``) without
code; offline it takes a local model directory.
"""

from __future__ import annotations

from typing import Any, Sequence

from .base import Kind, Scorer, register


def pick_label(labels: Sequence[str], label: str | None = None) -> str:
    """The label whose probability is the score: ``label`` (case-insensitive), else the first containing 'pos',
    else the first containing 'toxic' (skipping negations such as 'non-toxic', 'not_toxic'), else the last
    (binary heads usually put the positive class last)."""
    if label is not None:
        for name in labels:
            if name.lower() == label.lower():
                return name
        raise ValueError(f"label {label!r} not among the model's labels {list(labels)}")
    for key in ("pos", "toxic"):
        for name in labels:
            low = name.lower()
            if key in low and not low.startswith(("non", "not")):
                return name
    return labels[-1]


class HFScorer(Scorer):
    """Probability of one label from a ``text-classification`` pipeline (``top_k=None``: all labels), batched."""

    def __init__(
        self,
        model: str,
        label: str | None = None,
        kind: Kind | None = None,
        device: str = "auto",
        batch_size: int = 32,
    ) -> None:
        if not model:
            raise ValueError("hf scorer needs a model: hf:<hub id or local dir>")
        if kind not in (None, "toxicity", "sentiment"):
            raise ValueError(f"kind must be 'toxicity' or 'sentiment', not {kind!r}")
        self.model, self.name, self.batch_size = model, f"hf:{model}", batch_size
        self._label_arg, self._kind, self.device_spec = label, kind, device
        self._pipe: Any = None

    def load(self) -> "HFScorer":
        if self._pipe is None:
            from transformers import pipeline

            from steer_core.model.lm import resolve_device

            pipe = pipeline("text-classification", model=self.model, top_k=None, device=resolve_device(self.device_spec))
            labels = [pipe.model.config.id2label[i] for i in sorted(pipe.model.config.id2label)]
            self.label = pick_label(labels, self._label_arg)
            self._pipe = pipe
        return self

    @property
    def kind(self) -> Kind:  # type: ignore[override]
        """As given; otherwise inferred from the chosen label (loads the model's config to see it)."""
        if self._kind is None:
            lab = self.load().label.lower()
            self._kind = "toxicity" if any(k in lab for k in ("tox", "offens", "hate", "abus")) else "sentiment"
        return self._kind

    def _score_batch(self, texts: list[str]) -> Sequence[float]:
        self.load()
        out = self._pipe(texts, batch_size=self.batch_size, truncation=True)
        return [next((d["score"] for d in row if d["label"] == self.label), 0.0) for row in out]


@register("hf", "hf:<hub id or local dir>")
def _hf(arg: str | None = None, **kwargs: Any) -> Scorer:
    return HFScorer(arg or "", **kwargs)
