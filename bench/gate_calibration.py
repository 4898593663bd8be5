"""Gate calibration: how often does the promotion gate promote a challenger that is (a) no better, (b) clearly
worse, (c) clearly better than the champion? The paired, interval-based gate (``gates.decide_doc``) and the old
point-estimate gate (``gates.decide`` on the in-sample recommended numbers) judge the very same evaluations and are
printed side by side.

Each judgement is what the flow does: the champion evaluated alone, the challenger evaluated alone on the same
prompts with the same seed (so the same per-(prompt, sample) random numbers, and the very same base samples), the
champion's system entry merged into the challenger's document, then ``decide_doc(merged, gate)`` with the shipped
gate (min_margin 0, min_gain 0, confidence 0.95). Steers are fitted on a smaller sentiment recipe than the shipped
one (by default 400 confident airline tweets, half positive, 6 epochs, lr 0.1, Adam, full rank, dummy steer; the
shipped recipe uses 800) on cached hidden states (the LM body runs once per text set, then every fit reuses them).

- (a) noise-equal: the champion (training seed 0) against the same recipe with training seeds 1..K (--seeds, same
  data) and on N new draws of tweets of the same kind (--new-data), each judged under every evaluation seed
  (--eval-seeds): (K + N) x E trials that differ in the challenger, in the evaluation seed, or both; and the champion's own weights re-saved as a new file (under the first --resaved-trials seeds:
  identical weights give identical samples, so more trials would repeat the same exact zero);
- (b) clearly weaker: 10 % of the training data (another subset per trial) and 1 epoch;
- (c) clearly stronger: the champion is such a weak steer (seed 0), the challenger a full-recipe fit of (a); the
  promotion rate is the gate's power for this improvement.

The protocol is smaller than the shipped one to fit a 2-core CPU in ~20 min: 24 prompts as shipped (16 neutral
news-like openings + 8 negative-tweet prefixes) x 4 samples, but strengths +-2 only (shipped: 9 strengths, -4..4)
and 12 new tokens (shipped: 20). Run with one torch thread.

    python bench/gate_calibration.py [--eval-seeds 5] [--seeds 2] [--new-data 2] [--samples 4] [--new-tokens 12]
                                     [--strengths -2,0,2] [--train 400] [--epochs 6] [--threads 1] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import NEUTRAL_PROMPTS, airline_tweets, header, pin_threads  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval-seeds", type=int, default=5, help="evaluation seeds; each judges every kind of challenger")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=12)
    ap.add_argument("--strengths", default="-2,0,2")
    ap.add_argument("--neutral", type=int, default=16, help="neutral prompts (plus 8 negative-tweet prefixes)")
    ap.add_argument("--train", type=int, default=400, help="training tweets (half positive); weak = 10 %% of them")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the full recipe (weak: 1)")
    ap.add_argument("--seeds", type=int, default=2, help="same-data challengers (training seeds 1..K)")
    ap.add_argument("--new-data", type=int, default=2,
                    help="new-data challengers (another draw of tweets each); noise-equal trials = (K + N) x eval seeds")
    ap.add_argument("--resaved-trials", type=int, default=2, help="eval seeds that also judge the re-saved copy")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    pin_threads(args.threads)
    import torch

    from steer_core.config import EvalConfig, GateConfig, TrainConfig
    from steer_core.evaluate.protocol import System
    from steer_core.evaluate.driver import evaluate
    from steer_core.gate import decide, decide_doc
    from steer_core.model.lm import load_lm
    from steer_core.model.steer import Steer
    from steer_core.train import fit_steer

    header("gate calibration: promotion rates of the paired interval gate vs the point-estimate gate")
    lm = load_lm("default", device="cpu")
    tr_x, tr_y, va_x, va_y = airline_tweets(n_train=args.train, n_val=80, seed=0)
    neg_prefixes = [" ".join(t.split()[:4]) for t, y in zip(va_x, va_y) if y < 0][:8]
    prompts = ([{"set": "neutral", "prompt": p} for p in NEUTRAL_PROMPTS[: args.neutral]]
               + [{"set": "negative", "prompt": p} for p in neg_prefixes])
    strengths = [float(s) for s in args.strengths.split(",")]
    cfg = EvalConfig(control="sentiment", scorer="vader", strengths=strengths, samples=args.samples,
                     max_new_tokens=args.new_tokens, bootstrap=0, activation_addition=False)
    gate = GateConfig()  # the shipped gate: min_margin 0, min_gain 0, confidence 0.95
    full_cfg = TrainConfig(lr=0.1, epochs=args.epochs, tokens_per_batch=1024, patience=2)
    weak_cfg = TrainConfig(lr=0.1, epochs=1, tokens_per_batch=1024, patience=0)
    hidden = Path(tempfile.gettempdir()) / "gatecal-hidden"  # kept between runs: same texts, same cache
    print(f"# protocol per trial: {len(prompts)} prompts x {cfg.samples} samples x strengths {strengths}, "
          f"{cfg.max_new_tokens} new tokens (shipped: 24 x 4, 9 strengths -4..4, 20 tokens); gate {gate.model_dump()}")
    print(f"# data: {len(tr_x)} train / {len(va_x)} val airline tweets; fits reuse cached hidden states ({hidden})")

    def values(y):
        return torch.tensor([[v, 1.0] for v in y])

    def fit(seed: int, weak: bool, data_seed: int = 0) -> Steer:
        t0 = time.perf_counter()
        x, y = tr_x, tr_y
        if data_seed:  # new data of the same kind: another draw of confident airline tweets
            x, y, _, _ = airline_tweets(n_train=args.train, n_val=80, seed=data_seed)
        if weak:  # 10 % of the data, another subset per seed
            g = torch.Generator().manual_seed(1000 + seed)
            idx = torch.randperm(len(tr_x), generator=g)[: len(tr_x) // 10].tolist()
            x, y = [tr_x[i] for i in idx], [tr_y[i] for i in idx]
        steer, _ = fit_steer(lm, x, values(y), va_x, values(va_y), ["sentiment", "dummy"],
                             weak_cfg if weak else full_cfg, seed=seed, hidden_cache_dir=hidden)
        print(f"# fitted {'weak' if weak else 'full'} steer, seed {seed}{f', data draw {data_seed}' if data_seed else ''}:"
              f" {time.perf_counter() - t0:.0f}s", flush=True)
        return steer

    def resaved(steer: Steer) -> Steer:
        path = Path(tempfile.mkdtemp(prefix="gatecal-")) / "copy.safetensors"
        steer.save(path)
        return Steer.load(path)

    results: dict[str, list[dict]] = {}
    pairs: list[dict] = []  # merged (challenger, champion) documents of the noise-equal trials, for sizing

    def evaluate_alone(name: str, steer: Steer, eval_seed: int, base):
        """One system on the prompts, as the flow does it: the champion alone, the candidate alone, then merged;
        with ``base`` (strength-0 samples of this seed) both are compared against the very same base samples."""
        systems = [System(name, strengths, steer=steer)]
        if base is None:
            return evaluate(lm, prompts, systems, cfg, seed=eval_seed)
        try:
            return evaluate(lm, prompts, systems, cfg, seed=eval_seed, base_samples=base)
        except TypeError:  # an evaluate() without base reuse samples the base again (the same samples: same seed)
            return evaluate(lm, prompts, systems, cfg, seed=eval_seed)

    def judge(kind: str, name: str, eval_seed: int, champ_doc: dict, steer: Steer, base) -> None:
        t0 = time.perf_counter()
        cand_doc, _ = evaluate_alone("candidate", steer, eval_seed, base)
        merged = {**cand_doc, "systems": {**cand_doc["systems"], "champion": champ_doc["systems"]["champion"]}}
        new = decide_doc(merged, gate)
        c, ch = merged["systems"]["candidate"]["recommended"], merged["systems"]["champion"]["recommended"]
        old = decide({**c, **c.get("in_sample", {})}, {**ch, **ch.get("in_sample", {})}, gate)
        check = next((k for k in new.checks if k.name == "control_vs_champion"), None)
        diff = [x - y for x, y in zip(c["per_prompt"]["control"], ch["per_prompt"]["control"])]
        rec = {"eval_seed": eval_seed, "new": new.passed, "old": old.passed, "beats_champion": bool(check and check.ok),
               "lower": check.value if check else None, "mean_diff": sum(diff) / len(diff),
               "cand_s": c["strength"], "champ_s": ch["strength"], "cand_swing": c["control"],
               "champ_swing": ch["control"], "reasons": new.reasons}
        results.setdefault(f"{kind}:{name}", []).append(rec)
        if kind == "a-noise" and name != "resaved":
            pairs.append(merged)
        lower = "n/a" if rec["lower"] is None else f"{rec['lower']:+.3f}"
        print(f"  {kind:8s} {name:8s} eval seed {eval_seed}: new gate {'PROMOTE' if new.passed else 'keep   '} "
              f"(vs champion {'ok' if rec['beats_champion'] else 'no'}) old gate {'PROMOTE' if old.passed else 'keep   '}"
              f" | paired diff {rec['mean_diff']:+.3f} lower {lower} | swing cand {c['control']:.3f} "
              f"(s={c['strength']:g}) champ {ch['control']:.3f} | {time.perf_counter() - t0:.0f}s", flush=True)

    t_start = time.perf_counter()
    champion = fit(0, weak=False)
    copy = resaved(champion)
    same = all(torch.equal(a, b) for a, b in zip(champion.state_dict().values(), copy.state_dict().values()))
    print(f"# champion fitted (seed 0); re-saved copy identical weights: {same}", flush=True)
    seeds = {("seed", k): fit(k, weak=False) for k in range(1, args.seeds + 1)}
    seeds.update({("newdata", k): fit(0, weak=False, data_seed=k) for k in range(1, args.new_data + 1)})
    weak_champion = fit(0, weak=True)
    for e in range(args.eval_seeds):  # everything for one evaluation seed, so a run cut short has every kind
        champ_doc, samples = evaluate_alone("champion", champion, e, None)
        base = [x for x in samples if x.system == "base"]
        for (kind, _k), steer in seeds.items():
            judge("a-noise", kind, e, champ_doc, steer, base)
        if e < args.resaved_trials:
            judge("a-noise", "resaved", e, champ_doc, copy, base)
        judge("b-weaker", "weak", e, champ_doc, fit(e + 1, weak=True), base)
        weak_doc, _ = evaluate_alone("champion", weak_champion, e, base)
        judge("c-strong", "full", e, weak_doc, list(seeds.values())[e % len(seeds)], base)

    print()
    print("| challenger | trials | promoted, paired interval gate | champion check alone (interval) | "
          "promoted, point-estimate gate | mean paired diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, recs in results.items():
        n = len(recs)
        new, old = sum(r["new"] for r in recs), sum(r["old"] for r in recs)
        md = sum(r["mean_diff"] for r in recs) / n
        beats = sum(r["beats_champion"] for r in recs)
        print(f"| {key} | {n} | {new}/{n} = {new / n:.0%} | {beats}/{n} = {beats / n:.0%} | {old}/{n} = {old / n:.0%} "
              f"| {md:+.3f} |")
    print(f"# total {time.perf_counter() - t_start:.0f}s")
    if pairs:  # protocol sizing from the noise-equal evaluations (steer power does this for one metrics file)
        import numpy as np

        from steer_core.gate import power_report

        reps = [power_report(d, effect=0.10) for d in pairs]
        sd = float(np.sqrt(np.mean([r["sd_per_prompt"] ** 2 for r in reps])))
        print(f"# sizing (pooled over {len(reps)} noise-equal evaluations, per-prompt sd of the swing difference "
              f"{sd:.3f}): this protocol ({reps[0]['prompts']} prompts x {reps[0]['samples']} samples) detects "
              f"+{np.mean([r['detectable_now'] for r in reps]):.3f} with 80 % power; +0.10 needs "
              f"{int(np.median([r['prompts_needed'] for r in reps]))} prompts (median)")
        for row in reps[0].get("by_samples", []):
            print(f"#   (first trial) {row['samples']} samples/prompt: {row['prompts_needed']} prompts for +0.10; "
                  f"at {reps[0]['prompts']} prompts detects +{row['detectable_at_current_prompts']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
