"""The ``steer`` command: train, generate, and the stages of the pipeline.

Every command fails on bad input with one line on stderr naming the problem and a non-zero exit, and writes its
outputs atomically, so a failed command leaves nothing half-written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and ship LM-Steer steers.")
err = Console(stderr=True)
out = Console()

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, RuntimeError)


def cli_errors(fn: Callable) -> Callable:
    """Turn expected failures into a one-line ``error: ...`` and exit code 2 (no traceback for bad input)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except USER_ERRORS as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            err.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _runtime(threads: Optional[int]) -> None:
    from .lm import set_threads

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


def _val_split(text: str, fraction: float = 0.1) -> bool:
    digest = hashlib.sha256(" ".join(text.lower().split()).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


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
    epsilon: float = typer.Option(1e-3, "--epsilon", min=0.0),
    epochs: int = typer.Option(3, "--epochs", min=1),
    lr: float = typer.Option(1e-2, "--lr", min=0.0),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam | lbfgs"),
    batch_tokens: int = typer.Option(2048, "--batch-tokens", min=16, help="tokens per packed batch"),
    max_length: int = typer.Option(64, "--max-length", min=4),
    max_texts: Optional[int] = typer.Option(None, "--max-texts", min=2),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.9),
    no_dummy: bool = typer.Option(False, "--no-dummy", help="do not train the domain-absorbing dummy steer"),
    device: str = typer.Option("auto", "--device"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    seed: int = typer.Option(0, "--seed"),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="checkpoints (resume by rerunning)"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Fit a steer on labelled text (the LM stays frozen; hidden states are computed once).

    Either ``steer train NAME`` (the pipeline stage: data and settings from params.yaml) or
    ``steer train --data FILE --out STEER.safetensors [options]``.
    """
    import torch

    if steer_name is not None:
        from .config import load_params
        from .pipeline import train_stage

        path = train_stage(load_params(params_file), steer_name, progress=not quiet)
        err.print(f"saved {path}")
        return
    if data is None or out_path is None:
        raise ValueError("give a steer NAME from params.yaml, or both --data FILE and --out STEER.safetensors")

    from .config import TrainConfig
    from .data import read_training_file
    from .lm import cache_dir, load_lm
    from .train import fit_steer, texts_hash

    if out_path.suffix != ".safetensors":
        raise ValueError(f"--out {out_path} must end in .safetensors")
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"--optimizer {optimizer!r}: expected adam or lbfgs")
    texts, raw_labels = read_training_file(data)
    values = labels_to_values([str(x) for x in raw_labels], parse_label_map(labels))
    rows = [(t, v) for t, v in zip(texts, values) if v == v]
    if max_texts:
        rows = sorted(rows, key=lambda r: hashlib.sha256(r[0].encode()).digest())[:max_texts]
    names = [name, "dummy"] if not no_dummy else [name]
    to_vec = (lambda v: [v, 1.0]) if not no_dummy else (lambda v: [v])
    tr = [r for r in rows if not _val_split(r[0], val_fraction)]
    va = [r for r in rows if _val_split(r[0], val_fraction)]
    if len({v for _, v in tr}) < 2:
        raise ValueError("the training split holds fewer than two steer values; add data or lower --val-fraction")
    cfg = TrainConfig(rank=rank, epsilon=epsilon, optimizer=optimizer, lr=lr, epochs=epochs,
                      tokens_per_batch=batch_tokens, max_length=max_length, dummy=not no_dummy)
    _runtime(threads)
    lm = load_lm(model, device)
    work = work_dir or out_path.parent / f".{out_path.stem}.work"
    steer, summary = fit_steer(
        lm, [t for t, _ in tr], torch.tensor([to_vec(v) for _, v in tr]),
        [t for t, _ in va], torch.tensor([to_vec(v) for _, v in va]).reshape(-1, len(names)),
        names, cfg, seed=seed, work_dir=work, hidden_cache_dir=cache_dir() / "hidden", progress=not quiet,
    )
    steer.metadata.update(data_file=str(data), data_hash=texts_hash([t for t, _ in rows]), labels=labels or "auto")
    steer.save(out_path)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    s = summary
    err.print(
        f"saved {out_path}: {len(tr)} train / {len(va)} val texts, {s.steps} steps, val loss "
        f"{s.base_val_loss:.4f} → {s.best_val_loss:.4f} (cache {s.cache_seconds}s, fit {s.fit_seconds}s)"
    )


@app.command()
@cli_errors
def generate(
    prompt: list[str] = typer.Option(..., "--prompt", help="prompt text (repeatable)"),
    model: str = typer.Option("default", "--model"),
    steer_path: Optional[Path] = typer.Option(None, "--steer", help="a .safetensors steer"),
    strength: Optional[str] = typer.Option(None, "--strength", help="e.g. 3, -2 or name=2,other=-1"),
    num_samples: int = typer.Option(1, "--num-samples", min=1),
    max_new_tokens: int = typer.Option(30, "--max-new-tokens", min=1),
    top_p: float = typer.Option(0.9, "--top-p", min=0.0, max=1.0),
    temperature: float = typer.Option(1.0, "--temperature", min=1e-4),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Sample continuations, optionally steered at a strength."""
    from .generate import generate as run_generate
    from .lm import load_lm
    from .steer import Steer, parse_strengths

    steer = Steer.load(steer_path) if steer_path else None
    if steer is None and strength not in (None, "", "0"):
        raise ValueError("--strength needs --steer")
    values = parse_strengths(strength, steer) if steer is not None else None
    _runtime(threads)
    lm = load_lm(model, device)
    if steer is not None:
        steer.check_base(lm.fingerprint, source=str(steer_path))
    gens = run_generate(lm, prompt, steer, values, num_samples=num_samples, max_new_tokens=max_new_tokens,
                        top_p=top_p, temperature=temperature, seed=seed)
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
    from .config import load_params
    from .pipeline import prepare_stage

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
    from .config import load_params
    from .pipeline import evaluate_stage

    doc = evaluate_stage(load_params(params_file), steer_name, champion=champion, progress=not quiet,
                         log=lambda m: err.print(m))
    err.print(f"{steer_name}: {json.dumps(doc['headline'], default=float)}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
