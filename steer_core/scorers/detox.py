"""Detoxify toxicity, online or from a local checkpoint, never unpickling arbitrary objects.

Detoxify's own loader unpickles the whole checkpoint (weights-only mode off) and always builds the HF config from the
checkpoint's ``model_type`` (a hub id such as ``bert-base-uncased``), so it cannot run offline and it would execute
whatever a checkpoint pickles. Here the checkpoint is read with ``torch.load(weights_only=True)`` (plain dicts,
lists, strings and tensors only), its ``model_type`` is rewritten to a local config/tokenizer directory when one is
given, and the model is built with Detoxify's ``get_model_and_tokenizer``. Prediction is Detoxify's (sigmoid of
the classifier logits), batched.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Sequence

from .base import Scorer, ScorerUnavailable, register

ENV_CHECKPOINT = "STEER_DETOXIFY_CHECKPOINT"
ENV_CONFIG = "STEER_DETOXIFY_CONFIG"
VARIANTS = ("original", "unbiased", "multilingual", "original-small", "unbiased-small")
# Detoxify standardises class names across its models the same way
_RENAME = {"toxic": "toxicity", "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}
_ARCH_KEYS = ("model_type", "model_name", "tokenizer_name", "num_classes")


def _offline() -> bool:
    """HF_HUB_OFFLINE as set now, or as huggingface_hub read it at import."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub.constants import is_offline_mode
    except ImportError:  # pragma: no cover
        return False
    return bool(is_offline_mode())


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def _missing(url: str, why: str = "") -> ScorerUnavailable:
    return ScorerUnavailable(
        f"detoxify needs its checkpoint: online it downloads {url}; offline pass checkpoint=... and config_dir=... "
        f"(or set {ENV_CHECKPOINT} / {ENV_CONFIG})" + (f" [{why}]" if why else "")
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Detoxify checkpoint with ``weights_only=True``; refuse (clearly) one that pickles Python objects."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ScorerUnavailable(f"detoxify checkpoint {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ScorerUnavailable(
            f"detoxify checkpoint {path} holds Python objects beyond tensors and plain containers; refusing to "
            "unpickle it (re-save it as {'config': ..., 'state_dict': ...} with plain types)"
        ) from e
    if not isinstance(loaded, dict) or "config" not in loaded or "state_dict" not in loaded:
        raise ScorerUnavailable(f"detoxify checkpoint {path} must be a dict with 'config' and 'state_dict'")
    return loaded


def _download_checkpoint(url: str) -> dict[str, Any]:
    """The released checkpoint from torch's hub cache, downloading it when online."""
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if cached.is_file():
        return read_checkpoint(cached)
    if _offline():
        raise _missing(url, f"HF_HUB_OFFLINE is set and {cached} is not cached")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
        raise _missing(url, _one_line(e)) from e
    return read_checkpoint(cached)


class DetoxifyScorer(Scorer):
    """Detoxify's probability of the ``toxicity`` class (or ``label=``, any of its classes)."""

    kind = "toxicity"

    def __init__(
        self,
        variant: str = "original",
        checkpoint: str | Path | None = None,
        config_dir: str | Path | None = None,
        device: str = "auto",
        batch_size: int = 32,
        label: str = "toxicity",
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown detoxify variant {variant!r}; known: {', '.join(VARIANTS)}")
        self.variant, self.label, self.batch_size = variant, label, batch_size
        self.name = "detoxify" if variant == "original" else f"detoxify:{variant}"
        self.checkpoint = checkpoint or os.environ.get(ENV_CHECKPOINT) or None
        self.config_dir = config_dir or os.environ.get(ENV_CONFIG) or None
        self.device_spec = device
        self._model: Any = None

    @property
    def url(self) -> str:
        from detoxify.detoxify import MODEL_URLS

        return MODEL_URLS[self.variant]

    def load(self) -> "DetoxifyScorer":
        """Build the model now (it is otherwise built on the first ``score``); raises ScorerUnavailable."""
        if self._model is not None:
            return self
        import torch
        from detoxify.detoxify import get_model_and_tokenizer

        from steer_core.model.lm import resolve_device

        loaded = read_checkpoint(self.checkpoint) if self.checkpoint else _download_checkpoint(self.url)
        try:
            args = {k: loaded["config"]["arch"]["args"][k] for k in _ARCH_KEYS}
            classes = [_RENAME.get(c, c) for c in loaded["config"]["dataset"]["args"]["classes"]]
        except (KeyError, TypeError) as e:
            raise ScorerUnavailable(f"detoxify checkpoint lacks config.arch.args / dataset.args.classes: {e}") from e
        if self.config_dir:
            if not Path(self.config_dir).is_dir():
                raise ScorerUnavailable(f"detoxify config_dir {self.config_dir} is not a directory")
            # Detoxify builds config and tokenizer from model_type: point it at the local copy
            args["model_type"] = str(self.config_dir)
        if self.label not in classes:
            raise ValueError(f"detoxify label {self.label!r} not among the checkpoint's classes {classes}")
        try:
            model, tokenizer = get_model_and_tokenizer(**args, state_dict=loaded["state_dict"])
        except OSError as e:
            raise ScorerUnavailable(
                f"detoxify could not load config/tokenizer {args['model_type']!r} ({_one_line(e)}); offline pass "
                f"config_dir=<local HF config + tokenizer dir> (or set {ENV_CONFIG})"
            ) from e
        self.device = resolve_device(self.device_spec)
        self._model = model.to(self.device).eval()
        self._tokenizer = tokenizer
        self.classes = classes
        self._col = classes.index(self.label)
        limits = [int(tokenizer.model_max_length)] if tokenizer.model_max_length < 1_000_000 else []
        limits.append(int(getattr(model.config, "max_position_embeddings", 512)))
        self._max_length = min(limits)
        self._torch = torch
        return self

    def _score_batch(self, texts: list[str]) -> Sequence[float]:
        return self.predict(texts)[self.label]

    def predict(self, texts: list[str]) -> dict[str, list[float]]:
        """All class probabilities for one batch (Detoxify's ``predict``, without its single-text squeeze)."""
        self.load()
        torch = self._torch
        enc = self._tokenizer(
            texts, return_tensors="pt", truncation=True, padding=True, max_length=self._max_length
        ).to(self.device)
        with torch.inference_mode():
            probs = torch.sigmoid(self._model(**enc).logits.float()).cpu()
        return {c: probs[:, i].tolist() for i, c in enumerate(self.classes)}


@register("detoxify", "detoxify[:original|unbiased|multilingual]")
def _detoxify(arg: str | None = None, **kwargs: Any) -> Scorer:
    return DetoxifyScorer(variant=arg or "original", **kwargs)
