"""``steer playground``: a local page to read what registered steers write, side by side, before trusting one.

Why a page: a reviewer decides on a steer by reading its text, and the fair reading puts the base model, the
production ``champion`` and the newest candidate on the reviewer's own prompts **with the same random numbers**,
so that the columns differ only by the steer. ``steer_core.model.generate.generate`` already draws the same numbers
for a (prompt, sample) row at every setting of a sweep, so a request is one ``generate`` call whose settings are the
columns (the base model's: all zeros); at strength 0 every column is the base model's text, to the token.

This module only wires: generation, composition (``steer_core.tools.algebra.compose``, as
``steer generate --strength a=…,b=…``), highlight and explain (``steer_core.tools.explain``) are the library's, and
every registry read is ``tasks.mlflow_io``'s. It turns the page's inputs into those calls, and every failure into
one line on the page (never a traceback). :class:`Playground` holds the logic and imports no web library, so it is
tested directly; :func:`build_page` lays it out with Gradio, whose queue runs one request at a time, so requests
from two tabs wait for each other instead of sharing the model.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from steer_core.config import Params
from steer_core.errors import USER_ERRORS, first_line
from steer_core.model.lm import LoadedLM, shared_lm
from steer_core.model.steer import Steer, parse_strengths, primary_name

log = logging.getLogger(__name__)

STRENGTH_LIMIT = 12.0  # the sliders' ± range: past the largest strengths the evaluations probe (±8)
MAX_SAMPLES = 8
MAX_NEW_TOKENS = 100
MAX_PROMPT_CHARS = 2000
COLUMNS = ("A", "B")  # the steered columns; the base model's column is always shown beside them
SHADES = {"++ style": "#2e8b57", "+ style": "#a8dcb9", "− style": "#f2b8b5", "−− style": "#d9534f"}  # green: +s


class PageError(ValueError):
    """Bad input from the page: its message is what the page shows."""


@dataclass
class Picked:
    """One steer the page can use: a registered version (``version`` set) or a local ``.safetensors`` file."""

    ref: str  # as picked: sentiment@champion, sentiment@2, or a path
    label: str  # for people: "sentiment v1 (champion)"
    steer: Steer
    version: Any = None  # mlflow ModelVersion
    recommended: float | None = None  # + side (tag steer.default_strength)
    strength_minus: float | None = None  # − side of a two-sided steer (tag steer.strength_minus)
    key: tuple = ()  # what it is cached under: a version and its sha256, or a file and its mtime


@dataclass
class Column:
    """What one steered column generates with: a steer (composed when two are picked) and its value vector."""

    title: str
    steer: Steer
    parts: list[tuple[Picked, float]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # each part's steer name in ``steer``

    @property
    def spec(self) -> str:
        """The strengths as ``steer generate --strength`` takes them."""
        return ",".join(f"{n}={s:g}" for n, (_, s) in zip(self.names, self.parts))

    @property
    def values(self) -> torch.Tensor:
        """The value vector, parsed from :attr:`spec` as ``steer generate`` parses it (dummy steers stay 0)."""
        return parse_strengths(self.spec, self.steer)


def batch_steer(columns: list[Column]) -> tuple[Steer | None, list[torch.Tensor] | None]:
    """One steer for every column of a request, and one value vector per column, the base model's (all zeros)
    first: the columns' steers composed (``steer compose``: each keeps its own names, prefixed by its column on a
    clash), each column's values set on its own names only. (None, None) when no column is steered."""
    from steer_core.tools.algebra import compose

    if not columns:
        return None, None
    steer = compose([(col.steer, 1.0) for col in columns], [col.title for col in columns])
    settings = [steer.values_tensor({})]
    for col, entry in zip(columns, steer.metadata["composition"]):
        own = dict(zip(col.steer.names, col.values.tolist()))
        settings.append(steer.values_tensor({new: own[old] for old, new in zip(entry["used"], entry["as"])}))
    return steer, settings


