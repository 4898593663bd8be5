"""The jigsaw toxicity judge (``steer_core.scorers.jigsaw``) on the real packaged model: its figures, its
preprocessing against Keras' own tokenizer, the pickle never trusted unchecked, and no global state disturbed."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from steer_core.scorers import get_scorer, jigsaw

ROOT = Path(__file__).resolve().parents[1]

# The package README's example outputs (computed by its authors with TensorFlow): classify() of one text, and
# predict_batch() (the mean of the six labels). Matching them to 4 decimals shows model + preprocessing are the same.
README_CLASSIFY = ("You are so dumb and stupid!",
                   [0.9889402985572815, 0.07256772369146347, 0.620429277420044, 0.01934845559298992,
                    0.8664075136184692, 0.04072948172688484])
README_MEANS = {"I hate you so much!": 0.1395, "This is wonderful news.": 0.0013, "You're disgusting!": 0.3110,
                "Absolutely love your energy!": 0.0088, "You're the worst person ever!": 0.0937,
                "Have a nice day :)": 0.0115}


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> jigsaw.JigsawScorer:
    return jigsaw.JigsawScorer(cache_dir=tmp_path_factory.mktemp("cache")).load()


def test_it_is_a_registered_toxicity_scorer() -> None:
    s = get_scorer("jigsaw")
    assert isinstance(s, jigsaw.JigsawScorer) and s.kind == "toxicity" and s.label == "toxic"
    assert get_scorer("jigsaw:insult").label == "insult"
    with pytest.raises(ValueError, match="not in"):
        get_scorer("jigsaw:rude")


def test_sanity_figures(scorer: jigsaw.JigsawScorer) -> None:
    s = scorer.score(["stupid idiot", "shut the fuck up", "the meeting is at 3 pm"])
    # "stupid idiot" is 0.9940 with the package's exact pipeline (the brief's ~0.997 is "you stupid idiot": 0.9971)
    assert s[0] == pytest.approx(0.994, abs=0.003)
    assert s[1] == pytest.approx(0.997, abs=0.002)
    assert s[2] == pytest.approx(0.004, abs=0.002)


def test_matches_package_readme(scorer: jigsaw.JigsawScorer) -> None:
    text, labels = README_CLASSIFY
    np.testing.assert_allclose(scorer.predict_proba([text])[0], labels, atol=1e-4)
    means = scorer.predict_proba(list(README_MEANS)).mean(axis=1)
    np.testing.assert_allclose(means, list(README_MEANS.values()), atol=1e-4)


def test_batch_equals_one_by_one(scorer: jigsaw.JigsawScorer) -> None:
    texts = ["stupid idiot", "", "the meeting is at 3 pm", "x " * 300 + "idiot", "Hello\tWORLD!!", "ça va? naïve"]
    batched = scorer.score(texts * 3)
    single = [scorer.score([t])[0] for t in texts] * 3
    np.testing.assert_allclose(batched, single, atol=1e-6)
    small = jigsaw.JigsawScorer(cache_dir=scorer.cache_dir, batch_size=4).score(texts * 3)  # ragged last batch
    np.testing.assert_allclose(small, single, atol=1e-6)
    assert scorer.score([]) == []


def test_encode_matches_keras_tokenizer(scorer: jigsaw.JigsawScorer) -> None:
    """Our encode == Keras' own legacy Tokenizer + pad_sequences, fed the same (restricted-unpickled) state."""
    from keras.src.legacy.preprocessing.text import Tokenizer
    from keras.utils import pad_sequences

    tok_path, _ = jigsaw.package_files()
    tok = Tokenizer()
    tok.__dict__.update(jigsaw._unpickle_tokenizer(tok_path.read_bytes()))
    rare = next(w for w, i in tok.word_index.items() if i >= 20000)
    texts = ["", "   ", "Stupid IDIOT!!!", "a-b_c d.e,f", "line\nbreak\ttab\rreturn", f"{rare} the {rare}",
             "don't won't you're", "émigré Straße ДУРАК 😀 idiot", " ".join(f"w{i} idiot" for i in range(150)),
             "http://example.com/x?y=1 www.foo.bar", "multiple   spaces\u00a0nbsp"]
    want = pad_sequences(tok.texts_to_sequences(texts), maxlen=100)
    assert scorer._vocab is not None
    np.testing.assert_array_equal(jigsaw.encode(texts, scorer._vocab), want)


def test_conversion_refuses_other_sha(tmp_path: Path) -> None:
    tok_path, _ = jigsaw.package_files()
    bad = tmp_path / "tokenizer.pickle"
    bad.write_bytes(tok_path.read_bytes() + b"\x00")
    out = tmp_path / "vocab.json"
    with pytest.raises(jigsaw.JigsawIntegrityError, match="refusing to unpickle"):
        jigsaw.convert_tokenizer(bad, out)
    assert not out.exists()


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    """Even with a matching sha (the pin given by the caller), a pickle naming e.g. os.system is refused."""
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps(os.system))
    sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    with pytest.raises(pickle.UnpicklingError, match="forbidden global"):
        jigsaw.convert_tokenizer(evil, tmp_path / "v.json", expected_sha256=sha)


