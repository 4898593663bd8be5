"""Seconds a ``steer playground`` generate request takes: base model + two steered columns, 3 samples × 30 tokens
each (the page's defaults), on the default model, highlight included, as the page's handler runs it.

The request is ``flows.playground.Playground.generate`` (what the Generate button calls, minus the HTTP hop); the
steers are local files (``--steer``, up to two, e.g. ``artifacts/steers/sentiment.safetensors``) or, without them,
two random steers of the default model's width (their text is odd; their cost is a real steer's). Reports the first
request (steers loaded then) and the median of the others, the highlight's share, and the CPU seconds each request
used (while other processes share the machine the wall time says more about them than about the request).

    python bench/playground_speed.py [--reps 5] [--threads 1] [--steer A.safetensors] [--steer B.safetensors]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, header, pin_threads  # noqa: E402

PROMPT = "The food at this place was"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="requests after the first")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per column (the page's default: one)")
    ap.add_argument("--workers", type=int, default=None, help="highlights computed side by side (default: the "
                    "page's, cores / threads)")
    ap.add_argument("--steer", type=Path, action="append", default=[], help="a local steer file (up to two)")
    ap.add_argument("--strength", type=float, default=4.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    pin_threads(args.threads)
    from flows.playground import Playground
    from steer_core.config import Params
    from steer_core.model.steer import Steer

    header("playground_speed: one generate request (base + 2 steered columns, 3 samples x 30 tokens)")
    pg = Playground(Params(runtime={"device": "cpu", "threads": args.threads}), ROOT, threads=args.threads)
    pg.workers = args.workers or pg.workers
    print(f"highlights side by side: {pg.workers}")
    t0 = time.perf_counter()
    lm = pg.lm
    print(f"model load: {time.perf_counter() - t0:.1f} s")
    tmp = Path(tempfile.mkdtemp(prefix="playground-speed-"))
    files = [str(p) for p in args.steer[:2]]
    for i in range(2 - len(files)):  # random steers of the default model's width
        import torch

        torch.manual_seed(i)
        s = Steer(["sentiment", "dummy"], lm.dim, None, 1e-3, {"base_fingerprint": lm.fingerprint})
        with torch.no_grad():
            s.W.normal_(0.0, 1.0)
        files.append(str(s.save(tmp / f"random{i}.safetensors")))
    cols = {"A": [(files[0], args.strength), ("", 0.0)], "B": [(files[1], args.strength), ("", 0.0)]}

    scoring: list[float] = []
    highlight = pg.highlight

    def timed_highlight(*a, **k):
        t = time.perf_counter()
        try:
            return highlight(*a, **k)
        finally:
            scoring.append(time.perf_counter() - t)

    pg.highlight = timed_highlight
    rows = []
    for rep in range(args.reps + 1):
        scoring.clear()
        t, cpu = time.perf_counter(), time.process_time()
        out = pg.generate(PROMPT, 3, 30, rep, True, cols)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        rows.append({"request": rep + 1, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                     "inside_s": round(out["seconds"], 3), "highlight_s": round(sum(scoring), 3)})
        print(f"request {rep + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU (of which highlight {sum(scoring):.2f} s, "
              f"summed over the columns)")
    warm = rows[1:] or rows[:1]
    summary = {"first_s": rows[0]["wall_s"], "median_s": statistics.median(r["wall_s"] for r in warm),
               "median_cpu_s": statistics.median(r["cpu_s"] for r in warm), "threads": args.threads,
               "workers": pg.workers, "rows": rows}
    print(f"first request {summary['first_s']:.2f} s; then median {summary['median_s']:.2f} s wall, "
          f"{summary['median_cpu_s']:.2f} s CPU over {len(warm)}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
