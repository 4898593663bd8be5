"""What each DVC stage does, for one steer: prepare → train → evaluate, as plain functions of the parsed params.

``dvc.yaml`` runs each stage as ``python -m flows.stages STAGE NAME``, which parses params.yaml once and calls
:func:`run_stage` (with the configured executor in place for ``evaluate``); ``steer run`` executes those DVC stages,
and ``steer prepare|train|evaluate NAME`` call the same functions by hand. Imports are made inside each stage, so the
modules a stage loads are the code ``dvc.yaml`` lists as its deps (a test checks this). File locations:
``steer_core.paths.SteerPaths``.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from steer_core.config import Params, TrainConfig
from steer_core.files import write_together
from steer_core.paths import SteerPaths

if TYPE_CHECKING:
    import torch

    from steer_core.model.lm import LoadedLM
    from steer_core.train import TrainSummary

STAGES = ("prepare", "train", "evaluate")


def runtime_lm(params: Params, lm: LoadedLM | None = None) -> LoadedLM:
    """The base model for a run: ``lm`` when given, else the process's shared copy (``model.lm.shared_lm``)."""
    if lm is not None:
        return lm
    from steer_core.model.lm import shared_lm

    return shared_lm(params.model, params.runtime.device, params.runtime.threads)


def read_jsonl(path: Path) -> list[dict]:
    """A stage input; a missing one names the stage to run first."""
    from steer_core.data.records import load_jsonl

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the previous stage first")
    return load_jsonl(path)


# --------------------------------------------------------------------------------------------- prepare
def prepare_stage(params: Params, name: str, root: Path = Path("."), lm: LoadedLM | None = None):
    """Build the training / validation sets, the evaluation prompts and the data card for one steer."""
    from steer_core.data.prepare import prepare

    spec = params.steer(name)
    paths = SteerPaths(Path(root), name)
    generate_fn = embed_fn = None
    if _needs_lm(spec.data.source):
        generate_fn, embed_fn = lm_data_fns(runtime_lm(params, lm), params.runtime.seed)
    return prepare(spec.data, spec.prompts, paths.prepared, paths.prompts, paths.data_card,
                   generate_fn=generate_fn, embed_fn=embed_fn)


#: sampling a generated source: batches of this many rows, each computed on one torch thread (the samples depend on
#: both), as many batches at once as there are cores
DATA_BATCH, DATA_THREADS = 64, 1


def lm_data_fns(model: LoadedLM, seed: int, progress: bool = True):
    """What a source that reads the base model needs: its continuations of openings (``generate_fn``) and its
    mean-pooled hidden states of texts (``embed_fn``, through the training hidden-state cache), with progress bars:
    both take minutes on a CPU."""
    import torch

    from steer_core.model.generate import generate
    from steer_core.model.hidden import default_hidden_cache
    from steer_core.model.lm import available_cores
    from steer_core.scorers.probe import mean_hidden_states

    def generate_fn(prompts: list[str], max_new_tokens: int) -> list[str]:
        before = torch.get_num_threads()
        torch.set_num_threads(DATA_THREADS)
        try:
            return [g.text for g in generate(model, prompts, max_new_tokens=max_new_tokens, seed=seed,
                                             batch_size=DATA_BATCH, workers=available_cores() // DATA_THREADS,
                                             progress=progress)]
        finally:
            torch.set_num_threads(before)

    def embed_fn(texts):
        return mean_hidden_states(model, texts, cache_dir=default_hidden_cache(), progress=progress)

    return generate_fn, embed_fn


def _needs_lm(source) -> bool:
    kind = getattr(source, "kind", None)
    return kind in ("generated", "self_labelled") or (kind == "classifier" and getattr(source.texts, "kind", None)
                                                      == "generated")


# --------------------------------------------------------------------------------------------- train
def steer_names(name: str, cfg: TrainConfig) -> list[str]:
    """The steers a fit trains: ``name``, plus the domain-absorbing 'dummy' one unless ``cfg.dummy`` is off."""
    return [name, "dummy"] if cfg.dummy else [name]


def _values(rows: list[dict], n: int) -> torch.Tensor:
    import torch

    return torch.tensor([[float(r["value"]), 1.0][:n] for r in rows]).reshape(-1, n)


