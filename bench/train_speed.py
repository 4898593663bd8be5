"""Time to reach the same validation loss: our cached fit (steer_core.train.fit_steer) vs the paper's recipe.

Reference (LM-Steer's own training loop, reproduced faithfully): every optimizer step runs the frozen LM forward
on a batch of 32 texts padded to the batch's longest (max_length 64, right padding, pad = eos), labels =
input_ids, so the loss also counts the padding positions; the steer is applied to the final hidden state before
the output layer; Adam lr 1e-2, ε = 1e-3.

Ours: ``fit_steer`` with its defaults (hidden states computed once, token-packed batches of
``tokens_per_batch`` real tokens, padding never computed or counted). Its time includes the one-time caching
of the train and val hidden states (the "cold" figure); the "warm" figure is the same fit when the hidden
states are already on disk (``hidden_cache_dir`` from an earlier fit on the same texts).

Both sides: same 300 train / 60 val airline tweets, same model, ε, optimizer, lr, seed, same steer init (full
rank, W = 0), same two steers (sentiment ±1 and the dummy held at +1). Validation loss is computed for both with
the same function, ``steer_core.train.evaluate_loss``, on the same val hidden-state cache (real tokens only),
after every optimizer step; that evaluation is not timed on either side.

Method: run the reference for a fixed budget (2 epochs), target = its final val loss; then run ours until its
val loss first reaches ≤ target. Both run back to back in this one process, with one torch thread.

Also reported: the process's CPU time (one thread, so colleagues' jobs on the box do not stretch it) and two
"what-if" rows that are NOT product code: fit_steer with a smaller hidden-state caching batch, and a prototype of a
streamed first epoch (``streamed_fit`` below); see bench/README.md.

    python bench/train_speed.py [--rounds 2] [--epochs 2] [--tokens-per-batch 2048] [--extra-tpb 512]
                                [--whatif-cache-batch 512] [--whatif-tpb 512] [--no-warm] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import airline_tweets, header, pin_threads  # noqa: E402

NAMES = ["sentiment", "dummy"]
EPSILON = 1e-3
LR = 1e-2
MAX_LENGTH = 64
REF_BATCH = 32


class _Reached(Exception):
    pass


class Clock:
    """Wall time and this process's CPU time, both with pauses (for the untimed val evaluations).

    With one torch thread, CPU time is what the work costs whatever the other processes on the machine do
    (wall time stretches when colleagues' jobs take the cores); both are reported.
    """

    def __init__(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.paused = self.cpaused = 0.0
        self._p = self._c = None

    def pause(self) -> None:
        self._p, self._c = time.perf_counter(), time.process_time()

    def resume(self) -> None:
        self.paused += time.perf_counter() - self._p
        self.cpaused += time.process_time() - self._c
        self._p = self._c = None

    def now(self) -> float:
        return time.perf_counter() - self.t0 - self.paused

    def cpu(self) -> float:
        return time.process_time() - self.c0 - self.cpaused


# --------------------------------------------------------------------------------------------- reference
def reference_fit(lm, texts, values, head, val_cache, val_values, epochs: int, seed: int = 0):
    """The paper's loop: LM forward on every step, 32 texts padded to the longest, pad positions in the loss."""
    import torch

    from steer_core.model.steer import Steer
    from steer_core.train import evaluate_loss

    torch.manual_seed(seed)
    steer = Steer(NAMES, lm.dim, None, EPSILON)
    opt = torch.optim.Adam(steer.parameters(), lr=LR)
    tok = lm.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "right"  # the reference (GPT-2 tokenizer) pads on the right
    state = {"values": None}

    def pre_hook(module, args):
        return (steer.apply(args[0], state["values"]),) + tuple(args[1:])

    handle = lm.output_embeddings.register_forward_pre_hook(pre_hook)
    curve = [(0, 0.0, evaluate_loss(head, steer, val_cache, val_values), 0.0)]
    step_times, step_cpu, padded_tokens, real_tokens = [], [], 0, 0
    clock = Clock()
    try:
        step = 0
        for epoch in range(epochs):
            order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
            for b in range(0, len(texts), REF_BATCH):
                ts, tc = time.perf_counter(), time.process_time()
                idx = order[b : b + REF_BATCH]
                enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                          max_length=MAX_LENGTH)
                state["values"] = values[idx]
                opt.zero_grad(set_to_none=True)
                out = lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                               labels=enc["input_ids"])  # labels = input_ids: padding counted, as in the paper
                out.loss.backward()
                opt.step()
                step_times.append(time.perf_counter() - ts)
                step_cpu.append(time.process_time() - tc)
                padded_tokens += enc["input_ids"].numel()
                real_tokens += int(enc["attention_mask"].sum())
                step += 1
                clock.pause()
                now, cpu = clock.now(), clock.cpu()
                curve.append((step, now, evaluate_loss(head, steer, val_cache, val_values), cpu))
                clock.resume()
                print(f"  ref  step {step:3d}  t={curve[-1][1]:7.1f}s  val={curve[-1][2]:.4f}  "
                      f"({enc['input_ids'].shape[0]}x{enc['input_ids'].shape[1]})", flush=True)
    finally:
        handle.remove()
        tok.padding_side = old_side
    return {"curve": curve, "seconds": clock.now(), "cpu_seconds": clock.cpu(), "steps": len(step_times),
            "step_times": step_times, "step_cpu": step_cpu,
            "padded_tokens": padded_tokens, "real_tokens": real_tokens}


