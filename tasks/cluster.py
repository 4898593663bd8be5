"""An external Dask cluster (``runtime.executor.address``), checked before a run does any work.

A run that joins a cluster fails early and in one line when the cluster cannot do the run: the scheduler is gone, it
has no workers, no worker declares what ``runtime.train_on`` asks for (the fit would wait forever), or its workers
are on other machines while this run's Prefect API is reachable only from this one (each shard's and fit's task run
reports to that API from the worker that runs it; ``steer run``'s own temporary API listens on 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from steer_core.config import RuntimeConfig


def check_cluster(runtime: RuntimeConfig) -> None:
    """Raise a one-line ``ValueError`` unless the cluster at ``runtime.executor.address`` (if any) can run this run."""
    cfg = runtime.executor
    if cfg.kind != "dask" or not cfg.address:
        return
    where = f"Dask scheduler {cfg.address} (runtime.executor.address)"
    try:
        parts = urlsplit(cfg.address)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port or not parts.scheme:
        raise ValueError(f"runtime.executor.address {cfg.address!r}: expected SCHEME://HOST:PORT, e.g. "
                         f"tcp://scheduler:8786")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ValueError(f"{where} is not reachable ({exc.__class__.__name__}): start it (dask scheduler), or fix "
                         f"the address") from None
    workers = cluster_workers(cfg.address)
    if not workers:
        raise ValueError(f"{where} has no workers: start them on each node (dask worker {cfg.address} --nthreads 1)")
    if runtime.train_on is not None and not declaring(workers, runtime.train_on.resources):
        wanted = resources_text(runtime.train_on.resources)
        raise ValueError(f"no worker of the Dask cluster at {cfg.address} declares resources {wanted} "
                         f"(runtime.train_on): start one with dask worker {cfg.address} --resources \"{wanted}\"")
    api = prefect_api_url()
    remote = sorted({w.get("host", "") for w in workers.values()} - local_hosts())
    if remote and not reachable_from_elsewhere(api):
        raise ValueError(f"the Dask workers on {', '.join(remote)} report each task to this run's Prefect API, but "
                         f"that is {api or 'a temporary server on 127.0.0.1 (PREFECT_API_URL is unset)'}, which only "
                         f"this machine reaches: start a Prefect server they can reach (prefect server start --host "
                         f"0.0.0.0) and set PREFECT_API_URL=http://{socket.gethostname()}:4200/api")


def cluster_workers(address: str) -> dict[str, dict]:
    """The scheduler's record of every worker (its ``name``, ``host``, ``resources``, ...), by worker address."""
    from distributed import Client

    try:
        with Client(address, timeout="10s") as client:
            return dict(client.scheduler_info(n_workers=-1)["workers"])
    except (OSError, TimeoutError) as exc:
        raise ValueError(f"Dask scheduler {address} (runtime.executor.address) does not answer as a Dask scheduler "
                         f"({exc.__class__.__name__})") from None


def declaring(workers: dict[str, dict], resources: dict[str, float]) -> list[str]:
    """The names of the workers that declare at least ``resources``."""
    return [str(w.get("name") or addr) for addr, w in workers.items()
            if all((w.get("resources") or {}).get(k, 0) >= v for k, v in resources.items())]


def resources_text(resources: dict[str, float]) -> str:
    """``{"GPU": 1.0}`` → ``GPU=1``, as ``dask worker --resources`` takes it."""
    return ",".join(f"{k}={v:g}" for k, v in resources.items())


def local_hosts() -> set[str]:
    """Addresses that name this machine: loopback, its hostname and the addresses it resolves to."""
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname()}
    try:
        names |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return names


def reachable_from_elsewhere(api: str | None) -> bool:
    """Whether the Prefect API at ``api`` can be reached from another machine: a server whose URL does not name a
    loopback address (None, Prefect's temporary server, listens on 127.0.0.1 only)."""
    if not api:
        return False
    host = urlsplit(api).hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: the team's server


def prefect_api_url() -> str | None:
    """PREFECT_API_URL from the environment, else from the Prefect profile (read only when a profile file exists:
    importing Prefect creates its home folder)."""
    url = os.environ.get("PREFECT_API_URL")
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    if not url and profiles.is_file():
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
    return url or None
