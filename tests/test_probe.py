"""The self-labelled source: a probe learned from labelled texts on a tiny real model labels the model's own
continuations; a probe that cannot tell the labels apart is refused before any sampling; the probe and the pool's
balance are in the data card."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from steer_core.config import DataConfig
from steer_core.data.prepare import prepare
from steer_core.data.records import DataError
from steer_core.scorers.probe import Probe, fit_probe, mean_hidden_states

HAPPY = ["sunny", "wonderful", "delightful", "cheerful", "lovely", "bright", "joyful", "splendid"]
GLOOMY = ["rainy", "dreadful", "miserable", "awful", "gloomy", "dark", "bitter", "horrible"]
NOUNS = ["morning", "trip", "meeting", "garden", "weekend", "concert", "lunch", "journey", "visit", "game"]


def labelled_file(path, n: int = 120, shuffle_labels: bool = False, one_label: bool = False):
    """A jsonl of texts whose label is in their words (or not, with ``shuffle_labels``)."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        happy = i % 2 == 0
        words = HAPPY if happy else GLOOMY
        text = (f"What a {rng.choice(words)} {rng.choice(NOUNS)} it was, so {rng.choice(words)} and "
                f"{rng.choice(words)} all day {i}")
        rows.append({"text": text, "label": "happy" if happy or one_label else "gloomy"})
    if shuffle_labels:
        labels = [r["label"] for r in rows]
        rng.shuffle(labels)
        for r, label in zip(rows, labels):
            r["label"] = label
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(path, **source) -> DataConfig:
    return DataConfig.model_validate({
        "source": {"kind": "self_labelled", "labels_from": {"kind": "file", "path": str(path)},
                   "texts": {"kind": "generated", "prompts": {"kind": "file", "path": str(path)}, "count": 40,
                             "max_new_tokens": 4}, **source},
        "labels": {"happy": 1.0, "gloomy": -1.0}, "max_per_label": 10,
        "clean": {"min_words": 3}, "split": {"val_fraction": 0.1, "holdout_fraction": 0.1}})


def test_fit_probe_reads_separable_features_and_reports_held_out_accuracy() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.5
    x = rng.normal(0, 1, (200, 16)) + np.where(y[:, None], 2.5, -2.5) * np.eye(16)[0]
    held = np.arange(200) % 5 == 0
    probe = fit_probe(x, y, held, "hi", "lo")
    assert probe.accuracy > 0.9 and probe.n_heldout == 40 and probe.n_train == 160
    assert ((probe.predict(x) >= 0.5) == y).mean() > 0.9
    again = Probe.from_dict(json.loads(json.dumps(probe.to_dict())))  # plain JSON round trip, no pickle
    assert np.allclose(again.predict(x), probe.predict(x))
    with pytest.raises(ValueError, match="only one label"):
        fit_probe(x, np.ones(200, dtype=bool), held, "hi", "lo")


def test_a_self_labelled_source_labels_the_models_continuations(tiny_lm, tmp_path) -> None:
    path = labelled_file(tmp_path / "labelled.jsonl")
    asked: list[int] = []

    def generate_fn(prompts, n):
        asked.append(len(prompts))
        return [" and then it was lovely" if i % 2 else " and then it was awful" for i in range(len(prompts))]

    def embed_fn(texts):
        return mean_hidden_states(tiny_lm, texts, cache_dir=tmp_path / "hidden")

    card = prepare(config(path), [], tmp_path / "prep", tmp_path / "prompts.jsonl", tmp_path / "card.json",
                   generate_fn=generate_fn, embed_fn=embed_fn)
    assert asked == [40]
    assert card.probe["accuracy"] >= 0.7 and card.probe["high"] == "happy" and card.probe["low"] == "gloomy"
    assert len(card.probe["weight"]) == tiny_lm.dim
    assert card.pool == {"texts": 40, "labelled_by": card.pool["labelled_by"], "happy": 10, "gloomy": 10,
                         "tied_at_a_cut": 0, "ties": "kept"}
    saved = json.loads((tmp_path / "card.json").read_text())
    assert saved["probe"]["accuracy"] == card.probe["accuracy"] and saved["pool"]["happy"] == 10
    train = [json.loads(x) for x in (tmp_path / "prep" / "train.jsonl").read_text().splitlines()]
    assert {r["label"] for r in train} == {"happy", "gloomy"}
    assert all(r["text"].split()[:5] != [] for r in train)


@pytest.mark.parametrize("bad", ["random", "one"])
def test_a_probe_that_cannot_tell_the_labels_apart_is_refused_before_sampling(tiny_lm, tmp_path, bad) -> None:
    path = labelled_file(tmp_path / "labelled.jsonl", shuffle_labels=bad == "random", one_label=bad == "one")

    def generate_fn(prompts, n):
        raise AssertionError("sampled although the probe was refused")

    def embed_fn(texts):
        return mean_hidden_states(tiny_lm, texts, cache_dir=tmp_path / "hidden")

    with pytest.raises(DataError) as err:
        prepare(config(path), [], tmp_path / "prep", tmp_path / "prompts.jsonl", tmp_path / "card.json",
                generate_fn=generate_fn, embed_fn=embed_fn)
    msg = str(err.value)
    assert "\n" not in msg
    if bad == "random":
        assert "accuracy" in msg and "below source.min_accuracy 0.7" in msg
    else:
        assert "no text labelled 'gloomy'" in msg
    assert not (tmp_path / "card.json").exists() and not (tmp_path / "prep").exists()


def test_a_self_labelled_source_is_sized_from_max_per_label() -> None:
    cfg = DataConfig.model_validate({"source": {"kind": "self_labelled", "labels_from": {"kind": "packaged"}},
                                     "max_per_label": 400})
    src = cfg.resolved_source()
    assert src.texts.count == 2300 and (src.high_label, src.low_label) == ("positive", "negative")
    with pytest.raises(Exception, match="max_per_label"):
        DataConfig.model_validate({"source": {"kind": "self_labelled", "labels_from": {"kind": "packaged"}}})
