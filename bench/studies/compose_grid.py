"""Composing steers: sentiment ∈ {−s, 0, +s} × detox ∈ {0, +t} through ONE composed steer, on the default model.

Loads the two pipeline steers (artifacts/steers/{sentiment,detox}.safetensors; trained here with
``steer prepare NAME && steer train NAME --quiet`` when missing), composes them with
``steer_core.tools.algebra.compose`` (names ``sentiment`` and ``detox``, each part's strength its own knob), samples every
cell of the grid in one batched sweep (per-row steer values) and scores each cell with the evaluation harness's
scorers and per-prompt metrics: positive rate (VADER), average max toxicity (profanity), judge perplexity (the
unsteered base model) and distinct-2; bootstrap intervals over prompts for the two style metrics.

Prompts: half neutral news prefixes (data/prompts/sentiment.jsonl, set "neutral") and half eliciting prefixes of
profane tweets (data/prompts/detox.jsonl), so that both styles have room to move.

    source env.sh && .venv/bin/python bench/compose_grid.py [--s 4 --t 4 --prompts 8 --samples 3 --tokens 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def ensure_steer(name: str) -> Path:
    path = ROOT / "artifacts" / "steers" / f"{name}.safetensors"
    if not path.is_file():
        steer_cli = str(Path(sys.executable).with_name("steer"))
        print(f"# {path.relative_to(ROOT)} missing: steer prepare {name} && steer train {name}", flush=True)
        subprocess.run([steer_cli, "prepare", name], cwd=ROOT, check=True)
        subprocess.run([steer_cli, "train", name, "--quiet"], cwd=ROOT, check=True)
    return path


def grid_prompts(n: int) -> list[dict]:
    """n prompts: ⌈n/2⌉ neutral news prefixes and ⌊n/2⌋ eliciting (profane-tweet) prefixes."""
    from steer_core.stages import read_jsonl

    for name in ("sentiment", "detox"):
        if not (ROOT / "data" / "prompts" / f"{name}.jsonl").is_file():
            subprocess.run([str(Path(sys.executable).with_name("steer")), "prepare", name], cwd=ROOT, check=True)
    neutral = [r for r in read_jsonl(ROOT / "data" / "prompts" / "sentiment.jsonl") if r["set"] == "neutral"]
    eliciting = [r for r in read_jsonl(ROOT / "data" / "prompts" / "detox.jsonl") if r["set"] == "eliciting"]
    k = (n + 1) // 2
    return neutral[:k] + eliciting[: n - k]


def run_grid(lm, steer, prompts: list[dict], cells: list[tuple[float, float]], samples: int, tokens: int,
             seed: int = 0, n_boot: int = 1000) -> list[dict]:
    """Every cell (sentiment value, detox value) of the composed steer, sampled in one batched sweep and scored."""
    import numpy as np
    from steer_core.evaluate import metrics as M
    from steer_core.evaluate.protocol import Sample, score_samples
    from steer_core.evaluate.document import by_prompt, per_prompt_metrics
    from steer_core.model.generate import generate
    from steer_core.scorers import get_scorer

    texts = [p["prompt"] for p in prompts]
    out = []
    vader, profanity = get_scorer("vader"), get_scorer("profanity")
    all_samples: list[tuple[tuple[float, float], list[Sample]]] = []
    for sv, dv in cells:
        vec = steer.values_tensor({"sentiment": sv, "detox": dv})
        gens = generate(lm, texts, steer, vec, num_samples=samples, max_new_tokens=tokens, seed=seed, batch_size=32)
        cell = [Sample("composed", prompts[g.prompt_index]["set"], g.prompt_index, g.prompt, sv, g.text)
                for g in gens]
        score_samples(cell, vader, lm)  # control = VADER compound; judge perplexity from the unsteered model
        all_samples.append(((sv, dv), cell))
    for (sv, dv), cell in all_samples:
        groups = by_prompt(cell)
        sent = per_prompt_metrics(groups, "sentiment", vader.cuts)
        tox_scores = profanity.score([s.text for s in cell])
        tox_cell = [Sample(s.system, s.prompt_set, s.prompt_index, s.prompt, s.strength, s.text, t, s.ppl)
                    for s, t in zip(cell, tox_scores)]
        tox = per_prompt_metrics(by_prompt(tox_cell), "toxicity", profanity.cuts)
        row = {"sentiment": sv, "detox": dv,
               "positive_rate": float(np.mean(sent["positive_rate"])),
               "negative_rate": float(np.mean(sent["negative_rate"])),
               "avg_max_toxicity": float(np.mean(tox["avg_max_toxicity"])),
               "toxicity_probability": float(np.mean(tox["toxicity_probability"])),
               "ppl": float(np.exp(np.nanmean(sent["log_ppl"]))),
               "distinct_2": float(np.mean(sent["distinct_2"])),
               "positive_rate_ci": list(M.bootstrap_ci(sent["positive_rate"], n_boot=n_boot, seed=seed)),
               "avg_max_toxicity_ci": list(M.bootstrap_ci(tox["avg_max_toxicity"], n_boot=n_boot, seed=seed)),
               "examples": [s.prompt + "|" + s.text for s in cell[: 2 * samples : samples]]}
        out.append(row)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| sentiment | detox | positive rate (VADER) | avg max toxicity (profanity) | judge perplexity | distinct-2 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        pci, tci = r["positive_rate_ci"], r["avg_max_toxicity_ci"]
        lines.append(f"| {r['sentiment']:+g} | {r['detox']:+g} | {r['positive_rate']:.2f} [{pci[0]:.2f}, {pci[1]:.2f}] "
                     f"| {r['avg_max_toxicity']:.3f} [{tci[0]:.3f}, {tci[1]:.3f}] | {r['ppl']:.1f} "
                     f"| {r['distinct_2']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--s", type=float, default=4.0, help="sentiment strength magnitude")
    ap.add_argument("--t", default="4", help="detox strength(s): one value, or a comma list for more columns")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the grid as JSON here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from steer_core.tools.algebra import compose
    from steer_core.model.lm import load_lm
    from steer_core.model.steer import Steer

    paths = {n: ensure_steer(n) for n in ("sentiment", "detox")}
    t0 = time.perf_counter()
    lm = load_lm("default", device="cpu")
    parts = [Steer.load(paths[n], expect_fingerprint=lm.fingerprint) for n in ("sentiment", "detox")]
    steer = compose([(parts[0], 1.0), (parts[1], 1.0)], ["sentiment", "detox"])
    assert steer.names == ["sentiment", "detox"], steer.names
    prompts = grid_prompts(args.prompts)
    ts = [float(x) for x in str(args.t).split(",") if x.strip()]
    cells = [(sv, dv) for dv in [0.0, *ts] for sv in (-args.s, 0.0, args.s)]
    print(f"# composed {steer.names} from {[str(p.relative_to(ROOT)) for p in paths.values()]}; "
          f"{len(prompts)} prompts ({sum(p['set'] == 'neutral' for p in prompts)} neutral, "
          f"{sum(p['set'] == 'eliciting' for p in prompts)} eliciting) × {args.samples} samples × "
          f"{args.tokens} tokens, top-p 0.9, seed {args.seed}", flush=True)
    rows = run_grid(lm, steer, prompts, cells, args.samples, args.tokens, args.seed)
    print(table(rows))
    print(f"# {time.perf_counter() - t0:.0f} s")
    for r in rows:
        print(f"# ({r['sentiment']:+g}, {r['detox']:+g}) e.g. {r['examples'][0]!r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"s": args.s, "t": ts, "prompts": prompts, "samples": args.samples,
                                         "tokens": args.tokens, "seed": args.seed, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
