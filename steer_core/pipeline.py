"""The pipeline's stages as plain functions: prepare → train → evaluate, one steer at a time.

``steer prepare|train|evaluate NAME`` (and so ``dvc.yaml``) and the Prefect tasks call exactly these, so the DVC
stages and the scheduled flow run the same code. Paths follow one layout under the project root::

    data/prepared/<steer>/{train,val}.jsonl, card.json     data/prompts/<steer>.jsonl
    artifacts/steers/<steer>.safetensors (+ .json card)    metrics/<steer>.json
    plots/<steer>/{control,fluency}.{csv,png}              reports/<steer>.html (+ .samples.jsonl)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import Params, SteerSpec
from .lm import LoadedLM, load_lm, set_threads
from .report import render_html, write_atomic, write_plot_data, write_pngs
from .steer import Steer


@dataclass(frozen=True)
class SteerPaths:
    """Where one steer's files live under the project root."""

    root: Path
    name: str

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared" / self.name

    @property
    def prompts(self) -> Path:
        return self.root / "data" / "prompts" / f"{self.name}.jsonl"

    @property
    def data_card(self) -> Path:
        return self.prepared / "card.json"

    @property
    def steer(self) -> Path:
        return self.root / "artifacts" / "steers" / f"{self.name}.safetensors"

    @property
    def steer_card(self) -> Path:
        return self.steer.with_suffix(".json")

    @property
    def work(self) -> Path:
        return self.root / "artifacts" / "work" / self.name

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / f"{self.name}.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots" / self.name

    @property
    def report(self) -> Path:
        return self.root / "reports" / f"{self.name}.html"

    @property
    def samples(self) -> Path:
        return self.root / "reports" / f"{self.name}.samples.jsonl"

    @property
    def explain(self) -> Path:
        return self.root / "reports" / f"{self.name}.explain.json"


def steer_spec(params: Params, name: str) -> SteerSpec:
    if name not in params.steers:
        raise KeyError(f"no steer named {name!r} in params (configured: {sorted(params.steers)})")
    return params.steers[name]


def runtime_lm(params: Params, lm: LoadedLM | None = None) -> LoadedLM:
    """The base model for a run (loaded once per process and shared by every steer)."""
    if lm is not None:
        return lm
    set_threads(params.runtime.threads)
    return load_lm(params.model, params.runtime.device)


def read_jsonl(path: Path) -> list[dict]:
    """A stage input; a missing one names the stage to run first."""
    from .data import load_jsonl

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the previous stage first")
    return load_jsonl(path)


# --------------------------------------------------------------------------------------------- prepare
def prepare_stage(params: Params, name: str, root: Path = Path("."), lm: LoadedLM | None = None):
    """Build the training / validation sets, the evaluation prompts and the data card for one steer."""
    from .data import prepare

    spec = steer_spec(params, name)
    paths = SteerPaths(Path(root), name)
    generate_fn = None
    if _needs_lm(spec.data.source):
        from .generate import generate

        model = runtime_lm(params, lm)

        def generate_fn(prompts: list[str], max_new_tokens: int) -> list[str]:
            return [g.text for g in generate(model, prompts, max_new_tokens=max_new_tokens,
                                             seed=params.runtime.seed)]

    return prepare(spec.data, spec.prompts, paths.prepared, paths.prompts, paths.data_card,
                   generate_fn=generate_fn)


def _needs_lm(source) -> bool:
    kind = getattr(source, "kind", None)
    return kind == "generated" or (kind == "classifier" and getattr(source.texts, "kind", None) == "generated")


# --------------------------------------------------------------------------------------------- train
def steer_names(name: str, spec: SteerSpec) -> list[str]:
    return [name, "dummy"] if spec.train.dummy else [name]


def _values(rows: list[dict], n: int) -> torch.Tensor:
    return torch.tensor([[float(r["value"]), 1.0][:n] for r in rows]).reshape(-1, n)


def train_stage(
    params: Params, name: str, root: Path = Path("."), lm: LoadedLM | None = None, progress: bool = True
) -> Path:
    """Fit the steer on the prepared data; write the steer file and its card (atomically)."""
    spec = steer_spec(params, name)
    paths = SteerPaths(Path(root), name)
    train = read_jsonl(paths.prepared / "train.jsonl")
    val = read_jsonl(paths.prepared / "val.jsonl") if (paths.prepared / "val.jsonl").exists() else []
    card = json.loads(paths.data_card.read_text()) if paths.data_card.exists() else {}
    from .train import default_hidden_cache, fit_steer

    model = runtime_lm(params, lm)
    names = steer_names(name, spec)
    steer, summary = fit_steer(
        model, [r["text"] for r in train], _values(train, len(names)), [r["text"] for r in val],
        _values(val, len(names)), names, spec.train, seed=params.runtime.seed, work_dir=paths.work,
        hidden_cache_dir=default_hidden_cache(), progress=progress,
    )
    steer.metadata.update(steer=name, data_hash=card.get("content_hash"), labels=spec.data.labels)
    steer.save(paths.steer)
    write_atomic(paths.steer_card, json.dumps({k: v for k, v in steer.metadata.items()}, indent=2, default=str))
    shutil.rmtree(paths.work, ignore_errors=True)
    return paths.steer


# --------------------------------------------------------------------------------------------- evaluate
def evaluate_stage(
    params: Params,
    name: str,
    root: Path = Path("."),
    lm: LoadedLM | None = None,
    champion: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluate the candidate (and the champion, and the ActAdd baseline) on the same prompts in one run."""
    from .baselines import fit_actadd
    from .evaluate import System, evaluate

    spec = steer_spec(params, name)
    cfg = spec.evaluate
    paths = SteerPaths(Path(root), name)
    for need, stage in ((paths.prompts, "prepare"), (paths.steer, "train")):  # fail before loading the model
        if not need.is_file():
            raise FileNotFoundError(f"{need} not found: run the previous stage first (steer {stage} {name})")
    model = runtime_lm(params, lm)
    prompts = read_jsonl(paths.prompts)
    candidate = Steer.load(paths.steer, expect_fingerprint=model.fingerprint)
    systems = [System("candidate", cfg.strengths, steer=candidate)]
    if champion is not None:
        champ = Steer.load(champion, expect_fingerprint=model.fingerprint)
        systems.append(System("champion", cfg.strengths, steer=champ, meta={"path": str(champion)}))
    if cfg.activation_addition:
        train = read_jsonl(paths.prepared / "train.jsonl")[:256]
        actadd = fit_actadd(model, [r["text"] for r in train], [float(r["value"]) for r in train], cfg.actadd_layer)
        systems.append(System("actadd", cfg.actadd_strengths, actadd=actadd, meta={"layer": actadd.layer}))
    judge = model if cfg.judge == "base" else load_lm(cfg.judge, params.runtime.device)
    doc, samples = evaluate(model, prompts, systems, cfg, judge=judge, seed=params.runtime.seed,
                            progress=progress, log=log)
    doc["steer"] = name
    doc["steer_file"] = str(paths.steer)
    doc["base_model"] = model.spec
    doc["base_fingerprint"] = model.fingerprint
    write_plot_data(doc, paths.plots)
    pngs = write_pngs(doc, paths.plots)
    write_atomic(paths.samples, "".join(json.dumps(s.__dict__, ensure_ascii=False) + "\n" for s in samples))
    write_atomic(paths.report, render_html(name, doc, samples, pngs))
    from .explain import explain, write_explain_artifact

    write_explain_artifact(explain(candidate, model, name=name), paths.explain)
    write_atomic(paths.metrics, json.dumps(doc, indent=2, default=float))
    return doc
