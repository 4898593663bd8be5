"""The ``steer`` command: train, generate, and the stages of the pipeline.

Every command fails on bad input with one line on stderr naming the problem and a non-zero exit, and writes its
outputs atomically, so a failed command leaves nothing half-written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from steer_core.config import MAX_NEW_TOKENS, MAX_SEED, TEMPERATURE, TEXT_MAX_NEW_TOKENS, TOP_P, TrainConfig
from steer_core.errors import USER_ERRORS, first_line

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and ship LM-Steer steers.")
err = Console(stderr=True)
out = Console()

_TRAIN = {k: f.default for k, f in TrainConfig.model_fields.items()}  # config.py is where defaults live

def cli_errors(fn: Callable) -> Callable:
    """Turn expected failures into a one-line ``error: ...`` and exit code 2 (no traceback for bad input)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except USER_ERRORS as exc:
            err.print(f"[red]error:[/red] {first_line(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


# ------------------------------------------------------------------------------------------- argument checks
#: the bound params.yaml's schema puts on the same setting (steer_core.config)
MAX_THREADS = 1024


def _finite(value: Optional[float]) -> Optional[float]:
    """An option callback: NaN and ±inf pass every min/max bound, so refuse them here (a usage error, exit 2)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _top_p(value: float) -> float:
    if not 0 < value <= 1:
        raise typer.BadParameter(f"{value} is not in (0, 1]: the nucleus keeps the tokens that make up this much of "
                                 f"the probability")
    return value


def _device(value: str) -> str:
    if value not in ("auto", "cpu") and not value.startswith("cuda"):
        raise typer.BadParameter(f"{value!r} is not a device: expected auto, cpu or cuda[:N]")
    return value


def _train_config(**settings) -> TrainConfig:
    """``TrainConfig(**settings)``, with a refusal naming the command-line option rather than the config field."""
    from pydantic import ValidationError

    options = {"tokens_per_batch": "--batch-tokens"}
    try:
        return TrainConfig(**settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        option = options.get(field, "--" + field.replace("_", "-"))
        raise ValueError(f"{option} {settings.get(field)!r}: {first['msg'].removeprefix('Value error, ')}") from None


def _work_dir(path: Optional[Path]) -> Optional[Path]:
    if path is not None and path.exists() and not path.is_dir():
        raise ValueError(f"--work-dir {path} is a file; expected a folder for the checkpoints")
    return path


def _out_file(path: Optional[Path], option: str = "--out") -> Optional[Path]:
    """A file the command will write: refused up front when it is a directory."""
    if path is not None and path.is_dir():
        raise ValueError(f"{option} {path} is a directory; expected a file to write")
    return path


def _runtime(threads: Optional[int]) -> None:
    from steer_core.model.lm import set_threads

    set_threads(threads)


def parse_label_map(spec: Optional[str]) -> Optional[dict[str, float]]:
    """``positive=1,negative=-1`` → {"positive": 1.0, "negative": -1.0}."""
    if not spec:
        return None
    mapping: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, raw = part.partition("=")
        if not sep:
            raise ValueError(f"--labels entry {part!r} is not LABEL=VALUE (e.g. positive=1,negative=-1)")
        try:
            mapping[name.strip()] = float(raw)
        except ValueError:
            raise ValueError(f"--labels value {raw!r} for {name!r} is not a number") from None
    return mapping


def labels_to_values(labels: list[str], mapping: Optional[dict[str, float]] = None) -> list[float]:
    """Steer values from labels: a mapping when given; numbers as they are (0/1 → −1/+1); positive/negative."""
    distinct = sorted(set(labels))
    if len(distinct) < 2:
        raise ValueError(f"the data has only one label ({distinct[0] if distinct else 'none'}); a steer needs two")
    if mapping is None:
        try:
            nums = {lab: float(lab) for lab in distinct}
        except ValueError:
            nums = None
        if nums is not None:
            mapping = {"0": -1.0, "1": 1.0, "0.0": -1.0, "1.0": 1.0} if set(nums.values()) == {0.0, 1.0} else nums
        elif set(distinct) <= {"positive", "negative", "neutral"}:
            mapping = {"positive": 1.0, "negative": -1.0}
        else:
            raise ValueError(f"labels {distinct} need a mapping to steer values: --labels {distinct[0]}=1,{distinct[1]}=-1")
    unknown = set(distinct) - set(mapping)
    kept = [mapping[lab] for lab in labels if lab in mapping]
    if len(set(kept)) < 2:
        raise ValueError(f"after mapping labels {distinct} with {mapping}, fewer than two steer values remain")
    if unknown and len(unknown) == len(distinct):
        raise ValueError(f"none of the labels {distinct} is in the mapping {sorted(mapping)}")
    return [mapping.get(lab, float("nan")) for lab in labels]


def _self_labelled_rows(lm, data: Path, raw_labels: list[str], values: list[float], per_label: int, seed: int,
                        quiet: bool) -> tuple[list[dict], list[dict], str]:
    """The self-labelled recipe on a user's file: a probe learned from its labels labels the model's own
    continuations of its openings (``data.source.kind: self_labelled``); returns train rows, val rows and a line
    on the probe and the pool. Refuses a probe below accuracy 0.7 before any sampling."""
    import tempfile

    from steer_core.config import DataConfig
    from steer_core.data.prepare import prepare
    from steer_core.data.records import load_jsonl
    from steer_core.stages import lm_data_fns

    by_label = {lab: v for lab, v in zip(raw_labels, values) if v == v}
    high, low = max(by_label, key=by_label.get), min(by_label, key=by_label.get)
    cfg = DataConfig.model_validate({
        "source": {"kind": "self_labelled", "labels_from": {"kind": "file", "path": str(data)}},
        "labels": {high: by_label[high], low: by_label[low]}, "max_per_label": per_label})
    generate_fn, embed_fn = lm_data_fns(lm, seed, progress=not quiet)
    with tempfile.TemporaryDirectory(prefix="self-label-") as tmp:
        t = Path(tmp)
        card = prepare(cfg, [], t / "prep", t / "prompts.jsonl", t / "card.json", generate_fn=generate_fn,
                       embed_fn=embed_fn)
        tr, va = load_jsonl(t / "prep" / "train.jsonl"), load_jsonl(t / "prep" / "val.jsonl")
    note = (f"probe learned from {data}: held-out accuracy {card.probe['accuracy']:.2f} ({card.probe['n_heldout']} "
            f"texts); {card.pool['texts']} continuations labelled: {card.pool[high]} {high}, {card.pool[low]} {low}")
    return tr, va, note


def _val_split(text: str, fraction: float = 0.1) -> bool:
    """Validation membership by the text's permanent hash position (the same key `steer prepare` splits by)."""
    from steer_core.data.clean import normalise, unit_hash

    return unit_hash("", normalise(text)) < fraction


@app.command()
@cli_errors
def train(
    steer_name: Optional[str] = typer.Argument(None, help="pipeline mode: a steer configured in params.yaml"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="pipeline mode: the params file"),
    data: Optional[Path] = typer.Option(None, "--data", help="jsonl or csv with 'text' and 'label' columns"),
    out_path: Optional[Path] = typer.Option(None, "--out", help="where to write STEER.safetensors"),
    model: str = typer.Option("default", "--model", help="default | hub id | local dir | .gguf"),
    labels: Optional[str] = typer.Option(None, "--labels", help="label→value map, e.g. positive=1,negative=-1"),
    name: str = typer.Option("style", "--name", help="name of the style steer"),
    rank: Optional[int] = typer.Option(None, "--rank", min=1, help="low rank r (default: full rank)"),
    epsilon: float = typer.Option(_TRAIN["epsilon"], "--epsilon", min=0.0, callback=_finite),
    epochs: int = typer.Option(_TRAIN["epochs"], "--epochs", min=1),
    lr: float = typer.Option(_TRAIN["lr"], "--lr", min=0.0, callback=_finite),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam | lbfgs"),
    batch_tokens: int = typer.Option(_TRAIN["tokens_per_batch"], "--batch-tokens", min=16,
                                     help="tokens per packed batch"),
    max_texts: Optional[int] = typer.Option(None, "--max-texts", min=2),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.9, callback=_finite),
    device: str = typer.Option("auto", "--device", callback=_device),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=MAX_THREADS),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="checkpoints (resume by rerunning)"),
    self_label: bool = typer.Option(False, "--self-label", help="train on the model's own continuations of the "
                                    "file's openings, labelled by a probe learned from the file's labels (the "
                                    "self-labelled recipe); --max-texts: training texts per label (default 400)"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Fit a steer on labelled text (the LM stays frozen; hidden states are computed once).

    Either ``steer train NAME`` (the pipeline stage: data and settings from params.yaml) or
    ``steer train --data FILE --out STEER.safetensors [options]``: the same fit and writer
    (``pipeline.fit_and_write``), on the file's labelled rows split by each text's hash.
    """
    if steer_name is not None:
        from steer_core.config import load_params
        from steer_core.stages import train_stage

        path = train_stage(load_params(params_file), steer_name, progress=not quiet)
        err.print(f"saved {path}")
        return
    if data is None or out_path is None:
        raise ValueError("give a steer NAME from params.yaml, or both --data FILE and --out STEER.safetensors")

    from steer_core.data.records import read_training_file
    from steer_core.model.lm import load_lm
    from steer_core.stages import fit_and_write
    from steer_core.model.hidden import texts_hash

    if out_path.suffix != ".safetensors":
        raise ValueError(f"--out {out_path} must end in .safetensors")
    _out_file(out_path)
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"--optimizer {optimizer!r}: expected adam or lbfgs")
    cfg = _train_config(rank=rank, epsilon=epsilon, optimizer=optimizer, lr=lr, epochs=epochs,
                        tokens_per_batch=batch_tokens)  # max_length, dummy: params.yaml's train section sets them
    work_dir = _work_dir(work_dir)
    try:
        texts, raw_labels = read_training_file(data)
    except OSError as exc:  # a directory, an unreadable file (a missing one is a DataError naming it)
        raise ValueError(f"--data {data} cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    values = labels_to_values([str(x) for x in raw_labels], parse_label_map(labels))
    if self_label:
        _runtime(threads)
        lm = load_lm(model, device)
        tr, va, note = _self_labelled_rows(lm, data, [str(x) for x in raw_labels], values, max_texts or 400, seed,
                                           quiet)
        err.print(note)
        s = fit_and_write(lm, name, tr, va, cfg, out_path, seed=seed,
                          work=work_dir or out_path.parent / f".{out_path.stem}.work", progress=not quiet,
                          metadata=dict(data_file=str(data), data_hash=texts_hash([r["text"] for r in tr + va]),
                                        labels=labels or "auto", recipe="self-labelled"))
        err.print(f"saved {out_path} (card {out_path.with_suffix('.json').name}): {len(tr)} train / {len(va)} val "
                  f"texts, val loss {s.base_val_loss:.4f} → {s.best_val_loss:.4f}")
        return
    rows = [{"text": t, "value": v} for t, v in zip(texts, values) if v == v]
    if max_texts:
        rows = sorted(rows, key=lambda r: hashlib.sha256(r["text"].encode()).digest())[:max_texts]
    tr = [r for r in rows if not _val_split(r["text"], val_fraction)]
    va = [r for r in rows if _val_split(r["text"], val_fraction)]
    if len({r["value"] for r in tr}) < 2:
        raise ValueError("the training split holds fewer than two steer values; add data or lower --val-fraction")
    _runtime(threads)
    s = fit_and_write(load_lm(model, device), name, tr, va, cfg, out_path, seed=seed,
                      work=work_dir or out_path.parent / f".{out_path.stem}.work", progress=not quiet,
                      metadata=dict(data_file=str(data), data_hash=texts_hash([r["text"] for r in rows]),
                                    labels=labels or "auto"))
    err.print(
        f"saved {out_path} (card {out_path.with_suffix('.json').name}): {len(tr)} train / {len(va)} val texts, "
        f"{s.steps} steps, val loss {s.base_val_loss:.4f} → {s.best_val_loss:.4f} (cache {s.cache_seconds}s, "
        f"fit {s.fit_seconds}s)"
    )


@app.command()
@cli_errors
def generate(
    prompt: list[str] = typer.Option(..., "--prompt", help="prompt text (repeatable)"),
    model: str = typer.Option("default", "--model"),
    steer_path: Optional[Path] = typer.Option(None, "--steer", help="a .safetensors steer"),
    strength: Optional[str] = typer.Option(None, "--strength", help="e.g. 3, -2 or name=2,other=-1"),
    num_samples: int = typer.Option(1, "--num-samples", min=1, max=100_000),
    max_new_tokens: int = typer.Option(TEXT_MAX_NEW_TOKENS, "--max-new-tokens", min=1, max=4096),
    top_p: float = typer.Option(TOP_P, "--top-p", callback=_top_p),
    temperature: float = typer.Option(TEMPERATURE, "--temperature", min=1e-4, callback=_finite),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED),
    device: str = typer.Option("auto", "--device", callback=_device),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=MAX_THREADS),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
    base_nucleus: bool = typer.Option(False, "--base-nucleus", help="sample within the unsteered model's top-p "
                                      "nucleus, reweighted by the steer (evaluate.base_nucleus)"),
) -> None:
    """Sample continuations, optionally steered at a strength."""
    from steer_core.model.generate import generate as run_generate
    from steer_core.model.lm import load_lm
    from steer_core.model.steer import Steer, parse_strengths

    steer = Steer.load(steer_path) if steer_path else None
    if steer is None and strength not in (None, "", "0"):
        raise ValueError("--strength needs --steer")
    values = parse_strengths(strength, steer) if steer is not None else None
    _runtime(threads)
    lm = load_lm(model, device)
    if steer is not None:
        steer.check_base(lm.fingerprint, source=str(steer_path))
    gens = run_generate(lm, prompt, steer, values, num_samples=num_samples, max_new_tokens=max_new_tokens,
                        top_p=top_p, temperature=temperature, seed=seed, base_nucleus=base_nucleus)
    if as_json:
        doc = {
            "model": model, "steer": str(steer_path) if steer_path else None,
            "strength": None if values is None else dict(zip(steer.names, values.tolist())),
            "generations": [{"prompt": g.prompt, "sample": g.sample_index, "text": g.text} for g in gens],
        }
        if len(prompt) == 1:
            doc["prompt"] = prompt[0]
        sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
        return
    for g in gens:
        out.print(f"[bold]{g.prompt}[/bold]{g.text}", highlight=False)


@app.command()
@cli_errors
def prepare(
    steer_name: str = typer.Argument(..., help="a steer configured in params.yaml"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
) -> None:
    """Pipeline stage: build train/val sets, evaluation prompts and the data card for one steer."""
    from steer_core.config import load_params
    from steer_core.stages import prepare_stage

    card = prepare_stage(load_params(params_file), steer_name)
    err.print(f"prepared {steer_name}: {json.dumps(getattr(card, 'counts', {}))}")


@app.command()
@cli_errors
def evaluate(
    steer_name: str = typer.Argument(..., help="a steer configured in params.yaml"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    champion: Optional[Path] = typer.Option(None, "--champion", help="a champion steer to compare on the same prompts"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Pipeline stage: sweep strengths, score control / fluency / diversity, write metrics, plots and report."""
    from steer_core.config import load_params
    from steer_core.stages import evaluate_stage

    doc = evaluate_stage(load_params(params_file), steer_name, champion=champion, progress=not quiet,
                         log=lambda m: err.print(m))
    err.print(f"{steer_name}: {json.dumps(doc['headline'], default=float)}")


# --------------------------------------------------------------------------------------------- steer algebra & insight
def _emit_json(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc, ensure_ascii=False, default=str) + "\n")


