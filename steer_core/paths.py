"""Where one steer's files live under the project root: the layout every stage, the promotion job and
``steer checkout`` share::

    data/prepared/<steer>/{train,val}.jsonl, card.json     data/prompts/<steer>.jsonl
    artifacts/steers/<steer>.safetensors (+ .json card)    metrics/<steer>.json
    plots/<steer>/{control,fluency,frontier}.{csv,png}     reports/<steer>.html (+ .samples.jsonl, .explain.json)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SteerPaths:
    """Where one steer's files live under the project root."""

    root: Path
    name: str

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared" / self.name

    @property
    def prompts(self) -> Path:
        return self.root / "data" / "prompts" / f"{self.name}.jsonl"

    @property
    def data_card(self) -> Path:
        return self.prepared / "card.json"

    @property
    def steer(self) -> Path:
        return self.root / "artifacts" / "steers" / f"{self.name}.safetensors"

    @property
    def steer_card(self) -> Path:
        return self.steer.with_suffix(".json")

    @property
    def work(self) -> Path:
        return self.root / "artifacts" / "work" / self.name

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / f"{self.name}.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots" / self.name

    @property
    def report(self) -> Path:
        return self.root / "reports" / f"{self.name}.html"

    @property
    def samples(self) -> Path:
        return self.root / "reports" / f"{self.name}.samples.jsonl"

    @property
    def explain(self) -> Path:
        return self.root / "reports" / f"{self.name}.explain.json"
