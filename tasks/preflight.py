"""Validate before work: everything ``steer run`` can know up front is checked before a model is loaded, a sample
drawn, or a registry or DVC file written. Each problem is one ``ValueError`` line naming the bad value and what was
expected (the CLI prints it and exits 2).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from steer_core.config import Params


def check_run(params: Params, root: Path, names: list[str]) -> None:
    """Raise ``ValueError`` on the first thing that would make this run fail later."""
    root = Path(root).resolve()
    unknown = [n for n in names if n not in params.steers]
    if unknown:
        raise ValueError(f"--steer {unknown[0]!r} is not a steer of params.yaml (configured: "
                         f"{', '.join(sorted(params.steers)) or 'none'})")
    if not names:
        raise ValueError("params.yaml configures no steers: add one under `steers:`")
    if not os.access(root, os.W_OK):
        raise ValueError(f"project directory {root} is not writable: a run writes data, steers, dvc.lock and the "
                         f"registry there")
    check_model(params.model, root)
    for name in names:
        check_steer(params, name, root)
    check_tracking(params.tracking.uri, root)
    check_remote(params.dvc.remote, root)


def check_model(spec: str, root: Path, field: str = "model") -> None:
    from steer_core.model.lm import ModelLoadError, _resolve_spec, hub_reachable, _in_hub_cache

    try:
        kind, _, _ = _resolve_spec(spec if not spec.startswith(("./", "../")) else str(root / spec))
    except ModelLoadError as exc:
        raise ValueError(f"{field} {spec!r}: {exc}") from None
    if kind == "hub" and not _in_hub_cache(spec) and not hub_reachable():
        raise ValueError(f"{field} {spec!r}: the Hugging Face hub is not reachable and the model is not in the local "
                         f"cache; use 'default' (the packaged SmolLM2) or a local model directory / .gguf file")


def check_steer(params: Params, name: str, root: Path) -> None:
    from steer_core.scorers import ScorerUnavailable, get_scorer

    spec = params.steers[name]
    source = spec.data.source
    for path in _local_paths(source):
        if not (root / path).exists() and not Path(path).exists():
            raise ValueError(f"steers.{name}.data.source: file {path} not found")
    for ps in spec.prompts:
        if ps.kind == "file" and (not ps.path or not ((root / ps.path).exists() or Path(ps.path).exists())):
            raise ValueError(f"steers.{name}.prompts[{ps.name}].path: file {ps.path} not found")
    cfg = spec.evaluate
    if cfg.judge != "base":
        check_model(cfg.judge, root, f"steers.{name}.evaluate.judge")
    try:
        scorer = get_scorer(cfg.scorer)
        if hasattr(scorer, "load"):
            scorer.load()  # a model-based scorer that cannot load (offline detoxify) fails now, not after training
    except ScorerUnavailable as exc:
        raise ValueError(f"steers.{name}.evaluate.scorer {cfg.scorer!r}: {str(exc).splitlines()[0]}") from None
    if scorer.kind != cfg.control:
        raise ValueError(f"steers.{name}.evaluate.scorer {cfg.scorer!r} measures {scorer.kind}, but the control is "
                         f"{cfg.control!r}")
    positive = [s for s in cfg.strengths if s > 0]
    if cfg.control == "sentiment" and not any(-s in cfg.strengths for s in positive):
        raise ValueError(f"steers.{name}.evaluate.strengths {cfg.strengths}: sentiment is judged by the swing "
                         f"between +s and -s, so give at least one pair such as [-2, 2]")
    if cfg.control == "toxicity" and not positive:
        raise ValueError(f"steers.{name}.evaluate.strengths {cfg.strengths}: give at least one positive strength")


def _local_paths(source) -> list[str]:
    kind = getattr(source, "kind", None)
    if kind == "file":
        return [source.path]
    if kind == "classifier":
        return _local_paths(source.texts)
    if kind == "generated":
        return _local_paths(source.prompts)
    return []


def check_tracking(uri: str, root: Path) -> None:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = env or uri
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
                ok = resp.status == 200
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ValueError(f"tracking server {uri} is not reachable ({exc.__class__.__name__}): start it, or set "
                             f"tracking.uri / MLFLOW_TRACKING_URI") from None
        if not ok:
            raise ValueError(f"tracking server {uri} answered /health with HTTP {resp.status}")
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        path = path if path.is_absolute() else root / path
        target = path if path.exists() else path.parent
        if not target.exists() or not os.access(target, os.W_OK):
            raise ValueError(f"tracking store {uri}: {target} is not writable")
        return
    if "://" in uri and not uri.startswith("file:"):
        raise ValueError(f"tracking.uri {uri!r}: expected sqlite:///PATH, http(s)://HOST:PORT or a local folder")


def check_remote(remote: str | None, root: Path) -> None:
    """The DVC remote exists in the project's config and, when it is a local folder, can be written."""
    if not (root / ".dvc").is_dir():
        if remote:
            raise ValueError(f"dvc.remote {remote!r}: this project has no DVC config yet; drop dvc.remote to use the "
                             f"default local remote, or `dvc init` and `dvc remote add {remote} URL`")
        return
    from dvc.config import Config, ConfigError

    try:
        conf = Config(dvc_dir=str(root / ".dvc"))
    except ConfigError as exc:
        raise ValueError(f"{root / '.dvc'}: DVC config is invalid: {str(exc).splitlines()[0]}") from None
    remotes = dict(conf.get("remote", {}))
    name = remote or conf["core"].get("remote")
    if name is None:
        return  # the run creates the default local remote
    if name not in remotes:
        raise ValueError(f"dvc.remote {name!r} is not a DVC remote of this project (configured: "
                         f"{', '.join(sorted(remotes)) or 'none'}); add it with `dvc remote add {name} URL`")
    url = str(remotes[name].get("url", ""))
    if "://" in url:
        return  # cloud remotes are checked by the push itself, with retries
    path = Path(url) if os.path.isabs(url) else (root / url).resolve()  # DVC hands back resolved paths
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK):
        raise ValueError(f"DVC remote {name!r} ({path}) is not writable")