def _load_for(steer_path: Path, model: Optional[str], device: str, threads: Optional[int], steer=None):
    """Load a steer (unless given, already read) and its LM (``--model``, else the steer's own base_model, else
    default); check the base."""
    from steer_core.model.lm import load_lm
    from steer_core.model.steer import Steer

    steer = steer if steer is not None else Steer.load(steer_path)
    _runtime(threads)
    lm = load_lm(model or steer.metadata.get("base_model") or "default", device)
    steer.check_base(lm.fingerprint, source=str(steer_path))
    return steer, lm


@app.command()
@cli_errors
def compose(
    parts: list[str] = typer.Argument(..., help="STEER.safetensors[:WEIGHT] …, e.g. a.safetensors:1 b.safetensors:-1"),
    out_path: Path = typer.Option(..., "--out", help="where to write the composed .safetensors"),
    keep_dummy: bool = typer.Option(False, "--keep-dummy", help="keep each part's dummy steer"),
    collapse: Optional[str] = typer.Option(None, "--collapse",
                                           help="sum the parts' primary steers into ONE steer of this name"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Weighted sum of steers trained on the same base model (names kept per part; clashes get a 'file.' prefix)."""
    from steer_core.tools.algebra import compose as run_compose, parse_part
    from steer_core.model.steer import Steer

    if out_path.suffix != ".safetensors":
        raise ValueError(f"--out {out_path} must end in .safetensors")
    _out_file(out_path)
    specs = [parse_part(p) for p in parts]
    steers = []
    for path, _ in specs:
        s = Steer.load(path)
        s.metadata.setdefault("source_path", str(path))
        steers.append(s)
    result = run_compose([(s, w) for s, (_, w) in zip(steers, specs)], [Path(p).stem for p, _ in specs],
                         keep_dummy=keep_dummy, collapse=collapse)
    result.save(out_path)
    doc = {"out": str(out_path), "names": result.names, "epsilon": result.epsilon, "rank": result.rank,
           "base_fingerprint": result.metadata.get("base_fingerprint"),
           "parts": [{"path": e["source"], "weight": e["weight"], "names": e["used"], "as": e["as"]}
                     for e in result.metadata["composition"]]}
    if as_json:
        _emit_json(doc)
        return
    err.print(f"saved {out_path}: steers {', '.join(result.names)} (set each with --strength name=value)")


@app.command()
@cli_errors
def merge(
    steer_path: Path = typer.Argument(..., help="a .safetensors steer"),
    strength: str = typer.Option(..., "--strength", help="e.g. 3, -2 or name=2,other=-1 (dummy stays 0)"),
    out_dir: Path = typer.Option(..., "--out", help="model directory to write"),
    model: Optional[str] = typer.Option(None, "--model", help="base model (default: the steer's base_model)"),
    force: bool = typer.Option(False, "--force", help="replace --out if it exists"),
    device: str = typer.Option("cpu", "--device", callback=_device),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=MAX_THREADS),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fold a steer at a fixed strength into the output layer: a plain HF model dir, loadable without steer code."""
    from steer_core.tools.merge import merge_into_model
    from steer_core.model.steer import Steer, parse_strengths

    if out_dir.exists() and not force:
        raise ValueError(f"--out {out_dir} already exists (use --force to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; expected a model directory to write")
    steer = Steer.load(steer_path)
    values = parse_strengths(strength, steer)  # a bad strength is refused before the model loads
    steer, lm = _load_for(steer_path, model, device, threads, steer=steer)
    merge_into_model(lm, steer, values, out_dir, overwrite=force, source=str(steer_path))
    doc = {"out": str(out_dir), "model": lm.spec, "values": dict(zip(steer.names, values.tolist()))}
    if as_json:
        _emit_json(doc)
        return
    err.print(f"saved {out_dir}: {lm.name} with {steer_path.name} folded in at {doc['values']}")


@app.command()
@cli_errors
def explain(
    steer_path: Path = typer.Argument(..., help="a .safetensors steer"),
    model: Optional[str] = typer.Option(None, "--model", help="base model (default: the steer's base_model)"),
    name: Optional[str] = typer.Option(None, "--name", help="which steer (default: the primary one)"),
    k: int = typer.Option(5, "--k", min=1, max=4096, help="singular directions to show"),
    top_tokens: int = typer.Option(10, "--top-tokens", min=1, max=10_000),
    all_tokens: bool = typer.Option(False, "--all-tokens", help="do not filter to word-like tokens"),
    min_len: int = typer.Option(3, "--min-len", min=1, help="shortest word-like token"),
    fragments: bool = typer.Option(False, "--fragments", help="also list word-like tokens that do not start a word"),
    score: str = typer.Option("cosine", "--score", help="cosine | dot: how tokens align with a direction"),
    out_json: Optional[Path] = typer.Option(None, "--out", help="also write the result as JSON here"),
    device: str = typer.Option("cpu", "--device", callback=_device),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=MAX_THREADS),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The steer's top singular directions and the tokens each one promotes / demotes."""
    from steer_core.model.steer import Steer
    from steer_core.tools.explain import explain as run_explain, explain_table, write_explain_artifact

    if score not in ("cosine", "dot"):
        raise ValueError(f"--score {score!r}: expected cosine or dot")
    _out_file(out_json)
    steer = Steer.load(steer_path)
    if name is not None and name not in steer.names:
        raise ValueError(f"--name {name!r}: {steer_path} holds steers {steer.names}")
    if k > steer.dim:
        raise ValueError(f"--k {k}: {steer_path} has {steer.dim} dimensions, so at most {steer.dim} directions")
    steer, lm = _load_for(steer_path, model, device, threads, steer=steer)
    result = run_explain(steer, lm, name=name, k=k, top_tokens=top_tokens, word_like=not all_tokens, min_len=min_len,
                         word_start=not fragments, score=score)
    result["steer"] = str(steer_path)
    if out_json:
        write_explain_artifact(result, out_json)
    if as_json:
        _emit_json(result)
        return
    out.print(explain_table(result))


@app.command()
@cli_errors
def highlight(
    steer_path: Path = typer.Argument(..., help="a .safetensors steer"),
    text: str = typer.Option(..., "--text", help="the text to analyse"),
    strength: float = typer.Option(1.0, "--strength", help="compare the text's likelihood at +S and -S",
                                   callback=_finite),
    model: Optional[str] = typer.Option(None, "--model", help="base model (default: the steer's base_model)"),
    name: Optional[str] = typer.Option(None, "--name", help="which steer (default: the primary one)"),
    spans: int = typer.Option(3, "--spans", min=0, help="how many spans to pick"),
    html_out: Optional[Path] = typer.Option(None, "--html", help="write an HTML rendering here"),
    device: str = typer.Option("cpu", "--device", callback=_device),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=MAX_THREADS),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Which tokens and spans of a text carry the steer's +S style (green) or −S style (red)."""
    from steer_core.model.steer import Steer
    from steer_core.tools.explain import highlight as run_highlight, render_html, render_terminal

    _out_file(html_out, "--html")
    steer = Steer.load(steer_path)
    if name is not None and name not in steer.names:
        raise ValueError(f"--name {name!r}: {steer_path} holds steers {steer.names}")
    steer, lm = _load_for(steer_path, model, device, threads, steer=steer)
    result = run_highlight(lm, steer, text, strength=strength, top_spans=spans, name=name)
    if html_out:
        from steer_core.files import write_atomic

        write_atomic(html_out, render_html(result))
    if as_json:
        _emit_json(result)
        return
    out.print(render_terminal(result))
    for i, sp in enumerate(result["spans"], 1):
        out.print(f"{i}. [bold]{sp['text']}[/bold]  {sp['score']:+.3f} nats", highlight=False)


@app.command()
@cli_errors
def transfer(
    steer_path: Path = typer.Argument(..., help="a .safetensors steer"),
    to_model: str = typer.Option(..., "--to", help="target model spec (default | hub id | local dir | .gguf)"),
    out_path: Path = typer.Option(..., "--out", help="where to write the transferred .safetensors"),
    from_model: Optional[str] = typer.Option(None, "--from", help="source model (default: the steer's base_model)"),
    ridge: float = typer.Option(0.0, "--ridge", min=0.0, help="ridge penalty of the least-squares fit",
                                callback=_finite),
    device: str = typer.Option("cpu", "--device", callback=_device),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=MAX_THREADS),
    as_json: bool = typer.Option(False, "--json"),
    measure: bool = typer.Option(False, "--measure", help="also measure (with the evaluation harness) how much of "
                                 "the source's control effect the transferred steer keeps on the target"),
    n_prompts: int = typer.Option(12, "--prompts", min=1, help="--measure: neutral news prompts"),
    samples: int = typer.Option(3, "--samples", min=1, help="--measure: continuations per prompt and strength"),
    strength: str = typer.Option("8", "--strength", help="--measure: strength(s) S, evaluated at ±S on both "
                                 "models, e.g. 8 or 4,8,16 (the largest is the headline)"),
    max_new_tokens: int = typer.Option(MAX_NEW_TOKENS, "--max-new-tokens", min=1,
                                       help="--measure: tokens per continuation"),
    control: str = typer.Option("sentiment", "--control", help="--measure: sentiment (vader) | toxicity (profanity)"),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="--measure: sampling seed"),
) -> None:
    """Carry a steer to another LM through a least-squares map between the output embeddings (shared tokens)."""
    from steer_core.model.lm import load_lm
    from steer_core.tools.transfer import transfer as run_transfer

    if out_path.suffix != ".safetensors":
        raise ValueError(f"--out {out_path} must end in .safetensors")
    if control not in ("sentiment", "toxicity"):
        raise ValueError(f"--control {control!r}: expected sentiment or toxicity")
    try:
        magnitudes = [abs(float(x)) for x in strength.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--strength {strength!r} is not a number or a comma list of numbers") from None
    if measure and not any(m > 0 and m != float("inf") for m in magnitudes):
        raise ValueError(f"--strength {strength!r}: --measure needs a finite non-zero strength")
    steer, src = _load_for(steer_path, from_model, device, threads)
    dst = load_lm(to_model, device)
    new, report = run_transfer(steer, src, dst, ridge=ridge)
    new.save(out_path)
    report = {"out": str(out_path), **{k: v for k, v in report.items() if not k.endswith("per_dim")}}
    if measure:
        from steer_core.config import EvalConfig, PromptSetConfig
        from steer_core.data.prepare import build_prompts
        from steer_core.tools.transfer import measure_transfer

        prompts, _ = build_prompts([PromptSetConfig(name="neutral", kind="neutral", count=n_prompts, words=5)], [])
        cfg = EvalConfig(control=control, scorer="vader" if control == "sentiment" else "profanity",
                         samples=samples, max_new_tokens=max_new_tokens, strengths=magnitudes, bootstrap=1000)
        report["measure"] = measure_transfer(src, steer, dst, new, prompts, cfg, strengths=magnitudes, seed=seed,
                                             log=(lambda _m: None) if as_json else (lambda m: err.print(m)))
    if as_json:
        _emit_json(report)
        return
    err.print(f"saved {out_path}: {report['shared_tokens']} shared tokens, fit R² mean {report['r2_mean']:.4f} "
              f"(min {report['r2_min']:.4f}); recalibrate the strength on {dst.name}")
    if measure:
        _print_transfer_measure(report["measure"])


def _print_transfer_measure(m: dict) -> None:
    """The source-vs-target control effect table of ``steer transfer --measure``."""
    from rich.table import Table

    p = m["protocol"]
    table = Table(title=f"control effect = {m['effect']} ({p['prompts']} prompts × {p['samples']} samples × "
                        f"{p['max_new_tokens']} tokens)")
    for col in ("model", "±S", "effect [95% CI]", "at +S", "at −S", "at 0", "ppl increase", "distinct-2"):
        table.add_column(col)
    for role in ("source", "target"):
        side = m[role]
        for r in side["rows"]:
            ci = r.get("effect_ci")
            table.add_row(side["name"], f"{r['strength']:g}",
                          f"{r['effect']:+.3f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""),
                          f"{r['control_plus']:.3f}", f"{r['control_minus']:.3f}", f"{r['control_base']:.3f}",
                          f"{r['ppl_increase']:+.0%}", f"{r['distinct_2']:.2f}")
    out.print(table)
    for r in m["per_strength"]:
        kept = "n/a (no source effect)" if r["kept"] is None else f"{r['kept']:.0%}"
        out.print(f"±{r['strength']:g}: source effect {r['source_effect']:+.3f}, target effect "
                  f"{r['target_effect']:+.3f}, kept {kept}", highlight=False)


@app.command()
@cli_errors
def power(
    metrics_json: Path = typer.Argument(..., help="a finished evaluation: metrics/<steer>.json"),
    effect: float = typer.Option(0.10, "--effect", help="the control improvement over the champion to detect"),
    target_power: float = typer.Option(0.8, "--power", help="the wanted probability of promoting it"),
    confidence: float = typer.Option(0.95, "--confidence", help="the gate's confidence (gate.confidence)"),
    margin: float = typer.Option(0.0, "--margin", help="the gate's min_margin"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Protocol sizing: prompts (× samples) the paired gate needs to detect an improvement, from an evaluation."""
    from steer_core.gate import power_report

    if not metrics_json.is_file():
        raise FileNotFoundError(f"no evaluation at {metrics_json}: run `steer evaluate NAME` first")
    try:
        doc = json.loads(metrics_json.read_text())
    except OSError as exc:
        raise ValueError(f"{metrics_json} cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{metrics_json} is not an evaluation document (not JSON: {exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{metrics_json} is not an evaluation document (no 'systems')")
    rep = power_report(doc, effect, target_power, confidence, margin)
    if as_json:
        _emit_json(rep)
        return
    out.print(f"{metrics_json}: {rep['prompts']} prompts × {rep['samples']} samples; per-prompt sd of the control "
              f"difference {rep['sd_per_prompt']:.3f} ({rep['basis']})", highlight=False)
    out.print(f"to promote a +{effect:g} improvement with {target_power:.0%} power at {confidence:.0%} confidence "
              f"(margin {margin:g}): {rep['prompts_needed']} prompts × {rep['samples']} samples", highlight=False)
    out.print(f"this protocol detects (with {target_power:.0%} power) improvements of +{rep['detectable_now']:.3f} "
              f"or more", highlight=False)
    if "gain_over_base" in rep:
        g = rep["gain_over_base"]
        out.print(f"gain over the base model: {g['mean']:+.3f} (sd {g['sd_per_prompt']:.3f} per prompt); "
                  f"detectable: +{g['detectable_now']:.3f}", highlight=False)
    if "perplexity" in rep:
        q = rep["perplexity"]
        need = q["prompts_for_half_width"]
        out.print(f"judge perplexity {q['increase']:+.1%} (cross-fitted, the worse side), known to "
                  f"±{q['half_width_now'] * 100:.1f} points at {confidence:.0%} over {q['prompts']} prompts; ±5 points "
                  f"needs {need['0.05']} prompts, ±10 points {need['0.1']} (× {rep['samples']} samples)",
                  highlight=False)
    for r in rep.get("by_samples", []):
        out.print(f"  {r['samples']:3d} samples/prompt: {r['prompts_needed']:5d} prompts ({r['generations']} "
                  f"generations per strength and system); with {rep['prompts']} prompts: detects "
                  f"+{r['detectable_at_current_prompts']:.3f}", highlight=False)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