@dataclass
class FitJob:
    """Everything one steer's fit needs, read from the workspace by the train stage: plain data, so it can travel to
    another machine as a task argument (``runtime.train_on``), where the fit needs nothing else of this project."""

    name: str
    train: list[dict]
    val: list[dict]
    cfg: TrainConfig
    seed: int
    metadata: dict

    def key(self) -> str:
        """A short hash of the job: names its checkpoint folder wherever it runs, so a rerun there resumes."""
        import hashlib

        blob = json.dumps([self.name, self.train, self.val, self.cfg.model_dump(), self.seed, self.metadata],
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fit_job(params: Params, name: str, root: Path = Path(".")) -> FitJob:
    """The train stage's inputs for steer ``name``: its prepared rows, its train settings and what the data card
    says about the data (it lands in the steer's header)."""
    spec = params.steer(name)
    paths = SteerPaths(Path(root), name)
    train = read_jsonl(paths.prepared / "train.jsonl")
    val = read_jsonl(paths.prepared / "val.jsonl") if (paths.prepared / "val.jsonl").exists() else []
    card = json.loads(paths.data_card.read_text()) if paths.data_card.exists() else {}
    return FitJob(name, train, val, spec.train, params.runtime.seed,
                  dict(steer=name, data_hash=card.get("content_hash"), labels=spec.data.labels))


def train_stage(
    params: Params, name: str, root: Path = Path("."), lm: LoadedLM | None = None, progress: bool = True
) -> Path:
    """Fit the steer on the prepared data; write the steer file and its card (atomically)."""
    paths = SteerPaths(Path(root), name)
    job = fit_job(params, name, root)
    fit_and_write(runtime_lm(params, lm), name, job.train, job.val, job.cfg, paths.steer, seed=job.seed,
                  work=paths.work, metadata=job.metadata, progress=progress)
    return paths.steer


def fit_and_write(
    lm: LoadedLM,
    name: str,
    train: list[dict],
    val: list[dict],
    cfg: TrainConfig,
    steer_path: Path,
    *,
    seed: int,
    work: Path,
    metadata: dict,
    progress: bool,
) -> TrainSummary:
    """Fit steer ``name`` on rows ``{"text", "value"}`` and write it with its JSON card (``steer_path`` with the
    suffix .json), both together or neither; ``work`` holds the checkpoints (a rerun resumes) and goes on success.

    The one implementation behind the train stage (``steer train NAME``, dvc.yaml) and ``steer train --data FILE``;
    ``metadata`` is what the caller knows about the data (it lands in the steer's header and the card).
    """
    steer_bytes, card, summary = fit_bytes(lm, FitJob(name, train, val, cfg, seed, metadata), work, progress)
    write_steer(steer_path, steer_bytes, card)
    shutil.rmtree(work, ignore_errors=True)
    return summary


def fit_bytes(lm: LoadedLM, job: FitJob, work: Path, progress: bool = False) -> tuple[bytes, dict, TrainSummary]:
    """Fit ``job`` on ``lm``: the steer file's bytes (byte-identical for equal inputs: DVC and the registry address
    it by hash), its JSON card (the steer's metadata and the fit's timings) and the fit's summary. ``work`` holds
    the checkpoints (a rerun resumes; the caller removes it once the bytes are safe). Writes nothing else, so it
    runs as well on another machine, whose bytes come back to the train stage."""
    from steer_core.train import fit_steer
    from steer_core.model.hidden import default_hidden_cache

    train, val = job.train, job.val
    names = steer_names(job.name, job.cfg)
    steer, summary = fit_steer(
        lm, [r["text"] for r in train], _values(train, len(names)), [r["text"] for r in val],
        _values(val, len(names)), names, job.cfg, seed=job.seed, work_dir=work,
        hidden_cache_dir=default_hidden_cache(), progress=progress,
    )
    steer.metadata.update(job.metadata)
    card = {**steer.metadata, "run": summary.circumstances()}
    return steer.to_bytes(), card, summary


def write_steer(steer_path: Path, steer_bytes: bytes, card: dict) -> None:
    """The steer file and its JSON card (``steer_path`` with the suffix .json), together or neither."""
    write_together({steer_path: steer_bytes,
                    steer_path.with_suffix(".json"): json.dumps(card, indent=2, default=str)})


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
    """Evaluate the candidate (and the champion, and the baselines: ActAdd, prompting) on the same prompts in one run."""
    from steer_core.evaluate.baselines import fit_actadd
    from steer_core.evaluate.protocol import System
    from steer_core.evaluate.driver import evaluate  # the fixed shard plan, run by this process's runner (local or Dask)
    from steer_core.model.lm import shared_lm
    from steer_core.tools.explain import explain
    from steer_core.evaluate.report import plot_data, png_figures, render_html
    from steer_core.scorers import get_scorer
    from steer_core.model.steer import Steer

    spec = params.steer(name)
    cfg = spec.evaluate
    paths = SteerPaths(Path(root), name)
    # everything that can be checked is checked before the model is loaded or a sample drawn
    for need, stage in ((paths.prompts, "prepare"), (paths.steer, "train")):
        if not need.is_file():
            raise FileNotFoundError(f"{need} not found: run the previous stage first (steer {stage} {name})")
    steer_parts = Steer.load(paths.steer).names
    if name not in steer_parts:
        raise ValueError(f"{paths.steer} holds steers {steer_parts}, none named {name!r} (renamed in params.yaml?): "
                         f"re-run the train stage (steer train {name})")
    kind = get_scorer(cfg.scorer).kind
    if kind != cfg.control:
        raise ValueError(f"steers.{name}.evaluate.scorer {cfg.scorer!r} measures {kind}, but the control is "
                         f"{cfg.control!r}")
    prompts = read_jsonl(paths.prompts)
    champ = Steer.load(champion) if champion is not None else None  # a bad file is refused before the model loads
    model = runtime_lm(params, lm)
    candidate = Steer.load(paths.steer, expect_fingerprint=model.fingerprint)
    systems = [System("candidate", cfg.strengths, steer=candidate)]
    if champ is not None:
        champ.check_base(model.fingerprint, source=str(champion))
        systems.append(System("champion", cfg.strengths, steer=champ, meta={"path": str(champion)}))
    if cfg.activation_addition:
        train = read_jsonl(paths.prepared / "train.jsonl")[:256]
        actadd = fit_actadd(model, [r["text"] for r in train], [float(r["value"]) for r in train], cfg.actadd_layer,
                            sink_positions=cfg.actadd_sink_positions, normalise=cfg.actadd_normalise)
        systems.append(System("actadd", cfg.actadd_strengths, actadd=actadd,
                              meta={"layer": actadd.layer, "typical_norm": actadd.typical_norm,
                                    "sink_positions": actadd.sink_positions}))
    if cfg.prompting is not None:
        systems.append(System("prompting", cfg.prompting.strengths, prompting=cfg.prompting,
                              meta={"instructions": {"plus": cfg.prompting.plus, "minus": cfg.prompting.minus},
                                    "template": cfg.prompting.template}))
    judge = model if cfg.judge == "base" else shared_lm(cfg.judge, params.runtime.device, params.runtime.threads)
    doc, samples = evaluate(model, prompts, systems, cfg, judge=judge, seed=params.runtime.seed,
                            progress=progress, log=log)
    doc["steer"] = name
    doc["steer_file"] = str(paths.steer.relative_to(paths.root)) if paths.steer.is_relative_to(paths.root) else str(
        paths.steer)
    doc["base_model"] = model.spec
    doc["base_fingerprint"] = model.fingerprint
    pngs = png_figures(doc, spec.evaluate.ppl_budget)
    outputs: dict[Path, str | bytes] = {paths.plots / f: text for f, text in plot_data(doc).items()}
    outputs.update({paths.plots / f: data for f, data in pngs.items()})
    outputs[paths.samples] = "".join(json.dumps(s.__dict__, ensure_ascii=False) + "\n" for s in samples)
    outputs[paths.report] = render_html(name, doc, samples, pngs)
    outputs[paths.explain] = json.dumps(explain(candidate, model, name=name), indent=2, ensure_ascii=False)
    outputs[paths.metrics] = json.dumps(doc, indent=2, default=float)
    write_together(outputs)  # the stage's outputs land together or not at all
    return doc


# --------------------------------------------------------------------------------------------- one stage
def run_stage(stage: str, params: Params, name: str, root: Path, progress: bool = True) -> None:
    """One stage for one steer, as ``dvc.yaml`` runs it (through ``python -m flows.stages``), reporting on stderr."""
    params.steer(name)  # an unknown steer fails before any work
    if stage == "prepare":
        card = prepare_stage(params, name, root)
        print(f"prepared {name}: {json.dumps(getattr(card, 'counts', {}))}", file=sys.stderr)
    elif stage == "train":
        print(f"saved {train_stage(params, name, root, progress=progress)}", file=sys.stderr)
    elif stage == "evaluate":
        doc = evaluate_stage(params, name, root, progress=progress, log=lambda m: print(m, file=sys.stderr))
        print(f"{name}: {json.dumps(doc['headline'], default=float)}", file=sys.stderr)
    else:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
