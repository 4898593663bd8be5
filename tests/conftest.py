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


#: The test files that take longest on 2 cores, longest first (measured with --durations). pytest-xdist hands whole
#: files to its workers in collection order (pyproject's addopts: --dist loadfile --no-loadscope-reorder), so these
#: start first and the many short files fill in beside them: no long file starts last while the other worker idles.
LONGEST_FIRST = ("test_pipeline.py", "test_lineage.py", "test_faults.py", "test_cluster.py", "test_playground.py",
                 "test_evaluate.py", "test_pool.py", "test_algebra_behaviour.py", "test_dvc.py", "test_dask.py",
                 "test_deploy.py", "test_registry.py", "test_cli.py", "test_sampling.py", "test_train.py")
#: Files that go to one worker with another, because they share a session's work: test_lineage starts from
#: test_pipeline's first run (tests/first_run.py), and test_faults compares with it, so it runs once a suite
SHARED_WORKER = {"tests/test_lineage.py": "tests/test_pipeline.py", "tests/test_faults.py": "tests/test_pipeline.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest files first (``LONGEST_FIRST``), the rest after them in their usual order; tests keep their order
    within a file (a module's fixtures and its last-runs-last tests rely on it)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.hookimpl(optionalhook=True)  # xdist's hook: absent under -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's per-file scheduling, with the files of ``SHARED_WORKER`` handed out as one unit (to one worker).
    (``--dist loadgroup`` would do it by marks, but pytest 9 ignores the node ids xdist 3.8 rewrites for it.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedWorkerScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return SHARED_WORKER.get(scope, scope)

    return SharedWorkerScheduling(config, log)


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


@pytest.fixture(scope="session", autouse=True)
def _tiny_pipeline_model() -> Path:
    """The pipeline tests' base model (tests/tiny_pipeline.py), on disk before any test names it in a params file."""
    from tiny_pipeline import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_dir(_tiny_pipeline_model) -> Path:
    """A tiny random Llama (width 32, 2 layers) with the default tokenizer: the pipeline tests' model, read only."""
    return _tiny_pipeline_model


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
