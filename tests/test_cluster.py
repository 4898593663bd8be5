"""A run that spans machines, played on one: an external Dask cluster as a team runs one.

``steer run`` with the local executor; then a ``dask scheduler`` and two ``dask worker`` processes are started from a
second copy of the project in another folder (``projects.second_machine``: its own code, working directory, model
cache and tool state; nothing of the first copy's). A LocalCluster's shards give the local bytes too
(tests/test_dask.py). One worker declares ``GPU=1``. ``steer run`` in the first copy joins them through
``runtime.executor.address``, with ``runtime.train_on: {resources: {GPU: 1}}``: the fit runs on the GPU worker (a CPU
here) and the shards on both, and the steer, metrics, samples and plots are the bytes of the local executor's run
(and, read from ``steer run --json``, the registered v1: nothing new to judge).
Then a worker is killed mid-evaluation: its shard runs again on the other, and the results are still equal.

The module's tests share the cluster; the kill test comes last (it leaves one worker).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from projects import machine_env, make_project, second_machine
from servers import free_port, start_server, stop_server
from tiny_pipeline import tiny_params

pytestmark = pytest.mark.slow  # a scheduler and two workers as subprocesses

STEER_BIN = Path(sys.executable).with_name("steer")
NAME = "sentiment"
#: DVC-cached outputs of the train and evaluate stages, and the evaluate stage's uncached ones
TRAINED = ["artifacts/steers/sentiment.safetensors"]
EVALUATED = ["metrics/sentiment.json", "reports/sentiment.samples.jsonl", "plots/sentiment/control.csv",
             "plots/sentiment/fluency.csv"]
#: Dask's housekeeping slowed down in the workers, as flows.executors.QUIET_CLUSTER does for a LocalCluster (a team
#: puts the same in its workers' Dask config)
QUIET = {"DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s", "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
         "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "2s"}


@dataclass
class Cluster:
    address: str
    machine: Path
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def client(self):
        from distributed import Client

        return Client(self.address, timeout="30s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A scheduler and two single-thread workers (``cpu``; ``gpu``, which declares GPU=1), each a process started in
    the second copy's folder with that copy's environment."""
    base = tmp_path_factory.mktemp("cluster")
    machine = second_machine(base / "machine-b")
    logs = base / "logs"
    logs.mkdir()
    port = free_port()
    c = Cluster(f"tcp://127.0.0.1:{port}", machine, logs)
    env = machine_env(machine, **QUIET)
    dask = [sys.executable, "-m", "dask"]
    try:
        c.procs["scheduler"] = start_server([*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                             "--no-dashboard"], logs / "scheduler.log", env, machine)
        for name, extra in (("cpu", []), ("gpu", ["--resources", "GPU=1"])):
            c.procs[name] = start_server([*dask, "worker", c.address, "--name", name, "--nthreads", "1",
                                          "--nworkers", "1", "--no-dashboard", *extra], logs / f"{name}.log", env,
                                         machine)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with c.client() as client:
                    if len(client.scheduler_info(n_workers=-1)["workers"]) == 2:
                        break
            except OSError:
                pass
            time.sleep(1)
        else:
            pytest.fail("the workers did not join: " + (logs / "cpu.log").read_text()[-2000:])
        yield c
    finally:
        for proc in c.procs.values():
            stop_server(proc)


def steer_run(root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    from test_pipeline import cli_env

    return subprocess.run([str(STEER_BIN), "run", "--params", str(root / "params.yaml"), *args], cwd=root,
                          env=cli_env(root), capture_output=True, text=True, timeout=timeout)


def test_steer_run_on_an_external_cluster_gives_the_local_bytes_and_fits_on_the_resource_worker(
        cluster: Cluster, tmp_path: Path) -> None:
    params = tiny_params(NAME, tracking={"uri": "sqlite:///mlflow.db", "experiment": "cluster"})
    params["steers"][NAME]["prompts"][0]["count"] = 8  # two shards of 4 prompts
    root = make_project(tmp_path / "machine-a", params)
    local = steer_run(root, "--json")
    assert local.returncode == 0, local.stderr[-4000:]
    before = {p: (root / p).read_bytes() for p in TRAINED + EVALUATED}

    # the same project, now on the cluster; the train and evaluate outputs gone from the workspace, the DVC cache
    # and the remote, so DVC has nothing to pull and runs both stages again (prepare stays up to date)
    params["runtime"].update(executor={"kind": "dask", "address": cluster.address},
                             train_on={"resources": {"GPU": 1}})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    for stage in (f"train@{NAME}", f"evaluate@{NAME}"):
        for out in lock[stage]["outs"]:
            (root / out["path"]).unlink()
            md5 = out["md5"]
            (root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).unlink(missing_ok=True)
    shutil.rmtree(root / "dvc-storage")
    t0 = time.perf_counter()
    proc = steer_run(root, "--json")
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-4000:]
    print(f"steer run on the external cluster (train + evaluate): {time.perf_counter() - t0:.0f} s; "
          + "; ".join(re.findall(r"((?:train|evaluate)@\w+: (?:done in|fitted on) [^\n]*)", said)))

    # `steer run --json` in a new process: one row a steer, the table's columns and the baseline comparison; the
    # steer it rebuilt is the registered v1 byte for byte, so nothing new is judged or registered
    (row,) = json.loads(proc.stdout)
    assert (row["steer"], row["status"], row["version"]) == (NAME, "unchanged", "1"), row
    assert {"s", "gain", "judge", "fluency", "distinct-2", "why", "control", "vs_baseline"} <= set(row)
    actadd = [line for line in row["vs_baseline"] if line.startswith("the ActAdd baseline at its budget strength")]
    assert len(actadd) == 1 and "steer minus baseline" in actadd[0], row["vs_baseline"]

    assert f"joining the cluster at {cluster.address}" in said, said[-4000:]
    assert f"prepare@{NAME}: up to date" in said and f"train@{NAME}: running" in said, said[-4000:]
    assert f"train@{NAME}: fitting on a Dask worker with GPU=1 (gpu)" in said, said[-4000:]
    card = json.loads((root / "artifacts/steers/sentiment.json").read_text())
    assert card["run"]["worker"].startswith("gpu (pid "), card["run"]
    shard_workers = set(re.findall(r"shard \d+ of \d+ on (\w+) \(pid", said))
    assert shard_workers == {"cpu", "gpu"}, said[-4000:]  # the two shards on the two workers
    for p in TRAINED + EVALUATED:
        assert (root / p).read_bytes() == before[p], p  # the local executor's bytes

    # the workers ran the second copy's code, with its model cache, in its folder
    with cluster.client() as client:
        seen = client.run(lambda: (__import__("flows.executors").executors.__file__, os.getcwd(),
                                   os.environ["STEER_CACHE_DIR"]))
    for where in seen.values():
        assert all(str(x).startswith(str(cluster.machine)) for x in where), seen


