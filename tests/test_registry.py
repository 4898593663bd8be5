"""Real MLflow (sqlite store, a real tracking server, a real scoring server) in temp dirs; no mocks.

The base model is a tiny random Llama (hidden size 32, 2 layers) with the default model's tokenizer, so a logged
steer model loads and generates in well under a second; the text is gibberish but visibly steered.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import mlflow
import pandas as pd
import pytest

from steer_core.config import GateConfig
from steer_core.gate import decide
from steer_core.model.lm import default_gguf_path, gguf_cache_path, load_lm
from steer_core.model.steer import BaseModelMismatch
from tasks.mlflow_io import download_steer, get_champion, log_steer_model, promote

from builders import random_steer, tiny_llama
from projects import MLFLOW_URI_VARS, forget_tracking
from servers import free_port, start_server, stop_server, wait_http

pytestmark = pytest.mark.slow  # every test logs MLflow pyfunc models (~2–10 s each); two start servers

GATE = GateConfig(max_ppl_increase=0.25, min_distinct_2=0.5, min_margin=0.0)
PASS = decide({"control": 0.6, "ppl_increase": 0.1, "distinct_2": 0.8, "gain": 0.2}, None, GATE)
FAIL = decide({"control": 0.6, "ppl_increase": 0.4, "distinct_2": 0.8, "gain": 0.2}, None, GATE)
assert PASS.passed and not FAIL.passed


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random base model dir and three steer files for it (two good, one for another base)."""
    root = tmp_path_factory.mktemp("tiny")
    tiny_llama(49152, heads=4, kv_heads=2, max_positions=128, tie_word_embeddings=True, bos_token_id=1,
               eos_token_id=2).save_pretrained(root / "base")
    tok_src = gguf_cache_path(default_gguf_path())
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_src / f, root / "base" / f)
    fp = load_lm(str(root / "base"), device="cpu").fingerprint
    out = {"base": root / "base"}
    for i, (key, fingerprint) in enumerate([("v1", fp), ("v2", fp), ("foreign", "0" * 64)]):
        meta = {"base_model": str(root / "base"), "base_fingerprint": fingerprint}
        s = random_steer(32, names=("sentiment", "dummy"), eps=1e-3, scale=100.0, seed=i, metadata=meta)
        out[key] = s.save(root / key / "sentiment.safetensors")
    return out