def _num(tag: str | None) -> float | None:
    try:
        return float(tag) if tag not in (None, "") else None
    except ValueError:
        return None


class Playground:
    """The page's logic: pick steers (registry or file), generate paired columns, explain them.

    One instance per process. The base model comes from :func:`shared_lm` (loaded once), registered steers are
    downloaded once per version, explanations are computed once per steer; ``lock`` serves one request at a time
    (two tabs are queued, never mixed), even outside Gradio's queue."""

    def __init__(self, params: Params, root: Path, threads: int | None = None) -> None:
        self.params, self.root = params, Path(root)
        # one torch thread by default: a request's passes are small (a few rows), and on a busy machine a thread team
        # that waits for its slowest member stalls; the highlights of several samples run side by side instead
        self.threads = threads or params.runtime.threads or 1
        self.workers = max(1, (os.cpu_count() or 1) // self.threads)
        self.lock = threading.Lock()
        self.tmp = Path(tempfile.mkdtemp(prefix="steer-playground-"))
        atexit.register(shutil.rmtree, self.tmp, True)
        self._steers: dict[tuple, Steer] = {}
        self._explained: dict[tuple, dict] = {}
        self._frontiers: dict[str, str | None] = {}
        self._uri: str | None = None
        self._lm: LoadedLM | None = None
        self.requests = 0  # generate requests served: the page's status names its own

    # ------------------------------------------------------------------ the model and the registry
    @property
    def lm(self) -> LoadedLM:
        """The base model of ``params.yaml`` (``model``), loaded on first use, once per process (torch's threads are
        set then, not from the column threads)."""
        if self._lm is None:
            self._lm = shared_lm(self.params.model, self.params.runtime.device, self.threads)
        return self._lm

    def registry(self) -> str:
        """Point MLflow at ``params.yaml``'s store and check that it answers; its URI. Raises a one-line error for a
        project with no registry yet, or a tracking server that is down (checked on every read: it may go away)."""
        from tasks import mlflow_io

        if self._uri is None:
            self._uri = mlflow_io.configure(self.params.tracking, self.root, create=False)
        mlflow_io.check_reachable(self._uri)
        return self._uri

    def choices(self) -> dict[str, list[tuple[str, str]]]:
        """Per registered model, the refs the page offers as (label, ref): its aliases, then its versions, newest
        first. Models configured in params.yaml come first."""
        from tasks import mlflow_io

        self.registry()
        names = mlflow_io.registered_names()
        names = [n for n in self.params.steers if n in names] + [n for n in names if n not in self.params.steers]
        out: dict[str, list[tuple[str, str]]] = {}
        for name in names:
            versions = [str(mv.version) for mv in mlflow_io.model_versions(name)]
            if not versions:
                continue
            aliases = mlflow_io.model_aliases(name)
            refs = [(f"{name}@{a} (v{v})", f"{name}@{a}") for a, v in sorted(aliases.items())]
            refs += [(f"{name}@{v}" + (" (newest)" if v == versions[-1] else ""), f"{name}@{v}")
                     for v in reversed(versions)]
            out[name] = refs
        return out

    @staticmethod
    def defaults(refs: list[tuple[str, str]]) -> tuple[str, str]:
        """The default pair for one model: its champion (else its newest version) beside its newest version."""
        values = [r for _, r in refs]
        name = values[0].partition("@")[0]
        newest = next(r for r in values if r.partition("@")[2].isdigit())
        return (f"{name}@champion" if f"{name}@champion" in values else newest), newest

    def pick(self, ref: str) -> Picked:
        """The steer behind ``ref``: ``NAME@ALIAS``, ``NAME@VERSION``, ``NAME@latest``, a bare ``NAME`` (its
        champion), or a path to a ``.safetensors`` file. Refused unless trained on this page's base model."""
        ref = (ref or "").strip()
        if not ref:
            raise PageError("no steer picked")
        if ref.endswith(".safetensors") or os.sep in ref:
            return self._pick_file(ref)
        name, _, which = ref.partition("@")
        if not name or "@" in which:
            raise PageError(f"{ref!r} is neither NAME@ALIAS, NAME@VERSION nor a path to a .safetensors file")
        return self._pick_version(name, which or "champion")

    def _pick_file(self, ref: str) -> Picked:
        path = Path(ref).expanduser()
        if not path.is_absolute() and not path.exists():
            path = self.root / path
        if not path.is_file():
            raise PageError(f"steer file not found: {ref}")
        stat = path.stat()
        key = ("file", str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        steer = self._steers.get(key) or self._load(path, key)
        return Picked(ref, path.name, steer, recommended=_num(steer.metadata.get("recommended_strength")), key=key)

    def _pick_version(self, name: str, which: str) -> Picked:
        from steer_core.files import file_sha256
        from tasks import mlflow_io

        self.registry()
        mv = mlflow_io.resolve(name, which)
        version = str(mv.version)
        key = ("version", name, version, mv.tags.get("steer.sha256", ""))
        steer = self._steers.get(key)
        if steer is None:
            path = mlflow_io.download_steer(name, version, dst_path=self.tmp / "versions" / name / version)
            want = mv.tags.get("steer.sha256", "")
            if want and file_sha256(path) != want:
                raise PageError(f"{name} version {version}: its steer file does not match its steer.sha256 tag")
            steer = self._load(path, key, source=f"{name} version {version}")
        marks = sorted(a for a, v in mlflow_io.model_aliases(name).items() if v == version)
        if version == str(mlflow_io.model_versions(name)[-1].version):
            marks.append("newest")
        label = f"{name} v{version}" + (f" ({', '.join(marks)})" if marks else "")
        return Picked(f"{name}@{which}", label, steer, mv, _num(mv.tags.get("steer.default_strength")),
                      _num(mv.tags.get("steer.strength_minus")), key)

    def _load(self, path: Path, key: tuple, source: str | None = None) -> Steer:
        """Load once and check that it fits the base model (fingerprint, hidden size): a steer of another base model
        is refused here, with the library's message."""
        steer = Steer.load(path)
        steer.check_base(self.lm.fingerprint, source=source or str(path))
        steer.check_model(self.lm, self.lm.name)
        self._steers[key] = steer
        return steer

    # ------------------------------------------------------------------ one column
    def column(self, title: str, parts: list[tuple[str, float]]) -> Column | None:
        """The column's steer from up to two (ref, strength) parts; None when no steer is picked.

        Two parts are composed as ``steer compose`` does (each part's primary steer keeps its own knob), and the
        strengths are parsed as ``steer generate --strength a=…,b=…`` parses them."""
        from steer_core.tools.algebra import compose

        parts = [(ref.strip(), s) for ref, s in parts if ref and ref.strip()]
        if not parts:
            return None
        for ref, s in parts:
            check_strength(s, f"column {title} ({ref})")
        picked = [(self.pick(ref), float(s)) for ref, s in parts]
        if len(picked) == 1:
            steer, names = picked[0][0].steer, [primary_name(picked[0][0].steer)]
        else:
            steer = compose([(p.steer, 1.0) for p, _ in picked], [p.ref for p, _ in picked])
            names = [e["as"][e["used"].index(primary_name(p.steer))]
                     for e, (p, _) in zip(steer.metadata["composition"], picked)]
        return Column(title, steer, picked, names)

    # ------------------------------------------------------------------ the page's two actions
    def generate(self, prompt: str, samples: float, max_new_tokens: float, seed: float | None, base_nucleus: bool,
                 columns: dict[str, list[tuple[str, float]]]) -> dict[str, Any]:
        """Sample ``samples`` continuations of ``prompt`` in the base column and each steered column, every column
        with the same random numbers per (prompt, sample) row.

        All columns are one ``generate`` call: their steers composed into one (:func:`batch_steer`), each column
        one setting of a sweep (the base model's is all zeros), so every model pass serves every column: on a CPU
        about a third of the time of one call per column (``bench/playground_speed.py``). The highlights then run
        side by side (:attr:`workers`).

        Returns ``{"base": [texts], "A": {...} | None, ..., "seconds", "request"}``: for a steered column its parts
        (label, strength), its ``--strength`` spec and each sample's highlight (:meth:`highlight`)."""
        from steer_core.model.generate import generate

        prompt = check_prompt(prompt)
        n = check_int(samples, "samples", 1, MAX_SAMPLES)
        tokens = check_int(max_new_tokens, "max new tokens", 1, MAX_NEW_TOKENS)
        seed_ = check_int(seed, "seed", 0, 2**31 - 1)
        with self.lock:
            cols = {t: self.column(t, parts) for t, parts in columns.items()}  # all checks before any sampling
            t0 = time.perf_counter()
            steered = {t: col for t, col in cols.items() if col is not None}
            steer, settings = batch_steer(list(steered.values()))
            gens = generate(self.lm, [prompt], steer, settings, num_samples=n, max_new_tokens=tokens, seed=seed_,
                            base_nucleus=bool(base_nucleus))
            texts = [[g.text for g in gens[i * n : (i + 1) * n]] for i in range(1 + len(steered))]  # base first
            out: dict[str, Any] = {"base": [prompt + t for t in texts[0]]} | {t: None for t in cols}
            with ThreadPoolExecutor(self.workers, thread_name_prefix="highlight") as pool:
                pending = {t: pool.map(self.highlight, [col] * n, [prompt] * n, own)  # all submitted at once
                           for (t, col), own in zip(steered.items(), texts[1:])}
                out |= {t: {"title": col.title, "parts": [(p.label, s) for p, s in col.parts], "spec": col.spec,
                            "samples": list(pending[t])} for t, col in steered.items()}
            out["seconds"] = time.perf_counter() - t0
            self.requests += 1
            out["request"] = self.requests
        return out

    def highlight(self, col: Column, prompt: str, continuation: str) -> dict:
        """``steer highlight`` of one sample: each token's evidence for the column's style, log p(token | +s) −
        log p(token | −s) at the strength s of the column's first steer set to non-zero (positive: the token carries
        that style). At strength 0 there is no style to look for."""
        from steer_core.tools.explain import token_evidence

        text = prompt + continuation
        name, strength = next(((n, s) for n, (_, s) in zip(col.names, col.parts) if s), (None, 0.0))
        if name is None or not continuation.strip():
            return {"text": text, "prompt_chars": len(prompt), "tokens": []}
        ev = token_evidence(self.lm, col.steer, text, strength, name)
        return {"text": text, "prompt_chars": len(prompt), "tokens": ev["tokens"]}

    def describe(self, refs: list[str]) -> tuple[str, str | None]:
        """The "why" of a column: per picked steer its version, aliases, gate verdict and recommended operating
        point (read from MLflow), and the tokens it promotes and demotes (``steer explain``); the first registered
        steer's frontier plot (a path, or None)."""
        blocks, plot = [], None
        with self.lock:
            for ref in [r for r in refs if r and r.strip()]:
                p = self.pick(ref)
                blocks.append(self._card(p))
                if plot is None and p.version is not None:
                    plot = self._frontier(p.version.run_id)
        return ("\n\n".join(blocks) or "_no steer picked_"), plot

    def _card(self, p: Picked) -> str:
        from tasks import mlflow_io

        lines = [f"**{p.label}**" + ("" if p.version else f" — local file `{p.ref}`")]
        if p.version is not None:
            tags = p.version.tags
            passed = tags.get("gate.passed")
            verdict = {"true": "**passed**", "false": "**refused**"}.get(passed, "not judged yet")
            lines.append(f"gate: {verdict}" + (f" — {tags['gate.reasons']}" if tags.get("gate.reasons") else ""))
            metrics = mlflow_io.run_metrics(p.version.run_id) if p.version.run_id else {}
            lines.append(metrics_line(metrics, p))
        elif p.recommended is not None:
            lines.append(f"recommended strength {p.recommended:+g} (from the file's metadata)")
        lines.append(tokens_line(self._explain(p)))
        return "  \n".join(lines)

    def _explain(self, p: Picked) -> dict:
        """``steer explain`` of a picked steer, once per steer (its vocabulary filter takes seconds)."""
        from steer_core.tools.explain import explain

        if p.key not in self._explained:
            self._explained[p.key] = explain(p.steer, self.lm, k=1, top_tokens=8)
        return self._explained[p.key]

    def _frontier(self, run_id: str | None) -> str | None:
        from tasks import mlflow_io

        if not run_id:
            return None
        if run_id not in self._frontiers:
            path = mlflow_io.download_run_file(run_id, "evaluation/plots/frontier.png", self.tmp / "runs" / run_id)
            self._frontiers[run_id] = str(path) if path else None
        return self._frontiers[run_id]


# ---------------------------------------------------------------------------------------------- checks and text
def check_prompt(prompt: str | None) -> str:
    if not prompt or not prompt.strip():
        raise PageError("the prompt is empty: type the opening the models should continue")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PageError(f"the prompt has {len(prompt)} characters; the playground takes at most {MAX_PROMPT_CHARS}")
    return prompt


def check_strength(value: float | None, where: str) -> float:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PageError(f"{where}: the strength {value!r} is not a number")
    if abs(value) > STRENGTH_LIMIT:
        raise PageError(f"{where}: strength {value:g} is out of range; the playground takes −{STRENGTH_LIMIT:g} … "
                        f"+{STRENGTH_LIMIT:g}")
    return float(value)


def check_int(value: float | None, what: str, low: int, high: int) -> int:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise PageError(f"{what} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise PageError(f"{what} must be between {low} and {high}, got {int(value)}")
    return int(value)


def metrics_line(metrics: dict[str, float], p: Picked) -> str:
    """The recommended operating point the version was registered with (metrics ``recommended_*`` of its run)."""
    m = {k.removeprefix("recommended_"): v for k, v in metrics.items() if k.startswith("recommended_")}
    s = f"{p.recommended:+g}" if p.recommended is not None else "?"
    if p.strength_minus is not None:
        s += f" / {p.strength_minus:+g}"
    parts = [f"recommended strength {s}"]
    if "swing" in m:
        parts.append(f"swing {m['swing']:+.3f}")
    elif "gain" in m:
        parts.append(f"gain {m['gain']:+.3f}")
    if "ppl_increase" in m:
        parts.append(f"perplexity {m['ppl_increase']:+.1%}")
    if "distinct_2" in m:
        parts.append(f"distinct-2 {m['distinct_2']:.3f}")
    return " · ".join(parts)


def tokens_line(result: dict) -> str:
    """Top promoted / demoted tokens at +1 strength in a typical context (explain's ``overall``)."""
    lists = result.get("overall") or result["directions"][0]

    def words(xs: list[dict]) -> str:
        return ", ".join(x["token"].strip() or repr(x["token"]) for x in xs)

    return f"promoted: {words(lists['promoted'])}  \ndemoted: {words(lists['demoted'])}"


def heat(samples: list[dict]) -> list[tuple[str, str | None]]:
    """Samples as one Gradio HighlightedText value, a line break between them: each continuation token in a shade
    of its evidence relative to the column's strongest token (:data:`SHADES`); the prompt, and tokens near 0,
    untinted. Shades, not Gradio's numeric scores: its score mode tints +1 red and drops line breaks."""
    cont = [t for smp in samples for t in smp["tokens"] if t["start"] >= smp["prompt_chars"]]
    scale = max((abs(t["evidence"]) for t in cont), default=0.0) or 1.0
    out: list[tuple[str, str | None]] = []
    for i, smp in enumerate(samples):
        text, cursor = smp["text"], 0
        if i:
            out.append(("\n\n", None))
        for t in smp["tokens"]:
            if t["start"] < smp["prompt_chars"] or t["end"] <= cursor:
                continue  # the prompt is the reviewer's; a multi-byte character may span two tokens
            start = max(t["start"], cursor)
            if start > cursor:
                out.append((text[cursor:start], None))
            out.append((text[start : t["end"]], shade(t["evidence"] / scale)))
            cursor = t["end"]
        out.append((text[cursor:], None))
    pieces: list[tuple[str, str | None]] = []
    for piece, tint in out:
        if tint is None:  # untinted text word by word, so that its lines wrap between words
            pieces += [(word, None) for word in re.findall(r"\s*\S+|\s+", piece)]
        else:
            pieces.append((piece, tint))
    return pieces


def shade(x: float) -> str | None:
    """A token's category for relative evidence ``x`` in −1 … +1."""
    for limit, name in ((0.5, "++ style"), (0.15, "+ style")):
        if x >= limit:
            return name
    for limit, name in ((-0.5, "−− style"), (-0.15, "− style")):
        if x <= limit:
            return name
    return None


def top_tokens(samples: list[dict], n: int = 6) -> str:
    """The words that carry the column's style most, over its samples (largest evidence first)."""
    best: dict[str, float] = {}
    for smp in samples:
        for t in smp["tokens"]:
            word = t["text"].strip()
            if t["start"] >= smp["prompt_chars"] and word and t["evidence"] > 0:
                best[word] = max(best.get(word, 0.0), t["evidence"])
    top = sorted(best.items(), key=lambda kv: -kv[1])[:n]
    return " · ".join(f"“{w}” {e:+.1f}" for w, e in top)


def caption(col: dict) -> str:
    """What a steered column ran (its steers and strengths, as ``--strength`` takes them) and how to read its tint."""
    who = " + ".join(f"{label} at {s:+g}" for label, s in col["parts"])
    lines = [f"**{who}** · `--strength {col['spec']}`"]
    carried = top_tokens(col["samples"])
    if carried:
        lines.append("green: tokens more likely at this strength than at its opposite, red: less likely (shades "
                     "relative to the column's strongest token). Strongest, in nats: " + carried)
    return "  \n".join(lines)


def message(exc: BaseException) -> str:
    """One line for the page: the problem in words, never a traceback (unexpected errors are logged in full on the
    server's console)."""
    if isinstance(exc, USER_ERRORS):
        return f"⚠ {first_line(exc)}"
    log.error("playground request failed", exc_info=exc)
    return f"⚠ unexpected error ({exc.__class__.__name__}: {first_line(exc)}); the server's console has details"


# ---------------------------------------------------------------------------------------------- the page
def build_page(pg: Playground):
    """The Gradio page: inputs, three text columns (base, A, B) and the "why" of A and B.

    Every event that touches the model shares one queue slot (``concurrency_id="model"``, limit 1): requests from
    several tabs wait their turn."""
    import gradio as gr

    try:
        choices, problem = pg.choices(), ""
    except Exception as exc:  # the page still serves: a local file works without a registry
        choices, problem = {}, message(exc) + " — a local .safetensors file still works."
    models = list(choices)
    first = choices[models[0]] if models else []
    start = Playground.defaults(first) if first else ("", "")
    with gr.Blocks(title="steer playground", analytics_enabled=False) as page:
        gr.Markdown("## steer playground\nThe base model and two steers, side by side on your prompt. Every column "
                    "draws the same random numbers, so the columns differ only by the steer; at strength 0 a "
                    "column is the base model's text. A steer is `NAME@champion`, `NAME@previous`, `NAME@VERSION`, "
                    "`NAME@latest`, or the path of a `.safetensors` file.")
        status = gr.Markdown(problem, elem_id="status")
        with gr.Row():
            model = gr.Dropdown(models, value=models[0] if models else None, label="registered steer",
                                elem_id="model", scale=1)
            prompt = gr.Textbox(label="prompt", placeholder="The food at this place was", elem_id="prompt", scale=3)
        with gr.Row():
            samples = gr.Slider(1, MAX_SAMPLES, 3, step=1, label="samples", elem_id="samples")
            tokens = gr.Slider(1, MAX_NEW_TOKENS, 30, step=1, label="max new tokens", elem_id="max-new-tokens")
            seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id="seed")
            nucleus = gr.Checkbox(True, label="sample within the base model's nucleus (as the evaluation does)",
                                  elem_id="base-nucleus")
        picks: dict[str, list] = {}  # column → [steer, strength, second steer, its strength]
        with gr.Row():
            for c, ref in zip(COLUMNS, start):
                with gr.Column():
                    c_ = c.lower()
                    picks[c] = [
                        gr.Dropdown(first, value=ref or None, allow_custom_value=True, label=f"column {c}: steer",
                                    elem_id=f"ref-{c_}"),
                        gr.Slider(-STRENGTH_LIMIT, STRENGTH_LIMIT, recommended(pg, ref), step=0.05,
                                  label=f"column {c}: strength", elem_id=f"strength-{c_}"),
                        gr.Dropdown([("none", "")] + first, value="", allow_custom_value=True,
                                    label=f"column {c}: compose with (optional)", elem_id=f"ref2-{c_}"),
                        gr.Slider(-STRENGTH_LIMIT, STRENGTH_LIMIT, 0.0, step=0.05,
                                  label=f"column {c}: its strength", elem_id=f"strength2-{c_}"),
                    ]
        go = gr.Button("Generate", variant="primary", elem_id="generate")
        shown: list = []  # per column: its text, then its caption
        with gr.Row(equal_height=False):
            for key in ("base",) + COLUMNS:
                with gr.Column():
                    shown.append(gr.HighlightedText(label="base model" if key == "base" else f"column {key}",
                                                    color_map=SHADES, show_legend=key != "base",
                                                    show_inline_category=False,
                                                    combine_adjacent=False,  # lines wrap between words
                                                    elem_id=f"text-{key.lower()}"))
                    shown.append(gr.Markdown(elem_id=f"caption-{key.lower()}"))
        why: list = []  # per steered column: its card, then its frontier plot
        with gr.Row(equal_height=False):
            for c in COLUMNS:
                with gr.Column():
                    why.append(gr.Markdown(elem_id=f"why-{c.lower()}"))
                    why.append(gr.Image(type="filepath", label=f"column {c}: frontier (control vs perplexity)",
                                        interactive=False, height=320, elem_id=f"frontier-{c.lower()}"))

        def on_generate(prompt_, samples_, tokens_, seed_, nucleus_, *picked):
            columns = {c: [(picked[4 * i], picked[4 * i + 1]), (picked[4 * i + 2], picked[4 * i + 3])]
                       for i, c in enumerate(COLUMNS)}
            try:
                out = pg.generate(prompt_, samples_, tokens_, seed_, nucleus_, columns)
            except Exception as exc:
                return [message(exc)] + [None, ""] * (1 + len(COLUMNS))
            base = [{"text": t, "prompt_chars": len(prompt_), "tokens": []} for t in out["base"]]
            values = [heat(base), "the base model, no steer"]
            for c in COLUMNS:
                col = out[c]
                values += [None, "_no steer picked_"] if col is None else [heat(col["samples"]), caption(col)]
            n = int(samples_)
            return [f"Generated {n} sample{'s' * (n != 1)} × {int(tokens_)} tokens per column in "
                    f"{out['seconds']:.1f} s (seed {int(seed_)}: the same random numbers in every column; request "
                    f"{out['request']})."] + values

        def on_pick(which: int) -> Callable:
            """A steer picked in a column: its slider goes to its recommended strength, its card is read."""
            def handler(ref: str, ref2: str):
                try:
                    card = pg.describe([ref, ref2])
                    s = recommended(pg, (ref, ref2)[which], strict=True)
                except Exception as exc:
                    return gr.update(), message(exc), None, message(exc)
                return (gr.update() if s is None else s), *card, gr.update()
            return handler

        def on_model(name: str):
            refs = choices.get(name) or []
            a, b = Playground.defaults(refs) if refs else ("", "")
            return ([gr.update(choices=refs, value=a), gr.update(choices=refs, value=b)] +
                    [gr.update(choices=[("none", "")] + refs, value="")] * len(COLUMNS))

        def on_load(*refs):
            try:
                out = [f"Ready: base model {pg.lm.name}, registry {pg.registry()}."]
            except Exception as exc:
                out = [message(exc) + " — a local .safetensors file still works."]
            for i, _ in enumerate(COLUMNS):
                try:
                    out += list(pg.describe(list(refs[2 * i : 2 * i + 2])))
                except Exception as exc:
                    out += [message(exc), None]
            return out

        opts = dict(concurrency_limit=1, concurrency_id="model", show_progress="minimal")
        go.click(on_generate, [prompt, samples, tokens, seed, nucleus] + [x for c in COLUMNS for x in picks[c]],
                 [status] + shown, api_name="generate", **opts)
        for i, c in enumerate(COLUMNS):
            ref, strength, ref2, strength2 = picks[c]
            card = why[2 * i : 2 * i + 2]
            ref.change(on_pick(0), [ref, ref2], [strength, *card, status], **opts)
            ref2.change(on_pick(1), [ref, ref2], [strength2, *card, status], **opts)
        model.change(on_model, model, [picks[c][0] for c in COLUMNS] + [picks[c][2] for c in COLUMNS])
        page.load(on_load, [x for c in COLUMNS for x in (picks[c][0], picks[c][2])], [status] + why, **opts)
        page.queue(default_concurrency_limit=1)
    return page


def recommended(pg: Playground, ref: str | None, strict: bool = False) -> float | None:
    """The strength a slider starts at: the version's recommended one (its tags); 0 when unknown (None when
    ``strict``)."""
    try:
        s = pg.pick(ref).recommended if ref else None
    except Exception:
        if strict:
            raise
        s = None
    if s is None:
        return None if strict else 0.0
    return max(-STRENGTH_LIMIT, min(STRENGTH_LIMIT, s))


def port_free(host: str, port: int) -> bool:
    """Whether the server can listen on ``host:port`` (checked as uvicorn binds: a port whose last connections are
    still closing counts as free)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def serve(params: Params, root: Path, *, port: int = 7860, host: str = "127.0.0.1", threads: int | None = None,
          log_line: Callable[[str], None] = print) -> None:
    """Load the base model, build the page and serve it until interrupted (blocks)."""
    if not port_free(host, port):
        raise ValueError(f"port {port} on {host} is in use: pass another with --port")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no calls home
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a down server answers now, not in minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    pg = Playground(params, root, threads)
    t0 = time.perf_counter()
    lm = pg.lm
    log_line(f"base model {lm.name} loaded in {time.perf_counter() - t0:.1f} s")
    page = build_page(pg)
    try:  # read and explain the default pair now, so that the first page opens at once
        t0 = time.perf_counter()
        first = next(iter(pg.choices().values()), [])
        if first:
            pg.describe(list(Playground.defaults(first)))
            log_line(f"default steers read and explained in {time.perf_counter() - t0:.1f} s")
    except Exception as exc:
        log_line(message(exc))
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts: the page works offline
    log_line(f"playground on http://{host}:{port} (Ctrl+C stops it)")
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False, quiet=True, show_error=False,
                ssr_mode=False, mcp_server=False, theme=theme, footer_links=[])
