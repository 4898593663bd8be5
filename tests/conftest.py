"""Shared fixtures: the real packaged default model (loaded once) and tiny random models for the math."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("STEER_CACHE_DIR", str(ROOT / ".cache" / "steer"))
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (pyproject's addopts run one worker per core) each worker is one core: torch in it uses
    one thread, so two workers do not fight over the same cores (the subprocess runs pin theirs in params)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def default_dir() -> Path:
    """The converted default model directory (GGUF → safetensors, cached across runs)."""
    from steer_core.model.lm import default_gguf_path, gguf_cache_path

    return gguf_cache_path(default_gguf_path())


@pytest.fixture(scope="session")
def default_lm():
    from steer_core.model.lm import load_lm

    return load_lm("default", device="cpu")


def build_tiny_model_dir(path: Path, tokenizer_dir: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A tiny random Llama with the default tokenizer, saved as a normal HF model directory."""
    from transformers import AutoTokenizer

    from builders import tiny_llama

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = tiny_llama(len(tok), hidden=hidden, seed=seed, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, default_dir) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", default_dir)


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    from steer_core.model.lm import load_lm

    return load_lm(str(tiny_dir), device="cpu")


@pytest.fixture(scope="module")
def harness():
    """One temporary Prefect API server for the module: flows run in this process report to it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session", autouse=True)
def _stop_this_processs_prefect_server():
    """Stop the temporary Prefect server a test started in this process (flows.executors.share_prefect_api) while
    pytest's output streams are still open; at interpreter exit Prefect would log its stop to a closed stream."""
    yield
    import sys

    if "prefect.server.api.server" in sys.modules:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        if server.running:
            server.stop()
