"""New tokens per second: steered vs unsteered sampling (batch 16, same prompts, same seeds, interleaved).

Steering goes through the same hook as ``steer_core.model.generate.generate``: the ``steering`` context (a forward
pre-hook on the output layer) around Hugging Face ``generate`` with the KV cache. Every side samples with HF's own
top-p 0.9, so only the hook differs between sides (``generate()``'s faster nucleus sampler is measured in
``eval_speed.py``). To make every run
produce exactly the same number of tokens, ``min_new_tokens = max_new_tokens`` (eos is suppressed until then),
so new tokens = batch × max_new_tokens on every side.

Sides, rotated within each repetition so load drift hits all of them alike:
- unsteered: no hook;
- steered: a random non-zero full-rank steer (2 steers, sentiment = 2, dummy = 0), one value vector for the batch;
- steered per-row: the same steer with a different strength on every row (a strength sweep in one batch).

    python bench/generate_speed.py [--reps 4] [--batch 16] [--new-tokens 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import NEUTRAL_PROMPTS as PROMPTS, header, pin_threads  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each side (rotated order)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    pin_threads()
    import os

    import torch

    from steer_core.model.generate import steering
    from steer_core.model.lm import load_lm
    from steer_core.model.steer import Steer

    header("generate_speed: steered vs unsteered sampling")
    lm = load_lm("default", device="cpu")
    tok = lm.tokenizer
    prompts = (PROMPTS * ((args.batch + len(PROMPTS) - 1) // len(PROMPTS)))[: args.batch]
    enc = tok(prompts, return_tensors="pt", padding=True)

    g = torch.Generator().manual_seed(1234)
    steer = Steer(["sentiment", "dummy"], lm.dim, None, 1e-3)
    with torch.no_grad():
        steer.W.copy_(torch.randn(steer.W.shape, generator=g) * 0.5)  # random, non-zero
    steer.metadata["base_fingerprint"] = lm.fingerprint
    one = steer.values_tensor({"sentiment": 2.0, "dummy": 0.0})
    rows = torch.stack([steer.values_tensor({"sentiment": s, "dummy": 0.0})
                        for s in torch.linspace(-4, 4, args.batch).tolist()])

    def run(side: str, seed: int) -> tuple[float, int, float]:
        s, v = {"unsteered": (None, None), "steered": (steer, one), "steered per-row": (steer, rows)}[side]
        torch.manual_seed(seed)
        t, c = time.perf_counter(), time.process_time()
        with torch.no_grad(), steering(lm, s, v):
            out = lm.model.generate(**enc, do_sample=True, top_p=0.9, temperature=1.0, top_k=0,
                                    max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        new = out.shape[0] * (out.shape[1] - enc["input_ids"].shape[1])
        return dt, new, dc

    sides = ["unsteered", "steered", "steered per-row"]
    print(f"# batch {args.batch} x {args.new_tokens} new tokens (min_new_tokens = max_new_tokens), top-p 0.9, "
          f"prompt width {enc['input_ids'].shape[1]} tokens, {args.reps} reps per side, rotated order")
    run("steered", 0)  # warm-up (not timed)
    res: dict[str, list[tuple[float, int, float]]] = {s: [] for s in sides}
    for rep in range(args.reps):
        order = sides[rep % 3:] + sides[: rep % 3]
        if rep % 2:
            order = order[::-1]
        for side in order:
            dt, new, dc = run(side, seed=rep)
            res[side].append((dt, new, dc))
            print(f"  rep {rep}  {side:<16} {dt:6.2f} s  {new} new tokens  {new / dt:6.1f} tok/s  "
                  f"(CPU {dc:6.2f} s: {new / dc:6.1f} tok/CPU-s)", flush=True)

    # the hook alone: what one decoding step adds (16 rows, one position)
    h = torch.randn(args.batch, 1, lm.dim)
    hook_ms_by = {}
    with torch.no_grad():
        for side, v in (("steered", one), ("steered per-row", rows)):
            steer.apply(h, v)
            t = time.perf_counter()
            for _ in range(200):
                steer.apply(h, v)
            hook_ms = (time.perf_counter() - t) / 200 * 1e3
            hook_ms_by[side] = hook_ms
            print(f"# hook alone ({'one vector' if v.dim() == 1 else 'per-row'}): {hook_ms:.3f} ms per decoding step")

    print(f"\n## results: {args.reps} reps per side; 1 torch thread; load average now {os.getloadavg()[0]:.2f}")
    print("wall = new tokens / wall seconds; CPU = new tokens / this process's CPU seconds (1 thread: not stretched "
          "by other jobs); overhead = median over reps of (unsteered rate / steered rate - 1), same-rep pairs; "
          "hook = (hook ms per decoding step x new tokens) / median unsteered CPU time")
    print(f"{'side':<18} {'wall tok/s':>10} {'min':>6} {'max':>6} {'CPU tok/s':>9} {'min':>6} {'max':>6} "
          f"{'overhead wall':>13} {'CPU':>6} {'hook':>6}")
    base_w = [new / dt for dt, new, _ in res["unsteered"]]
    base_c = [new / dc for _, new, dc in res["unsteered"]]
    base_cpu_s = statistics.median(dc for _, _, dc in res["unsteered"])
    out = {"batch": args.batch, "new_tokens": args.new_tokens, "reps": args.reps, "sides": {}}
    for side in sides:
        w = [new / dt for dt, new, _ in res[side]]
        c = [new / dc for _, new, dc in res[side]]
        ov_w = statistics.median(b / t - 1 for b, t in zip(base_w, w))
        ov_c = statistics.median(b / t - 1 for b, t in zip(base_c, c))
        est = hook_ms_by.get(side, 0.0) * args.new_tokens / 1e3 / base_cpu_s  # one hook call per new token
        print(f"{side:<18} {statistics.median(w):>10.1f} {min(w):>6.1f} {max(w):>6.1f} {statistics.median(c):>9.1f} "
              f"{min(c):>6.1f} {max(c):>6.1f} {ov_w * 100:>12.1f}% {ov_c * 100:>5.1f}% {est * 100:>5.2f}%")
        out["sides"][side] = {"wall_tokens_per_second": w, "cpu_tokens_per_second": c, "overhead_wall": ov_w,
                              "overhead_cpu": ov_c, "overhead_from_hook": est}
    print("issue target: overhead <= 5 %")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
