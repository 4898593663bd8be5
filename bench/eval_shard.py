"""One evaluation shard of a steer's shipped protocol, this checkout against a git ref, side by side in one run.

A shard is the unit every executor evaluates (``steer_core.evaluate.driver.PROMPTS_PER_SHARD`` prompts): the
grid round of every system the evaluate stage builds (the candidate steer with strength 0 riding along, ActAdd,
the prompting baseline), sampled and scored as ``sample_shard`` does, at the protocol's one torch thread. Each side
runs in its own process on the same project outputs (the prompts, the trained steer and the training texts that
ActAdd is fitted on, from a finished ``steer run``); the sides alternate ABBA so load drift hits both alike. The
"before" side is a ``git worktree`` of ``--ref``. Prints seconds per system call and per shard, and whether both
sides drew the same texts.

    source env.sh && python bench/eval_shard.py [--ref HEAD] [--project .] [--steer sentiment] [--shard 0] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def one_side(project: Path, steer_name: str, shard_index: int) -> dict:
    """Run in the side's own source tree (``sys.path[0]``): time each system call of one shard's grid round."""
    import torch

    from steer_core.config import load_params
    from steer_core.evaluate.baselines import fit_actadd
    from steer_core.evaluate.driver import Shard, plan, sample_shard
    from steer_core.evaluate.protocol import System
    from steer_core.model.lm import load_lm
    from steer_core.model.steer import Steer
    from steer_core.paths import SteerPaths

    params = load_params(project / "params.yaml")
    cfg = params.steer(steer_name).evaluate
    paths = SteerPaths(project, steer_name)
    prompts = [json.loads(line) for line in paths.prompts.read_text().splitlines() if line.strip()]
    start, stop = plan(len(prompts))[shard_index]
    lm = load_lm(params.model, "cpu")
    torch.set_num_threads(cfg.threads)
    train = [json.loads(line) for line in (paths.prepared / "train.jsonl").read_text().splitlines()][:256]
    systems = [System("candidate", cfg.strengths, steer=Steer.load(paths.steer))]
    if cfg.activation_addition:
        systems.append(System("actadd", cfg.actadd_strengths, actadd=fit_actadd(
            lm, [r["text"] for r in train], [float(r["value"]) for r in train], cfg.actadd_layer,
            sink_positions=cfg.actadd_sink_positions, normalise=cfg.actadd_normalise)))
    if cfg.prompting is not None:
        systems.append(System("prompting", cfg.prompting.strengths, prompting=cfg.prompting))
    out: dict = {"calls": {}, "texts": []}
    t0 = time.perf_counter()
    for i, system in enumerate(systems):  # each system's call alone (the candidate's brings strength 0 along)
        t = time.perf_counter()
        shard = Shard(shard_index, start, prompts[start:stop], [system], cfg, params.runtime.seed,
                      sample_base=i == 0)
        out["texts"] += [s.text for s in sample_shard(lm, shard)]
        out["calls"][system.name] = time.perf_counter() - t
    out["shard"] = time.perf_counter() - t0
    out["samples"] = len(out["texts"])
    return out


def run_side(src: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(HERE / "eval_shard.py"), "--side", "--project", str(args.project.resolve()),
           "--steer", args.steer, "--shard", str(args.shard)]
    env = dict(os.environ, PYTHONPATH=str(src))
    done = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the side in {src} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="HEAD", help="the 'before' side: a git ref of this repository")
    ap.add_argument("--project", type=Path, default=Path("."), help="a project with the steer's stage outputs")
    ap.add_argument("--steer", default="sentiment")
    ap.add_argument("--shard", type=int, default=0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        sys.path.insert(0, os.getcwd())
        print(json.dumps(one_side(args.project, args.steer, args.shard)))
        return
    with tempfile.TemporaryDirectory(prefix="eval-shard-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.ref], check=True,
                       capture_output=True)
        try:
            sides = {"before": before, "after": ROOT}
            results: dict[str, list[dict]] = {"before": [], "after": []}
            order = ["before", "after"]
            for rep in range(args.reps):
                for name in order if rep % 2 == 0 else order[::-1]:  # ABBA
                    results[name].append(run_side(sides[name], args))
                    print(f"rep {rep + 1} {name}: shard {results[name][-1]['shard']:.1f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    print(f"\neval_shard: {args.steer} shard {args.shard}, {results['after'][0]['samples']} samples, one torch thread; "
          f"before = {args.ref}, after = this checkout (best of {args.reps})")
    print(f"{'call':<12}{'before s':>10}{'after s':>10}{'speed-up':>10}")
    for call in [*results["after"][0]["calls"], "shard"]:
        pick = (lambda r: r["calls"][call]) if call != "shard" else (lambda r: r["shard"])
        b, a = min(map(pick, results["before"])), min(map(pick, results["after"]))
        print(f"{call:<12}{b:>10.1f}{a:>10.1f}{b / a:>9.2f}×")
    same = results["before"][0]["texts"] == results["after"][0]["texts"]
    print(f"same texts on both sides: {same}")


if __name__ == "__main__":
    main()