def test_a_cluster_without_the_resource_is_refused_before_any_work(cluster: Cluster, tmp_path: Path) -> None:
    params = tiny_params(NAME)
    params["runtime"].update(executor={"kind": "dask", "address": cluster.address}, train_on={"resources": {"TPU": 1}})
    root = make_project(tmp_path / "project", params, with_git=False)
    proc = steer_run(root, "--check", timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"no worker of the Dask cluster at {cluster.address} declares resources TPU=1" in lines[0], lines


def test_a_worker_killed_mid_evaluation_leaves_its_shards_to_the_other_and_equal_results(
        cluster: Cluster, default_lm, harness) -> None:
    """The ``cpu`` worker is killed (its whole process group, SIGKILL) while it samples a shard: Dask gives that
    shard to ``gpu``, and the document and samples are the local executor's."""
    import torch

    from flows.executors import dask_runner
    from steer_core.config import EvalConfig, Params
    from steer_core.evaluate import driver
    from steer_core.evaluate.protocol import System
    from builders import random_steer

    prompts = [{"set": "neutral", "prompt": p} for p in (
        "The weather today", "I think that the", "Our flight was", "The news said", "My friend told me",
        "Yesterday the market", "A new study shows", "The airline staff")]
    cfg = EvalConfig(control="sentiment", scorer="vader", strengths=[-2.0, 0.0, 2.0], samples=2, max_new_tokens=24,
                     bootstrap=50, search_steps=0, activation_addition=False)
    steer = random_steer(default_lm, names=(NAME, "dummy"), eps=1e-3, scale=5.0, seed=1)
    systems = [System("candidate", cfg.strengths, steer=steer)]
    params = Params.model_validate({"runtime": {"device": "cpu", "executor": {"kind": "dask",
                                                                                "address": cluster.address}}})
    torch.set_num_threads(1)
    driver.use_runner(None)
    local_doc, local_samples = driver.evaluate(default_lm, prompts, systems, cfg, seed=3, per_shard=4)

    logs: list[str] = []
    killed: dict = {}
    done = threading.Event()

    def kill_cpu_mid_shard() -> None:
        """Wait until the cpu worker is a second into a shard, then kill it."""
        with cluster.client() as client:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
                if any(keys and names.get(a) == "cpu" for a, keys in client.processing().items()):
                    break
                time.sleep(0.2)
            else:
                return
        time.sleep(1.5)
        killed["mid_evaluation"] = not done.is_set()
        os.killpg(cluster.procs["cpu"].pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_cpu_mid_shard, daemon=True)
    killer.start()
    driver.use_runner(dask_runner(params, cluster.address))
    try:
        doc, samples = driver.evaluate(default_lm, prompts, systems, cfg, seed=3, per_shard=4, log=logs.append)
    finally:
        done.set()
        driver.use_runner(None)
    killer.join(10)
    assert killed.get("mid_evaluation") is True, (killed, logs)
    assert cluster.procs["cpu"].poll() is not None
    shard_lines = [m for m in logs if m.startswith("shard ")]
    assert len(shard_lines) == 2 and all(" on gpu (pid" in m for m in shard_lines), logs  # both ended on gpu
    assert json.dumps(doc, default=float) == json.dumps(local_doc, default=float)
    assert (json.dumps([s.__dict__ for s in samples], default=float)  # NaN (no cost at strength 0) ≠ NaN in ==
            == json.dumps([s.__dict__ for s in local_samples], default=float))