def use_uri(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracking and registry both here (another test may have set a registry URI); monkeypatch restores the env."""
    for var in MLFLOW_URI_VARS:
        monkeypatch.setenv(var, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One sqlite tracking + registry store per module (creating its tables costs ~1 s), artifacts in tmp too."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    exp = mlflow.MlflowClient(uri).create_experiment("steers", artifact_location=str(root / "art"))
    return uri, exp


@pytest.fixture
def store(db: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point MLflow at the module's store for one test; each test registers its own model name (``name``)."""
    uri, exp = db
    use_uri(uri, monkeypatch)
    mlflow.set_experiment(experiment_id=exp)
    yield uri
    forget_tracking()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A registered-model name of this test's own, so tests sharing one store never see each other's aliases."""
    return "steer-" + request.node.name.removeprefix("test_").replace("_", "-")[:60]


def aliases(name: str) -> dict[str, str]:
    """Alias → version as strings (the sqlite store returns int versions, the REST store strings)."""
    return {k: str(v) for k, v in mlflow.MlflowClient().get_registered_model(name).aliases.items()}


def subprocess_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "TMPDIR": str(tmp), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true", **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `uvicorn` must be on PATH
    env.pop("PYTHONPATH", None)  # the model must carry its own code (code_paths), not borrow the repo's
    return env


# ------------------------------------------------------------------------------------------------ sqlite store
def test_register_promote_and_generate(tiny: dict[str, Path], name: str, store: str) -> None:
    assert get_champion(name) is None  # no model yet
    mv = log_steer_model(tiny["v1"], name, default_strength=2.0, base_nucleus=True, metrics={"control": 0.6})
    assert str(mv.version) == "1" and mv.tags["steer.base_model"] == str(tiny["base"])
    assert mv.tags["steer.base_nucleus"] == "true"  # sampled as its evaluation sampled
    assert get_champion(name) is None  # registering never promotes
    result = promote(name, mv.version, PASS)
    assert result.promoted and result.champion == "1" and result.previous is None
    assert str(get_champion(name).version) == "1"
    mv = mlflow.MlflowClient().get_model_version(name, "1")
    assert mv.tags["gate.passed"] == "true" and "gate passed" in mv.description

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    params = model.metadata.get_params_schema().to_dict()
    assert {p["name"]: p["default"] for p in params}["strength"] == 2.0
    assert {p["name"]: p["default"] for p in params}["base_nucleus"] is True
    df = pd.DataFrame({"prompt": ["The food was", "My day"], "strength": [math.nan, -3.0]})
    out = model.predict(df, params={"num_samples": 2, "max_new_tokens": 6})
    assert list(out.columns) == ["prompt", "strength", "sample_index", "generation"]
    assert list(out["strength"]) == [2.0, 2.0, -3.0, -3.0]  # NaN → the default strength param
    assert list(out["sample_index"]) == [0, 1, 0, 1]
    assert all(isinstance(t, str) and t for t in out["generation"])

    def gen(strength: float, **extra) -> list[str]:
        one = pd.DataFrame({"prompt": ["The food was"] * 4})
        return list(model.predict(one, params={"strength": strength, "max_new_tokens": 8, "seed": 1, **extra}
                                  )["generation"])

    assert gen(0.0) == gen(0.0)  # seeded
    assert gen(0.0) != gen(30.0)  # and steered
    assert gen(30.0) != gen(30.0, base_nucleus=False)  # by default within the base model's nucleus
    assert gen(0.0) == gen(0.0, base_nucleus=False)  # which, unsteered, is plain top-p


def test_pass_moves_champion_and_sets_previous(tiny: dict[str, Path], name: str, store: str) -> None:
    for path in (tiny["v1"], tiny["v2"], tiny["v1"]):
        log_steer_model(path, name)
    promote(name, 1, PASS)
    r = promote(name, 2, PASS)
    assert r.promoted and aliases(name) == {"champion": "2", "previous": "1"}
    r = promote(name, 3, PASS)
    assert (r.champion, r.previous) == ("3", "2") and aliases(name) == {"champion": "3", "previous": "2"}
    r = promote(name, 3, PASS)  # already champion: nothing moves
    assert not r.promoted and aliases(name) == {"champion": "3", "previous": "2"}


def test_a_verdict_records_its_basis_and_a_new_verdict_replaces_it(tiny: dict[str, Path], name: str, store: str,
                                                                   tmp_path: Path) -> None:
    """``gate.basis`` names the gate settings and the evaluation file a verdict rests on (so a changed gate or a
    re-evaluation is judged again); a later verdict without a basis removes the old one rather than leave it beside
    other reasons."""
    from tasks.promotion import verdict_basis

    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"control": 0.5}')
    gate = GateConfig()
    basis = verdict_basis(gate, metrics)
    assert basis == verdict_basis(GateConfig(), metrics)  # a function of the settings' values
    assert basis != verdict_basis(gate.model_copy(update={"max_ppl_increase": 0.3}), metrics)
    assert basis != verdict_basis(gate.model_copy(update={"min_margin_over_baseline": -0.05}), metrics)
    assert basis != verdict_basis(gate, tmp_path / "missing.json")
    metrics.write_text('{"control": 0.6}')
    assert basis != verdict_basis(gate, metrics)  # another evaluation
    log_steer_model(tiny["v1"], name)
    promote(name, 1, FAIL, basis=basis)
    client = mlflow.MlflowClient()
    assert client.get_model_version(name, "1").tags["gate.basis"] == basis
    promote(name, 1, FAIL)
    assert "gate.basis" not in client.get_model_version(name, "1").tags


def test_fail_leaves_aliases_and_records_reasons(tiny: dict[str, Path], name: str, store: str) -> None:
    log_steer_model(tiny["v1"], name)
    log_steer_model(tiny["v2"], name)
    promote(name, 1, PASS)
    before = aliases(name)
    r = promote(name, 2, FAIL)
    assert not r.passed and not r.promoted and r.champion == "1"
    assert aliases(name) == before == {"champion": "1"}
    mv = mlflow.MlflowClient().get_model_version(name, "2")
    assert mv.tags["gate.passed"] == "false"
    assert "40.0%" in mv.tags["gate.reasons"] and "25.0%" in mv.description


def test_dry_run_changes_nothing(tiny: dict[str, Path], name: str, store: str) -> None:
    log_steer_model(tiny["v1"], name)
    log_steer_model(tiny["v2"], name)
    promote(name, 1, PASS)
    client = mlflow.MlflowClient()
    before = client.get_model_version(name, "2")
    r = promote(name, 2, PASS, dry_run=True)
    assert r.dry_run and r.passed and not r.promoted and (r.champion, r.previous) == ("2", "1")  # would-be
    after = client.get_model_version(name, "2")
    assert aliases(name) == {"champion": "1"}
    assert after.tags == before.tags and after.description == before.description
    assert not promote(name, 2, FAIL, dry_run=True).promoted
    assert "gate.passed" not in client.get_model_version(name, "2").tags


def test_error_before_alias_write_leaves_registry(tiny: dict[str, Path], name: str, store: str) -> None:
    log_steer_model(tiny["v1"], name)
    promote(name, 1, PASS)
    with pytest.raises(mlflow.exceptions.MlflowException):
        promote(name, 7, PASS)  # no such version
    assert aliases(name) == {"champion": "1"}


def test_foreign_steer_is_refused_at_load(tiny: dict[str, Path], name: str, store: str) -> None:
    mv = log_steer_model(tiny["foreign"], name)  # the log-time smoke test only warns; loading must refuse
    with pytest.raises(BaseModelMismatch, match="fingerprint"):
        mlflow.pyfunc.load_model(f"models:/{name}/{mv.version}")


def test_download_steer(tiny: dict[str, Path], name: str, store: str, tmp_path: Path) -> None:
    log_steer_model(tiny["v1"], name)
    promote(name, 1, PASS)
    path = download_steer(name, "champion", tmp_path / "dl")
    assert path.read_bytes() == tiny["v1"].read_bytes()
    assert download_steer(name, "1", tmp_path / "dl2").read_bytes() == tiny["v1"].read_bytes()


# ------------------------------------------------------------------------------------------------ real servers
@pytest.fixture
def tracking_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "srv")]
    (tmp_path / "srv-tmp").mkdir()
    proc = start_server(cmd, log, subprocess_env(tmp_path / "srv-tmp"), tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, log, 90)
        use_uri(url, monkeypatch)
        mlflow.set_experiment("steers")
        yield url
    finally:
        forget_tracking()
        stop_server(proc)


def test_tracking_server_register_and_load(
    tiny: dict[str, Path], name: str, tracking_server: str, tmp_path: Path
) -> None:
    mv = log_steer_model(tiny["v1"], name, default_strength=1.0)
    assert get_champion(name) is None
    assert promote(name, mv.version, PASS).promoted
    assert str(get_champion(name).version) == str(mv.version)
    (tmp_path / "dl").mkdir()  # MLflow requires dst_path to exist
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion", dst_path=str(tmp_path / "dl"))
    out = model.predict(pd.DataFrame({"prompt": ["Hello"]}), params={"max_new_tokens": 4})
    assert out["strength"].tolist() == [1.0] and out["generation"].iloc[0]
    assert (tmp_path / "srv").is_dir() and any((tmp_path / "srv").rglob("sentiment.safetensors"))


def test_models_serve_answers_invocations(tiny: dict[str, Path], name: str, store: str, tmp_path: Path) -> None:
    log_steer_model(tiny["v1"], name, default_strength=2.0)
    promote(name, 1, PASS)
    port = free_port()
    log = tmp_path / "serve.log"
    (tmp_path / "serve-tmp").mkdir()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    proc = start_server(cmd, log, subprocess_env(tmp_path / "serve-tmp", MLFLOW_TRACKING_URI=store), tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, log, 120)
        body = {"dataframe_split": {"columns": ["prompt", "strength"], "data": [["The food was", -4.0], ["Hi", None]]},
                "params": {"max_new_tokens": 5, "num_samples": 2}}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            preds = json.loads(r.read())["predictions"]
    finally:
        stop_server(proc)
    assert [p["strength"] for p in preds] == [-4.0, -4.0, 2.0, 2.0]
    assert [p["prompt"] for p in preds] == ["The food was"] * 2 + ["Hi"] * 2
    assert all(isinstance(p["generation"], str) and p["generation"] for p in preds)


def test_exception_between_register_and_alias_leaves_aliases_and_a_rerun_converges(
        tiny: dict[str, Path], name: str, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the champion alias write fails after `previous` moved; the registry is put back as it was,
    and carrying out the same decision again moves both aliases."""
    from mlflow.tracking import MlflowClient

    log_steer_model(tiny["v1"], name)
    log_steer_model(tiny["v2"], name)
    promote(name, 1, PASS)
    real = MlflowClient.set_registered_model_alias

    def failing(self, model, alias, version):
        if alias == "champion":
            raise mlflow.exceptions.MlflowException("injected: tracking server went away")
        return real(self, model, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", failing)
    with pytest.raises(mlflow.exceptions.MlflowException, match="injected"):
        promote(name, 2, PASS)
    assert aliases(name) == {"champion": "1"}  # `previous` was put back (it did not exist before)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    assert promote(name, 2, PASS).promoted and aliases(name) == {"champion": "2", "previous": "1"}
    assert len(MlflowClient().search_model_versions(f"name='{name}'")) == 2  # no duplicate


def test_an_artifact_that_no_longer_matches_its_sha256_tag_is_never_made_champion(
        tiny: dict[str, Path], name: str, store: str) -> None:
    from urllib.parse import urlparse

    mv = log_steer_model(tiny["v1"], name)
    assert mv.tags["steer.sha256"]  # set at creation, with the version
    location = mlflow.get_logged_model(mv.source.removeprefix("models:/")).artifact_location
    (stored,) = Path(urlparse(location).path).glob("artifacts/*.safetensors")
    stored.write_bytes(stored.read_bytes()[:-8] + b"tampered")
    with pytest.raises(RuntimeError, match="champion alias stays"):
        promote(name, mv.version, PASS)
    assert get_champion(name) is None