def test_cached_json_used_without_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok_path, _ = jigsaw.package_files()
    first = jigsaw.load_vocab(tmp_path, tok_path)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"tokenizer-{jigsaw.TOKENIZER_SHA256[:12]}.json"]  # no temp file left
    assert len(first["vocab"]) == 19999 and first["maxlen"] == 100 and first["padding"] == "pre"

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the pickle was read although the JSON cache is valid")

    monkeypatch.setattr(jigsaw, "convert_tokenizer", boom)
    monkeypatch.setattr(jigsaw, "_unpickle_tokenizer", boom)
    second = jigsaw.load_vocab(tmp_path, tmp_path / "does-not-exist.pickle")
    assert second == first
    s = jigsaw.JigsawScorer(cache_dir=tmp_path)
    monkeypatch.setattr(jigsaw, "package_files", lambda: (tmp_path / "does-not-exist.pickle", tok_path.parent /
                                                          "model.weights.h5"))
    assert s.score(["stupid idiot"])[0] > 0.99


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    tok_path, _ = jigsaw.package_files()
    cache = tmp_path / f"tokenizer-{jigsaw.TOKENIZER_SHA256[:12]}.json"
    cache.write_text("{ truncated")
    cfg = jigsaw.load_vocab(tmp_path, tok_path)
    assert json.loads(cache.read_text())["vocab"] == cfg["vocab"]


def test_weights_sha_checked(tmp_path: Path) -> None:
    _, weights = jigsaw.package_files()
    bad = tmp_path / "model.weights.h5"
    shutil.copy(weights, bad)
    with open(bad, "ab") as f:
        f.write(b"\x00")
    with pytest.raises(jigsaw.JigsawIntegrityError):
        jigsaw.load_model(bad)


def test_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "toxic_classifier" else real(name, *a))
    with pytest.raises(jigsaw.JigsawUnavailable) as e:
        jigsaw.JigsawScorer().load()
    assert jigsaw.INSTALL_HINT in str(e.value) and "\n" not in str(e.value)


def _run(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env={**e, **env}, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.mark.slow
def test_empty_keras_backend_means_torch(tmp_path: Path) -> None:
    code = "import os\nfrom steer_core.scorers import jigsaw\nprint(jigsaw.JigsawScorer().score(['stupid idiot'])[0] > 0.99, os.environ['KERAS_BACKEND'])"
    r = _run(code, KERAS_BACKEND="", STEER_CACHE_DIR=str(tmp_path))
    assert r.stdout.split() == ["True", "torch"], r.stderr


@pytest.mark.slow
def test_other_keras_backend_is_refused(tmp_path: Path) -> None:
    r = _run("import sys\nfrom steer_core.scorers import jigsaw\ntry:\n    jigsaw.JigsawScorer(cache_dir=sys.argv[1]).score(['x'])\n"
             "except jigsaw.JigsawUnavailable as e:\n    print('REFUSED', e)", str(tmp_path), KERAS_BACKEND="jax")
    assert "REFUSED jigsaw scorer needs KERAS_BACKEND=torch" in r.stdout, r.stderr
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


GLOBAL_STATE = r"""
import json, os, random, sys
import numpy as np, torch
def state():
    return {"dtype": str(torch.get_default_dtype()), "threads": torch.get_num_threads(),
            "interop": torch.get_num_interop_threads(), "grad": torch.is_grad_enabled(),
            "inference": torch.is_inference_mode_enabled(), "device": str(torch.get_default_device()),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "matmul": torch.get_float32_matmul_precision(), "anomaly": torch.is_anomaly_enabled(),
            "torch_rng": torch.get_rng_state().sum().item(), "np_rng": int(np.random.get_state()[1].sum()),
            "py_rng": hash(random.getstate())}
before = state()
from steer_core.scorers import jigsaw
s = jigsaw.JigsawScorer(cache_dir=sys.argv[1])
s.score(["stupid idiot"] * 300)
after = state()
print(json.dumps({"changed": {k: [before[k], after[k]] for k in before if before[k] != after[k]},
                  "foreign": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "jax", "tf_keras")),
                  "backend": os.environ.get("KERAS_BACKEND")}))
"""


@pytest.mark.slow
def test_global_state_untouched(tmp_path: Path) -> None:
    """Loading and scoring leaves torch/numpy/random global state alone and imports no tensorflow or jax."""
    r = _run(GLOBAL_STATE, str(tmp_path))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"changed": {}, "foreign": [], "backend": "torch"}
