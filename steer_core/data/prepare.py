"""Data preparation for steer training: source → cleaning → labels → steer values → dedupe → hash split →
balance / cap → ``train.jsonl``, ``val.jsonl``, a prompts file and a JSON data card.

Splits come from a hash of the normalised text, so growing a corpus never moves an old text across splits. Bad data
raises ``DataError`` (one line) before any file is written; the files then appear together.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from steer_core.config import DataConfig, PromptSetConfig
from steer_core.data import corpora
from steer_core.data.clean import clean_text, normalise, unit_hash
from steer_core.data.records import DataError, load_jsonl
from steer_core.data.sources import EmbedFn, GenerateFn, describe_source, load_source, score_texts
from steer_core.files import write_together


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
    pool: dict[str, Any] | None = None  # a labelled pool: its size and each class's count before the split
    probe: dict[str, Any] | None = None  # a self-labelled source's probe: its weights and held-out accuracy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    from steer_core.scorers import cuts_of, get_scorer

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
        return _prefixes([(r.text, r.label) for r in corpora.load_lee_sentences()], ps, salt), "lee_news sentences"
    if ps.kind == "label":
        if ps.label is None:
            raise DataError(f"prompt set {ps.name!r}: kind 'label' needs `label`")
        return _prefixes([(e.text, e.label) for e in holdout if e.label == ps.label], ps, salt), "holdout"
    if ps.kind in ("encyclopedia", "product"):
        texts = corpora.encyclopedia_sentences() if ps.kind == "encyclopedia" else corpora.product_sentences()
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
        if (p := corpora.prefix(text, ps.words)) is not None:
            label_of.setdefault(p, label)
    found = list(label_of)
    if keep is not None:
        found = [p for p, k in zip(found, keep(found)) if k]
    return [(p, label_of[p]) for p in corpora.hash_order(found, salt)[: ps.count]]


def _eliciting(ps: PromptSetConfig, pool: list[Example], salt: str) -> list[tuple[str, str | None]]:
    """Prefixes that the scorer flags at ``threshold`` or above: by the full text they open (``flagged: text``: it
    went somewhere the steer should avoid) or by the prefix's own words (``flagged: prompt``)."""
    def flags(texts: list[str]) -> list[bool]:
        return [s >= ps.threshold for s in score_texts(ps.scorer, texts)]

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


def prepare(
    cfg: DataConfig,
    prompt_sets: Sequence[PromptSetConfig],
    out_dir: str | Path,
    prompts_path: str | Path,
    card_path: str | Path,
    *,
    generate_fn: GenerateFn | None = None,
    embed_fn: EmbedFn | None = None,
) -> DataCard:
    """Build ``out_dir/{train,val}.jsonl``, the prompts file and the data card from ``cfg``. Everything is validated
    before anything is written; the files then appear together (atomic renames)."""
    out_dir, prompts_path, card_path = Path(out_dir), Path(prompts_path), Path(card_path)
    source = cfg.resolved_source()  # a generated pool sized from max_per_label: sample only what the split keeps
    notes: dict[str, Any] = {}
    records = load_source(source, generate_fn=generate_fn, embed_fn=embed_fn, notes=notes, clean=cfg.clean)
    examples, dropped = build_examples(records, cfg)
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
        source=describe_source(source),
        counts={"train": _counts(train), "val": _counts(val), "holdout": _counts(by_split["holdout"])},
        dropped=dropped,
        lengths={"train": _length_stats(train), "val": _length_stats(val)},
        prompts=prompt_notes,
        content_hash=content_hash(list(files.values())),
        params={"data": cfg.model_dump(mode="json"), "prompts": [p.model_dump(mode="json") for p in prompt_sets]},
        # relative to the card: no absolute paths in a content-addressed artifact (equal inputs, equal bytes)
        files={name: os.path.relpath(path, card_path.parent) for name, path in zip(("train", "val", "prompts"), files)},
        pool=notes.get("pool"),
        probe=notes.get("probe"),
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

