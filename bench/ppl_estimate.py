"""Judge perplexity from the sampled tokens' NLLs vs from each step's expected NLL, on the very same texts.

``evaluate.ppl_estimate: expected`` (``steer_core.model.generate``) replaces each sampled token's NLL under the base model
by its mean over the distribution the token was drawn from. Given the text so far the two agree in expectation, so
the perplexity estimates the same quantity with the token's own draw averaged out. Both estimates are taken here on
the same samples (same per-(prompt, sample) random numbers, so the texts are identical token for token), at the
strengths given, for a finished project's steer and evaluation prompts. For each strength it prints the
perplexity increase over the base under each estimate, the spread over prompts of the per-prompt log(ppl / base's)
(the gate's perplexity interval and the strength choice are read from these), the variance ratio, and the 95 %
interval the gate would report.

    source env.sh && python bench/ppl_estimate.py /path/to/project [--steer sentiment] [--strengths -3,3]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, pin_threads  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path, help="a project after `steer run` (params.yaml, data/prompts, artifacts)")
    ap.add_argument("--steer", default="sentiment")
    ap.add_argument("--strengths", default="-3.25,-2,2.75,3")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    pin_threads(args.threads)
    import numpy as np

    from steer_core.evaluate import metrics as M
    from steer_core.config import load_params
    from steer_core.stages import read_jsonl
    from steer_core.evaluate.protocol import System, sample_system
    from steer_core.model.lm import load_lm
    from steer_core.model.steer import Steer

    params = load_params(args.project / "params.yaml")
    cfg = params.steers[args.steer].evaluate
    prompts = read_jsonl(args.project / "data" / "prompts" / f"{args.steer}.jsonl")
    lm = load_lm(params.model, device="cpu")
    steer = Steer.load(args.project / "artifacts" / "steers" / f"{args.steer}.safetensors",
                       expect_fingerprint=lm.fingerprint)
    strengths = [0.0] + [float(s) for s in args.strengths.split(",")]
    header(f"ppl_estimate: {args.steer} in {args.project}: {len(prompts)} prompts × {cfg.samples} samples × "
           f"{cfg.max_new_tokens} tokens, strengths {strengths[1:]}, base_nucleus {cfg.base_nucleus}")
    per: dict[str, dict[float, np.ndarray]] = {}
    texts: dict[str, list[str]] = {}
    for estimate in ("sampled", "expected"):
        c = cfg.model_copy(update={"ppl_estimate": estimate})
        t0 = time.perf_counter()
        samples = sample_system(lm, System("candidate", strengths, steer=steer), prompts, c, params.runtime.seed,
                                judge_in_sampling=True)
        print(f"# {estimate}: {len(samples)} samples in {time.perf_counter() - t0:.0f} s")
        texts[estimate] = [s.text for s in samples]
        per[estimate] = {}
        for st in strengths:
            logs: dict[int, list[float]] = {}
            for s in samples:
                if s.strength == st and s.ppl == s.ppl and s.ppl > 0:
                    logs.setdefault(s.prompt_index, []).append(math.log(s.ppl))
            per[estimate][st] = np.array([np.mean(logs[i]) if i in logs else np.nan for i in range(len(prompts))])
    same = texts["sampled"] == texts["expected"]
    print(f"# the two runs sampled the same texts: {same}")
    print("| s | Δppl sampled | Δppl expected | sd of per-prompt log ratio: sampled | expected | variance ratio | "
          "95 % interval (gate): sampled | expected |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for st in strengths[1:]:
        cells = []
        sds, ivs = [], []
        for estimate in ("sampled", "expected"):
            d = per[estimate][st] - per[estimate][0.0]
            d = d[np.isfinite(d)]
            cells.append(f"{math.expm1(float(d.mean())):+.1%}")
            sds.append(float(d.std(ddof=1)))
            _, low, high = M.paired_interval(list(d), 0.95, 2000)
            ivs.append(f"[{math.expm1(low):+.1%}, {math.expm1(high):+.1%}]")
        print(f"| {st:+g} | {cells[0]} | {cells[1]} | {sds[0]:.3f} | {sds[1]:.3f} | {(sds[1] / sds[0]) ** 2:.2f} | "
              f"{ivs[0]} | {ivs[1]} |")


if __name__ == "__main__":
    main()
