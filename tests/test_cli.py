"""The `steer` command on bad input: one line naming the problem, a non-zero exit, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from steer_core.model.steer import Steer

pytestmark = pytest.mark.slow  # every case runs `python -m flows.cli` in a subprocess (imports the whole app)


def steer_cmd(*args: str, env_cache: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_cache is not None:
        env["STEER_CACHE_DIR"] = str(env_cache)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "content, needle",
    [
        ([{"txt": "hello there", "label": "positive"}], "text"),
        ([{"text": "good day to you", "label": "positive"}, {"text": "great job", "label": "positive"}], "one label"),
        ([], "no rows"),
    ],
    ids=["missing-column", "one-label", "empty-file"],
)
def test_train_rejects_bad_data(tmp_path, tiny_dir, content, needle):
    data = _write(tmp_path / "d.jsonl", content)
    out = tmp_path / "s.safetensors"
    proc = steer_cmd("train", "--model", str(tiny_dir), "--data", str(data), "--out", str(out))
    assert_one_line_error(proc, needle)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_train_rejects_missing_file_and_unknown_labels(tmp_path, tiny_dir):
    out = tmp_path / "s.safetensors"
    assert_one_line_error(steer_cmd("train", "--data", str(tmp_path / "nope.csv"), "--out", str(out)), "nope.csv")
    data = _write(tmp_path / "d.jsonl", [{"text": "a fine day", "label": "happy"}, {"text": "bad day", "label": "sad"}])
    assert_one_line_error(steer_cmd("train", "--model", str(tiny_dir), "--data", str(data), "--out", str(out)),
                          "--labels")
    assert not out.exists()


def test_generate_rejects_bad_strength_and_bad_steer_files(tmp_path, tiny_dir, tiny_lm):
    st = Steer(["style", "dummy"], tiny_lm.dim, None, 1e-3, {"base_fingerprint": tiny_lm.fingerprint})
    path = st.save(tmp_path / "s.safetensors")
    common = ["generate", "--model", str(tiny_dir), "--prompt", "Hello", "--max-new-tokens", "3"]
    assert_one_line_error(steer_cmd(*common, "--steer", str(path), "--strength", "strong"), "strong")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:100])
    assert_one_line_error(steer_cmd(*common, "--steer", str(cut)), "cut.safetensors")
    fake = tmp_path / "fake.safetensors"
    fake.write_text("not a steer")
    assert_one_line_error(steer_cmd(*common, "--steer", str(fake)), "fake.safetensors")


def test_generate_refuses_a_steer_for_another_model(tmp_path, tiny_dir):
    st = Steer(["style"], 32, None, 1e-3, {"base_fingerprint": "f" * 64, "base_model": "gpt2"})
    path = st.save(tmp_path / "s.safetensors")
    proc = steer_cmd("generate", "--model", str(tiny_dir), "--prompt", "Hi", "--steer", str(path))
    assert_one_line_error(proc, "steer transfer")


def test_train_then_generate_json(tmp_path, tiny_dir):
    rows = [{"text": f"what a wonderful lovely day number {i}", "label": "positive"} for i in range(8)]
    rows += [{"text": f"what an awful terrible day number {i}", "label": "negative"} for i in range(8)]
    data = _write(tmp_path / "d.jsonl", rows)
    out = tmp_path / "s.safetensors"
    proc = steer_cmd("train", "--model", str(tiny_dir), "--data", str(data), "--out", str(out), "--epochs", "1",
                     "--quiet", "--val-fraction", "0.2")
    assert proc.returncode == 0, proc.stderr
    assert Steer.load(out).metadata["data_hash"]
    gen = steer_cmd("generate", "--model", str(tiny_dir), "--prompt", "Today", "--steer", str(out),
                    "--strength", "-2", "--num-samples", "2", "--max-new-tokens", "4", "--json")
    assert gen.returncode == 0, gen.stderr
    doc = json.loads(gen.stdout)
    assert doc["prompt"] == "Today" and doc["strength"]["style"] == -2.0 and len(doc["generations"]) == 2


def test_unreachable_hub_model_fails_fast_with_advice(tmp_path):
    import time

    t0 = time.time()
    proc = steer_cmd("generate", "--model", "some-org/some-model-that-is-not-cached", "--prompt", "Hi")
    assert time.time() - t0 < 60
    assert_one_line_error(proc, "default")


def test_deploy_rejects_a_bad_cron_and_a_missing_prefect_server_before_serving(tmp_path, monkeypatch):
    """Without a Prefect server (PREFECT_API_URL) a deployment would live on a temporary server that dies with the
    command (and serve forever meanwhile): refused first, before Prefect is imported; a bad cron is refused too."""
    from flows.deployments import check_cron

    root = Path(__file__).resolve().parents[1]
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    proc = steer_cmd("deploy", "--cron", "every tuesday", "--params", str(root / "params.yaml"))
    assert_one_line_error(proc, "needs a Prefect server", "PREFECT_API_URL")
    with pytest.raises(ValueError, match="--cron 'every tuesday' is not a valid cron expression"):
        check_cron("every tuesday")
