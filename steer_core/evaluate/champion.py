"""The champion beside the candidate: every metric that gates a promotion is computed for both on the same prompts
with the same per-(prompt, sample) random numbers, and against the very base samples the candidate's evaluation
scored. Called by the promotion job after DVC's evaluate stage, when the registry has a champion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from steer_core.config import Params
from steer_core.data.records import load_jsonl
from steer_core.evaluate.document import headline
from steer_core.evaluate.driver import evaluate  # the candidate's shards, so a re-evaluated steer draws the same samples
from steer_core.evaluate.protocol import Sample, System
from steer_core.model.lm import LoadedLM, shared_lm
from steer_core.model.steer import Steer
from steer_core.paths import SteerPaths


def compare_with_champion(
    params: Params,
    name: str,
    champion: Path,
    root: Path = Path("."),
    lm: LoadedLM | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """The candidate's evaluation with the champion's added, sampled on the same prompts with the same
    per-(prompt, sample) random numbers and judged against the very base samples the evaluate stage scored.

    Not a DVC stage: its input (the registry's champion) is not a file DVC can track. The candidate is not sampled
    again; only the champion's non-zero strengths are. Returns the merged document (schema of ``evaluate``);
    writes nothing into the workspace, so ``metrics/<steer>.json`` stays the candidate's (``dvc metrics diff``).
    """
    spec = params.steer(name)
    cfg = spec.evaluate
    paths = SteerPaths(Path(root), name)
    for need in (paths.metrics, paths.samples, paths.prompts):
        if not need.is_file():
            raise FileNotFoundError(f"{need} not found: run the evaluate stage first (steer evaluate {name})")
    doc = json.loads(paths.metrics.read_text())
    base = [Sample(**row) for row in load_jsonl(paths.samples) if row["system"] == "base"]
    model = lm or shared_lm(params.model, params.runtime.device, params.runtime.threads)
    if doc.get("base_fingerprint") != model.fingerprint:
        raise ValueError(f"{paths.metrics} was evaluated on another base model than {params.model!r}: re-run the "
                         f"evaluate stage")
    champ = Steer.load(champion, expect_fingerprint=model.fingerprint)
    judge = model if cfg.judge == "base" else shared_lm(cfg.judge, params.runtime.device, params.runtime.threads)
    champ_doc, _ = evaluate(model, load_jsonl(paths.prompts), [System("champion", cfg.strengths, steer=champ)], cfg,
                            judge=judge, seed=params.runtime.seed, progress=progress, log=log, base_samples=base)
    doc["systems"]["champion"] = {**champ_doc["systems"]["champion"], "path": str(champion)}
    doc["headline"] = headline(doc)
    return doc