# --------------------------------------------------------------------------------------------- ours
def ours_fit(lm, train_texts, train_values, val_texts, val_values, head, val_cache, target: float,
             tokens_per_batch: int, max_epochs: int, hidden_cache_dir=None, seed: int = 0,
             cache_batch_tokens: int | None = None):
    """fit_steer until its val loss (same evaluate_loss on the same val cache) first reaches ≤ target.

    ``cache_batch_tokens`` (what-if only) overrides cache_hidden_states' ``batch_tokens`` default during the fit.
    """
    import functools

    import steer_core.model.hidden as H
    import steer_core.train as T
    from steer_core.config import TrainConfig

    cfg = TrainConfig(rank=None, epsilon=EPSILON, optimizer="adam", lr=LR, epochs=max_epochs,
                      tokens_per_batch=tokens_per_batch, max_length=MAX_LENGTH, patience=0)
    captured: dict = {}
    orig_opt, orig_cached, orig_cache = T._optimizer, T.cached_hidden_states, H.cache_hidden_states

    def capture_optimizer(steer, c):  # lets on_step see the steer being fitted (fit_steer itself is unchanged)
        captured["steer"] = steer
        return orig_opt(steer, c)

    def timed_cached(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        out = orig_cached(*a, **k)
        captured["cache_seconds"] = captured.get("cache_seconds", 0.0) + time.perf_counter() - t
        captured["cache_cpu"] = captured.get("cache_cpu", 0.0) + time.process_time() - c
        captured["cache_tokens"] = captured.get("cache_tokens", 0) + out[0].tokens
        return out

    clock = Clock()
    curve = [(0, 0.0, float("nan"), 0.0)]
    last = {"t": None, "c": None}
    step_times, step_cpu = [], []

    def on_step(step: int, loss: float) -> None:
        now, cpu = clock.now(), clock.cpu()
        if last["t"] is not None:
            step_times.append(now - last["t"])
            step_cpu.append(cpu - last["c"])
        clock.pause()
        v = T.evaluate_loss(head, captured["steer"], val_cache, val_values)
        curve.append((step, now, v, cpu))
        print(f"  ours step {step:3d}  t={now:7.1f}s  val={v:.4f}", flush=True)
        clock.resume()
        last["t"], last["c"] = clock.now(), clock.cpu()
        if v <= target:
            raise _Reached

    T._optimizer, T.cached_hidden_states = capture_optimizer, timed_cached
    if cache_batch_tokens:
        H.cache_hidden_states = functools.partial(orig_cache, batch_tokens=cache_batch_tokens)
    reached = False
    try:
        clock = Clock()
        T.fit_steer(lm, train_texts, train_values, val_texts, val_values, NAMES, cfg, seed=seed,
                    hidden_cache_dir=hidden_cache_dir, on_step=on_step)
    except _Reached:
        reached = True
    finally:
        T._optimizer, T.cached_hidden_states = orig_opt, orig_cached
        H.cache_hidden_states = orig_cache
    return {"curve": curve, "seconds": curve[-1][1], "cpu_seconds": curve[-1][3], "reached": reached,
            "steps": curve[-1][0],
            "cache_seconds": captured.get("cache_seconds", 0.0), "cache_cpu": captured.get("cache_cpu", 0.0),
            "cache_tokens": captured.get("cache_tokens", 0), "step_times": step_times, "step_cpu": step_cpu, "tokens_per_batch": tokens_per_batch}


# --------------------------------------------------------------------------------------------- what-if
def streamed_fit(lm, train_texts, train_values, val_texts, val_values, head, val_cache, target: float,
                 tokens_per_batch: int, max_epochs: int, seed: int = 0):
    """A PROTOTYPE of a change to fit_steer (not product code): stream the first epoch.

    Instead of caching every train text before the first step, epoch 1 takes the texts in a seeded random order,
    runs the frozen body on just enough texts for one token-packed batch (~tokens_per_batch real tokens), takes
    the Adam step on them at once and keeps their hidden states; later epochs use the kept states exactly like
    fit_steer (token-packed, shuffled). The val hidden states are computed up front, as fit_steer does.
    """
    import torch

    from steer_core.model.steer import Steer
    from steer_core.train import evaluate_loss
    from steer_core.model.hidden import HiddenCache, cache_hidden_states

    clock = Clock()
    val = cache_hidden_states(lm, val_texts, MAX_LENGTH)  # timed, as in fit_steer
    val_cache_s, val_cache_c = clock.now(), clock.cpu()
    evaluate_loss(head, Steer(NAMES, lm.dim, None, EPSILON), val, val_values)  # fit_steer's base val loss
    torch.manual_seed(seed)
    steer = Steer(NAMES, lm.dim, None, EPSILON)
    opt = torch.optim.Adam(steer.parameters(), lr=LR)
    curve, step_times, step_cpu, step_tokens = [(0, 0.0, float("nan"), 0.0)], [], [], []
    cache = {"s": val_cache_s, "c": val_cache_c}
    tok = lm.tokenizer
    lengths = [max(len(tok(t)["input_ids"][:MAX_LENGTH]) - 1, 0) for t in train_texts]

    def step(h, y, v) -> bool:
        ts, tc = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        head.loss(steer, h, v, y).backward()
        opt.step()
        step_times.append(time.perf_counter() - ts)
        step_cpu.append(time.process_time() - tc)
        step_tokens.append(int(y.numel()))
        now, cpu = clock.now(), clock.cpu()
        clock.pause()
        vl = evaluate_loss(head, steer, val_cache, val_values)
        curve.append((len(curve), now, vl, cpu))
        print(f"  strm step {len(curve) - 1:3d}  t={now:7.1f}s  val={vl:.4f}", flush=True)
        clock.resume()
        return vl <= target

    order = torch.randperm(len(train_texts), generator=torch.Generator().manual_seed(seed * 100003)).tolist()
    parts, group, ntok = [], [], 0
    for k, i in enumerate(order):
        group.append(i)
        ntok += lengths[i]
        if ntok < tokens_per_batch and k < len(order) - 1:
            continue
        ts, tc = time.perf_counter(), time.process_time()
        c = cache_hidden_states(lm, [train_texts[j] for j in group], MAX_LENGTH)
        cache["s"] += time.perf_counter() - ts
        cache["c"] += time.process_time() - tc
        gi = torch.tensor(group)[c.text_index]  # local → global text index
        parts.append(HiddenCache(c.h, c.targets, gi))
        if step(c.h, c.targets, train_values[gi]):
            return {"curve": curve, "seconds": curve[-1][1], "cpu_seconds": curve[-1][3], "reached": True, "steps": len(curve) - 1,
                    "cache_seconds": cache["s"], "cache_cpu": cache["c"], "cache_tokens": 0,
                    "step_times": step_times[1:], "step_cpu": step_cpu[1:],
                    "step_tokens": step_tokens[1:], "tokens_per_batch": tokens_per_batch}
        group, ntok = [], 0
    train = HiddenCache(torch.cat([p.h for p in parts]), torch.cat([p.targets for p in parts]),
                        torch.cat([p.text_index for p in parts]))
    for epoch in range(1, max_epochs):
        perm = torch.randperm(train.tokens, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        for b in range(0, train.tokens, tokens_per_batch):
            idx = perm[b : b + tokens_per_batch]
            if step(train.h[idx], train.targets[idx], train_values[train.text_index[idx]]):
                return {"curve": curve, "seconds": curve[-1][1], "cpu_seconds": curve[-1][3], "reached": True, "steps": len(curve) - 1,
                        "cache_seconds": cache["s"], "cache_cpu": cache["c"], "cache_tokens": 0,
                    "step_times": step_times[1:], "step_cpu": step_cpu[1:],
                        "step_tokens": step_tokens[1:], "tokens_per_batch": tokens_per_batch}
    return {"curve": curve, "seconds": curve[-1][1], "cpu_seconds": curve[-1][3], "reached": False, "steps": len(curve) - 1,
            "cache_seconds": cache["s"], "cache_cpu": cache["c"], "cache_tokens": 0,
                    "step_times": step_times[1:], "step_cpu": step_cpu[1:],
            "step_tokens": step_tokens[1:], "tokens_per_batch": tokens_per_batch}


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def _step_tokens(train_tokens: int, tpb: int, steps: int) -> list[int]:
    """Tokens in each of fit_steer's first ``steps`` steps (token-packed; the last batch of an epoch is short)."""
    per_epoch = [min(tpb, train_tokens - b * tpb) for b in range(math.ceil(train_tokens / tpb))]
    return [per_epoch[i % len(per_epoch)] for i in range(steps)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=2, help="reference budget in epochs (default 2)")
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--val", type=int, default=60)
    ap.add_argument("--tokens-per-batch", type=int, default=2048, help="ours: TrainConfig.tokens_per_batch")
    ap.add_argument("--extra-tpb", type=int, nargs="*", default=[512],
                    help="also run ours (cold) with these tokens_per_batch settings (a config change only)")
    ap.add_argument("--max-epochs", type=int, default=30, help="ours: give up after this many epochs")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-cache run of ours")
    ap.add_argument("--whatif-tpb", type=int, nargs="*", default=[512],
                    help="also run the streamed-first-epoch PROTOTYPE (bench code, not steer_core) at these "
                         "tokens_per_batch settings; none to skip")
    ap.add_argument("--whatif-cache-batch", type=int, default=512,
                    help="also run fit_steer cold (tokens_per_batch 512) with cache_hidden_states(batch_tokens=N) "
                         "instead of its default 4096 (a what-if of a one-line default change); 0 to skip")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds, in ABBA order (ref, ours..., then ours... reversed, ref) so load drift cancels")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    pin_threads()
    import os
    import tempfile

    import torch

    from steer_core.model.lm import load_lm
    from steer_core.train import OutputHead
    from steer_core.model.hidden import cache_hidden_states, cached_hidden_states

    header("train_speed: time to the reference's val loss")
    lm = load_lm("default", device="cpu")
    tr_t, tr_l, va_t, va_l = airline_tweets(args.train, args.val)
    train_values = torch.tensor([[v, 1.0] for v in tr_l])
    val_values = torch.tensor([[v, 1.0] for v in va_l])
    head = OutputHead(lm, torch.device("cpu"))
    val_cache = cache_hidden_states(lm, va_t, MAX_LENGTH)  # the shared yardstick (not timed)
    print(f"# data: {len(tr_t)} train / {len(va_t)} val airline tweets; val cache {val_cache.tokens} tokens; "
          f"model {lm.name}; eps {EPSILON}; Adam lr {LR}; ours: fit_steer with TrainConfig defaults otherwise")

    warm_dir = tempfile.TemporaryDirectory(prefix="bench-hidden-")
    if not args.no_warm:  # fill the on-disk hidden-state cache once (not timed): the "warm" case
        cached_hidden_states(lm, tr_t, MAX_LENGTH, Path(warm_dir.name))
        cached_hidden_states(lm, va_t, MAX_LENGTH, Path(warm_dir.name))
    variants = [("cold", t) for t in dict.fromkeys([args.tokens_per_batch, *args.extra_tpb])]
    if not args.no_warm:
        variants.append(("warm", args.tokens_per_batch))
    if args.whatif_cache_batch:
        variants.append(("what-if cache batch", 512))
    variants += [("what-if streamed", t) for t in args.whatif_tpb]

    refs: list[dict] = []
    ours: dict[tuple, list[dict]] = {v: [] for v in variants}
    target = None

    def run_ref(rnd: int) -> None:
        nonlocal target
        print(f"\n## round {rnd}: reference, {args.epochs} epochs, batches of {REF_BATCH} texts padded to the longest")
        r = reference_fit(lm, tr_t, train_values, head, val_cache, val_values, args.epochs)
        refs.append(r)
        if target is None:
            target = r["curve"][-1][2]
        print(f"# reference: {r['seconds']:.1f} s, {r['steps']} steps, final val loss {r['curve'][-1][2]:.4f}")

    def run_ours(rnd: int, v: tuple) -> None:
        kind, tpb = v
        what = "hidden states computed inside the fit" if kind == "cold" else "hidden states already on disk"
        if kind == "what-if cache batch":
            print(f"\n## round {rnd}: what-if: fit_steer cold, tokens_per_batch={tpb}, "
                  f"cache_hidden_states(batch_tokens={args.whatif_cache_batch})")
            r = ours_fit(lm, tr_t, train_values, va_t, val_values, head, val_cache, target, tpb, args.max_epochs,
                         cache_batch_tokens=args.whatif_cache_batch)
            ours[v].append(r)
            return
        if kind.startswith("what-if"):
            print(f"\n## round {rnd}: what-if prototype: streamed first epoch, tokens_per_batch={tpb}")
            ours[v].append(streamed_fit(lm, tr_t, train_values, va_t, val_values, head, val_cache, target, tpb,
                                        args.max_epochs))
            return
        print(f"\n## round {rnd}: ours {kind} ({what}), tokens_per_batch={tpb}, target {target:.4f}")
        r = ours_fit(lm, tr_t, train_values, va_t, val_values, head, val_cache, target, tpb, args.max_epochs,
                     hidden_cache_dir=warm_dir.name if kind == "warm" else None)
        ours[v].append(r)

    for rnd in range(1, args.rounds + 1):
        if rnd % 2:
            run_ref(rnd)
            for v in variants:
                run_ours(rnd, v)
        else:
            for v in reversed(variants):
                run_ours(rnd, v)
            run_ref(rnd)
    warm_dir.cleanup()

    ref_time = _mean([r["seconds"] for r in refs])
    ref_cpu = _mean([r["cpu_seconds"] for r in refs])
    ref_steps = sum(r["steps"] for r in refs)
    ref_step = sum(sum(r["step_cpu"]) for r in refs) / ref_steps
    ref_pad = sum(r["padded_tokens"] for r in refs) / ref_steps
    ref_real = sum(r["real_tokens"] for r in refs) / ref_steps
    train_tokens = next((r["cache_tokens"] for v in variants if v[0] == "cold" for r in ours[v]), 0) - val_cache.tokens
    print(f"\n## results: mean of {args.rounds} round(s), ABBA order; 1 torch thread; "
          f"load average now {os.getloadavg()[0]:.2f}")
    print(f"target val loss {target:.4f} = the reference's after {refs[0]['steps']} steps ({args.epochs} epochs); "
          f"untrained {refs[0]['curve'][0][2]:.4f}; same evaluate_loss on the same {val_cache.tokens}-token val cache")
    print("wall s = time to target (val evaluations excluded); CPU s = this process's CPU time for the same span "
          "(1 thread: not stretched by other jobs); cache/step columns are CPU seconds")
    print(f"{'side':<24} {'reached':>7} {'steps':>5} {'wall s':>7} {'(rounds)':>10} {'CPU s':>6} {'cache':>6} "
          f"{'step':>5} {'tok/step':>8} {'tok/CPU-s':>9} {'speed-up wall':>13} {'CPU':>6}")
    rounds_s = "/".join(f"{r['seconds']:.0f}" for r in refs)
    print(f"{'reference (paper loop)':<24} {'yes':>7} {refs[0]['steps']:>5} {ref_time:>7.1f} {rounds_s:>10} "
          f"{ref_cpu:>6.1f} {'-':>6} {ref_step:>5.2f} {ref_pad:>8.0f} {ref_pad / ref_step:>9.0f} {'1.00x':>13} "
          f"{'1.00x':>6}")
    print(f"{'  of which real tokens':<24} {'':>7} {'':>5} {'':>7} {'':>10} {'':>6} {'':>6} {'':>5} "
          f"{ref_real:>8.0f} {ref_real / ref_step:>9.0f}")
    out = {"target": target, "rounds": args.rounds, "reference": refs, "ours": {}}
    for v in variants:
        rs = ours[v]
        reached = all(r["reached"] for r in rs)
        t = _mean([r["seconds"] for r in rs])
        c = _mean([r["cpu_seconds"] for r in rs])
        cache_c = _mean([r["cache_cpu"] for r in rs])
        tok = sum(sum(r["step_tokens"]) if "step_tokens" in r else sum(_step_tokens(train_tokens, v[1], r["steps"])[1:])
                  for r in rs) if train_tokens > 0 else 0
        secs = sum(sum(r["step_cpu"]) for r in rs)
        nsteps = sum(len(r["step_cpu"]) for r in rs)
        step_s = secs / nsteps if nsteps else float("nan")
        tps = tok / secs if secs and tok else float("nan")
        speed = ref_time / t if reached else float("nan")
        speed_c = ref_cpu / c if reached else float("nan")
        rounds_s = "/".join(f"{r['seconds']:.0f}" for r in rs)
        label = {"what-if streamed": f"what-if stream, tpb {v[1]}",
                 "what-if cache batch": f"what-if cb{args.whatif_cache_batch}, tpb {v[1]}"}.get(v[0],
                                                                                     f"ours {v[0]}, tpb {v[1]}")
        print(f"{label:<24} {'yes' if reached else 'NO':>7} {rs[0]['steps']:>5} {t:>7.1f} {rounds_s:>10} "
              f"{c:>6.1f} {cache_c:>6.1f} {step_s:>5.2f} {v[1]:>8} {tps:>9.0f} {speed:>12.2f}x {speed_c:>5.2f}x")
        out["ours"][label] = {"runs": rs, "seconds": t, "cpu_seconds": c, "speedup_wall": speed,
                              "speedup_cpu": speed_c, "tokens_per_cpu_second": tps}
    cold = [r for v in variants if v[0] == "cold" for r in ours[v]]
    if cold and train_tokens > 0:
        ct = _mean([r["cache_cpu"] for r in cold])
        share = _mean([r["cache_cpu"] / r["cpu_seconds"] for r in cold])
        print(f"hidden-state caching inside the cold fits: {train_tokens} train + {val_cache.tokens} val real tokens "
              f"in {ct:.1f} CPU s = {(train_tokens + val_cache.tokens) / ct:.0f} tok/CPU-s (LM body forward only); "
              f"{share * 100:.0f}% of the cold fits' CPU time")
    print("what-if rows are NOT the product: 'cbN' = fit_steer with cache_hidden_states(batch_tokens=N) patched in "
          "(a default change); 'stream' = a prototype in this script of a proposed fit_steer change (the first epoch "
          "computes hidden states batch by batch and steps at once)")
    print("issue target: speed-up >= 4x for the cold fit (one-time caching included)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
