"""Fit a steer on cached final hidden states.

The LM body is frozen, so its final hidden states h are computed once per dataset (and saved); fitting W then
only touches the output projection: ``loss = CE(E (h + ε Σ s_i W_i h), next token)``. That objective is convex in
W. Tokens are packed (a batch is a set of real tokens, never padding), so padding costs no compute and never
enters the loss. Checkpoints hold the steer and the optimizer state; per-epoch token orders derive from the
seed, so a resumed fit replays exactly the steps the interrupted one would have taken.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from steer_core.config import TrainConfig
from steer_core.files import file_atomic
from steer_core.model.hidden import HiddenCache, cached_hidden_states, texts_hash
from steer_core.model.lm import LoadedLM
from steer_core.model.steer import Steer

log = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    """What a fit did; stored in the steer's metadata."""

    epochs: int = 0
    steps: int = 0
    train_tokens: int = 0
    val_tokens: int = 0
    base_val_loss: float = float("nan")
    best_val_loss: float = float("nan")
    best_epoch: int = 0
    val_history: list[float] = field(default_factory=list)
    train_history: list[float] = field(default_factory=list)
    stopped_early: bool = False
    cache_seconds: float = 0.0
    fit_seconds: float = 0.0
    resumed_from_step: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def content(self) -> dict:
        """What the fit found, without how long it took or whether it resumed: this goes into the steer file's
        header, so equal inputs give a byte-identical file (DVC and the registry address steers by hash)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CIRCUMSTANCES}

    def circumstances(self) -> dict:
        """Timings and resumption: for the steer's JSON card and MLflow, never the steer file."""
        return {k: v for k, v in self.to_dict().items() if k in RUN_CIRCUMSTANCES}


RUN_CIRCUMSTANCES = ("cache_seconds", "fit_seconds", "resumed_from_step")


# --------------------------------------------------------------------------------------------- hidden-state cache


# --------------------------------------------------------------------------------------------- loss
def fit_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` resolved on ``device``: ``auto`` is bfloat16 on CUDA, float32 elsewhere. (On a CPU with
    native bf16 the bfloat16 pass is faster, but the steer it fits differs enough to move a small evaluation's
    verdict, so a CPU fit is float32 unless asked.)"""
    if precision != "auto":
        return precision
    return "bfloat16" if device.type == "cuda" else "float32"


class OutputHead:
    """The frozen output projection E (and bias), on the fitting device.

    The projection of every batch's tokens onto the whole vocabulary is nearly all of a fit's compute. With
    ``precision`` bfloat16 the gradient pass runs it in bfloat16 (the logits and the loss in float32); a loss
    computed without gradients (the validation loss that picks the best epoch, the reported losses) is float32."""

    def __init__(self, lm: LoadedLM, device: torch.device, precision: str = "float32") -> None:
        emb = lm.output_embeddings
        self.weight = emb.weight.detach().to(device)
        bias = getattr(emb, "bias", None)
        self.bias = None if bias is None else bias.detach().to(device)
        self.device = device
        self.precision = fit_precision(precision, device)
        low = self.precision == "bfloat16"
        self.weight_low = self.weight.to(torch.bfloat16) if low else None  # cast once, not per step
        self.bias_low = None if not low or self.bias is None else self.bias.to(torch.bfloat16)

    def loss(self, steer: Steer, h: torch.Tensor, values: torch.Tensor, targets: torch.Tensor, reduction="mean"):
        hs = steer.apply(h, values)
        if self.weight_low is not None and torch.is_grad_enabled():
            logits = F.linear(hs.to(torch.bfloat16), self.weight_low, self.bias_low).float()
        else:
            logits = F.linear(hs, self.weight, self.bias)
        return F.cross_entropy(logits, targets, reduction=reduction)

    def contrastive(self, steer: Steer, h: torch.Tensor, values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean over tokens of softplus(−(log p(x | v) − log p(x | v with the primary steer's sign flipped))): each
        token should be likelier at its text's own sign than at the opposite one. Pushes W towards what tells the
        labels apart rather than what the texts share (which the plain loss and the dummy steer model)."""
        flipped = values.clone()
        flipped[:, 0] = -flipped[:, 0]
        own = self.loss(steer, h, values, targets, reduction="none")
        other = self.loss(steer, h, flipped, targets, reduction="none")
        return F.softplus(own - other).mean()


@torch.no_grad()
def evaluate_loss(
    head: OutputHead, steer: Steer, cache: HiddenCache, text_values: torch.Tensor, chunk: int = 4096
) -> float:
    """Mean next-token loss over every cached token at each text's own steer values."""
    total, dev = 0.0, head.device
    for s in range(0, cache.tokens, chunk):
        h = cache.h[s : s + chunk].to(dev)
        v = text_values[cache.text_index[s : s + chunk]].to(dev)
        total += float(head.loss(steer, h, v, cache.targets[s : s + chunk].to(dev), reduction="sum"))
    return total / max(cache.tokens, 1)


# --------------------------------------------------------------------------------------------- fit state & checkpoint
@dataclass
class FitState:
    """Everything a fit carries from one step to the next, i.e. what its checkpoint holds.

    The steer (W) and the optimizer's moments are tensors and go into the checkpoint's safetensors body; the counters
    below go into its header as JSON. No RNG state is kept: each epoch's token order derives from (seed, epoch), so a
    resumed fit replays exactly the steps the interrupted one would have taken. The best epoch's weights live in
    ``best.safetensors`` next to the checkpoint (a resumed fit reads them back from there).
    """

    steer: Steer
    opt: torch.optim.Optimizer
    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # batches of the current epoch already taken (a resume continues from here)
    steps: int = 0  # optimizer steps over the whole fit
    best: float | None = None  # best validation loss so far
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one (the patience counter)
    val_history: list[float] = field(default_factory=list)
    train_history: list[float] = field(default_factory=list)
    epoch_loss_sum: float = 0.0  # token-weighted train loss of the current epoch so far
    epoch_tokens: int = 0
    best_weights: dict[str, torch.Tensor] | None = None  # not checkpointed here: see best.safetensors
    stopped_early: bool = False  # checkpointed: a fit killed after it stopped early does not train on when resumed

    def progress(self) -> dict:
        """The JSON half of the checkpoint (the same keys, in the same order, as checkpoints have always had)."""
        return {k: getattr(self, k) for k in _PROGRESS}

    def restore_progress(self, progress: dict) -> None:
        for k in _PROGRESS[:-1]:
            setattr(self, k, progress[k])
        # a fit that stopped early stays stopped on resume (checkpoints written before this key: not stopped)
        self.stopped_early = bool(progress.get("stopped_early", False))


_PROGRESS = ("epoch", "step_in_epoch", "steps", "best", "best_epoch", "bad_epochs", "val_history", "train_history",
             "epoch_loss_sum", "epoch_tokens", "stopped_early")


def _checkpoint_path(directory: Path) -> Path:
    return Path(directory) / "checkpoint.safetensors"


TENSOR_LIST = "tensor_list"  # marks an optimizer state list whose tensors are stored one by one


def save_checkpoint(directory: Path, state: FitState) -> None:
    """Steer + optimizer tensors as safetensors, counters as JSON in its header (no pickle), written atomically."""
    tensors = {f"steer.{k}": v.detach().cpu().contiguous() for k, v in state.steer.state_dict().items()}
    opt_state = state.opt.state_dict()
    scalars = {}
    for pid, st in opt_state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous().reshape(v.shape)
            elif isinstance(v, (list, tuple)) and any(torch.is_tensor(x) for x in v):
                # L-BFGS keeps its curvature history in lists of tensors (and Nones): each tensor stored on its own,
                # the list's other items and the tensors' places as a scalar
                at = [i for i, x in enumerate(v) if torch.is_tensor(x)]
                for i in at:
                    tensors[f"opt.{pid}.{k}.{i}"] = v[i].detach().cpu().contiguous().reshape(v[i].shape)
                scalars[f"{pid}.{k}"] = {TENSOR_LIST: [None if torch.is_tensor(x) else x for x in v], "at": at}
            else:
                scalars[f"{pid}.{k}"] = v
    meta = {"state": json.dumps(state.progress()), "opt_scalars": json.dumps(scalars),
            "param_groups": json.dumps(opt_state["param_groups"])}
    path = _checkpoint_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_atomic(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(directory: Path, state: FitState) -> bool:
    """Restore ``state`` (steer, optimizer, counters) from ``directory``; False when there is no checkpoint."""
    path = _checkpoint_path(directory)
    if not path.is_file():
        return False
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state.steer.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("steer.")})
    opt_state: dict = {}
    for k, v in json.loads(meta["opt_scalars"]).items():
        pid, name = k.split(".", 1)
        if isinstance(v, dict) and TENSOR_LIST in v:
            items = list(v[TENSOR_LIST])
            for i in v["at"]:
                items[i] = tensors.pop(f"opt.{pid}.{name}.{i}")
            v = items
        opt_state.setdefault(int(pid), {})[name] = v
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    state.opt.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["param_groups"])})
    state.restore_progress(json.loads(meta["state"]))
    return True


# --------------------------------------------------------------------------------------------- fit
@dataclass
class FitData:
    """What a fit fits on: the cached hidden states of each split and every text's steer values (rows × names)."""

    train: HiddenCache
    train_values: torch.Tensor
    val: HiddenCache | None
    val_values: torch.Tensor


@dataclass
class FitRun:
    """What stays fixed while a fit runs: the frozen output head, the data, the settings, the seed of the token
    orders, where checkpoints go (None: nowhere) and who hears of each step."""

    head: OutputHead
    data: FitData
    cfg: TrainConfig
    seed: int
    work: Path | None
    on_step: Callable[[int, float], None] | None


def fit_steer(
    lm: LoadedLM,
    train_texts: Sequence[str],
    train_values: torch.Tensor,
    val_texts: Sequence[str],
    val_values: torch.Tensor,
    names: Sequence[str],
    cfg: TrainConfig,
    *,
    seed: int = 0,
    work_dir: str | Path | None = None,
    hidden_cache_dir: str | Path | None = None,
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[Steer, TrainSummary]:
    """Fit steers ``names`` so that text i is modelled best at values ``train_values[i]`` (rows × len(names)).

    ``work_dir`` holds the checkpoint: with it, a crashed fit resumes where it stopped (same result).
    ``hidden_cache_dir`` (default: ``work_dir``) keeps hidden states per model and text set, so a rerun on the
    same texts skips the LM body entirely. Reads top to bottom: cache → start (or resume) → epochs → best epoch.
    """
    if len(train_texts) != len(train_values) or len(val_texts) != len(val_values):
        raise ValueError("texts and values must have the same length")
    torch.manual_seed(seed)
    summary = TrainSummary()
    work = Path(work_dir) if work_dir is not None else None
    hidden = Path(hidden_cache_dir) if hidden_cache_dir is not None else work
    t0 = time.perf_counter()
    data = _cached_hidden_states(lm, train_texts, train_values, val_texts, val_values, cfg, hidden, progress)
    summary.cache_seconds = round(time.perf_counter() - t0, 2)
    summary.train_tokens, summary.val_tokens = data.train.tokens, (data.val.tokens if data.val else 0)

    head = OutputHead(lm, lm.device, cfg.precision)
    state = _start(lm, names, cfg, work)
    summary.resumed_from_step = state.steps
    if data.val is not None:  # the untrained steer's loss: what the fit improves on
        untrained = Steer(names, lm.dim, None, cfg.epsilon).to(lm.device)
        summary.base_val_loss = evaluate_loss(head, untrained, data.val, data.val_values)

    t1 = time.perf_counter()
    _run_epochs(state, FitRun(head, data, cfg, seed, work, on_step), progress)
    steer = _best_steer(state)
    summary.epochs, summary.steps = state.epoch, state.steps
    summary.best_val_loss, summary.best_epoch = state.best, state.best_epoch
    summary.val_history, summary.train_history = state.val_history, state.train_history
    summary.stopped_early = state.stopped_early
    summary.fit_seconds = round(time.perf_counter() - t1, 2)
    steer.metadata.update(
        base_fingerprint=lm.fingerprint,
        base_model=lm.spec,
        base_name=lm.name,
        train_data_hash=texts_hash(train_texts, data.train_values),
        train=cfg.model_dump(),
        fit_precision=head.precision,
        summary=summary.content(),
    )
    return steer.cpu(), summary


def _cached_hidden_states(
    lm: LoadedLM,
    train_texts: Sequence[str],
    train_values: torch.Tensor,
    val_texts: Sequence[str],
    val_values: torch.Tensor,
    cfg: TrainConfig,
    hidden: Path | None,
    progress: bool,
) -> FitData:
    """Both splits' hidden states (from ``hidden`` when cached before); an empty val split has none."""
    train, _ = cached_hidden_states(lm, train_texts, cfg.max_length, hidden, progress)
    val, _ = cached_hidden_states(lm, val_texts, cfg.max_length, hidden, progress) if len(val_texts) else (None, False)
    return FitData(train, train_values.float(), val, val_values.float())


def _best_path(work: Path | None) -> Path | None:
    return work / "best.safetensors" if work is not None else None


def _start(lm: LoadedLM, names: Sequence[str], cfg: TrainConfig, work: Path | None) -> FitState:
    """A fresh steer and optimizer, or, when ``work`` holds a checkpoint, the interrupted fit's state."""
    steer = Steer(names, lm.dim, cfg.rank, cfg.epsilon).to(lm.device)
    state = FitState(steer, _optimizer(steer, cfg))
    if work is not None:
        load_checkpoint(work, state)
    best_path = _best_path(work)
    if state.best is not None and best_path is not None and best_path.is_file():
        state.best_weights = Steer.load(best_path).state_dict()
    return state


def _run_epochs(state: FitState, run: FitRun, progress: bool) -> None:
    """Train from ``state`` until ``cfg.epochs`` are done or patience runs out, checkpointing into ``run.work``."""
    data, cfg = run.data, run.cfg
    steps_per_epoch = math.ceil(data.train.tokens / cfg.tokens_per_batch)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=state.steps, desc="fit steer", unit="step")
    while state.epoch < cfg.epochs and not state.stopped_early:
        if cfg.optimizer == "lbfgs":
            loss = _lbfgs_epoch(state.opt, state.steer, run.head, data.train, data.train_values, run.head.device)
            state.epoch_loss_sum, state.epoch_tokens = loss * data.train.tokens, data.train.tokens
            state.steps += 1
            if bar:
                bar.update(steps_per_epoch)
            if run.on_step:
                run.on_step(state.steps, loss)
        else:
            _adam_epoch(state, run, bar)
        _end_epoch(state, run)
    if bar:
        bar.close()


def _adam_epoch(state: FitState, run: FitRun, bar) -> None:
    """The rest of the current epoch (from ``state.step_in_epoch``) in token-packed batches of the epoch's order."""
    head, data, cfg = run.head, run.data, run.cfg
    train, dev, n = data.train, head.device, data.train.tokens
    order = torch.randperm(n, generator=torch.Generator().manual_seed(run.seed * 100003 + state.epoch))
    for b in range(state.step_in_epoch, math.ceil(n / cfg.tokens_per_batch)):
        idx = order[b * cfg.tokens_per_batch : (b + 1) * cfg.tokens_per_batch]
        h, y = train.h[idx].to(dev), train.targets[idx].to(dev)
        v = data.train_values[train.text_index[idx]].to(dev)
        state.opt.zero_grad(set_to_none=True)
        loss = head.loss(state.steer, h, v, y)
        if cfg.contrastive:
            (loss + cfg.contrastive * head.contrastive(state.steer, h, v, y)).backward()
        else:
            loss.backward()
        state.opt.step()
        state.steps += 1
        state.step_in_epoch = b + 1
        state.epoch_loss_sum += float(loss.detach()) * len(idx)
        state.epoch_tokens += len(idx)
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if run.on_step:
            run.on_step(state.steps, float(loss.detach()))
        if run.work is not None and state.steps % cfg.checkpoint_every == 0:
            save_checkpoint(run.work, state)


def _end_epoch(state: FitState, run: FitRun) -> None:
    """Record the epoch's losses, keep the steer if it is the best so far (else count patience), checkpoint."""
    data, work = run.data, run.work
    state.train_history.append(state.epoch_loss_sum / max(state.epoch_tokens, 1))
    if data.val is not None:
        vloss = evaluate_loss(run.head, state.steer, data.val, data.val_values)
    else:
        vloss = state.train_history[-1]
    state.val_history.append(vloss)
    if state.best is None or vloss < state.best:
        state.best, state.best_epoch, state.bad_epochs = vloss, state.epoch + 1, 0
        state.best_weights = {k: v.detach().cpu().clone() for k, v in state.steer.state_dict().items()}
        best_path = _best_path(work)
        if best_path is not None:
            state.steer.save(best_path)
    else:
        state.bad_epochs += 1
        if run.cfg.patience and state.bad_epochs >= run.cfg.patience:
            state.stopped_early = True
    state.epoch, state.step_in_epoch, state.epoch_loss_sum, state.epoch_tokens = state.epoch + 1, 0, 0.0, 0
    if work is not None:
        save_checkpoint(work, state)


def _best_steer(state: FitState) -> Steer:
    """The fitted steer at its best epoch's weights (the last epoch's when none was recorded)."""
    if state.best_weights is not None:
        state.steer.load_state_dict(state.best_weights)
    return state.steer


def _optimizer(steer: Steer, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "lbfgs":
        return torch.optim.LBFGS(steer.parameters(), lr=1.0, max_iter=5, history_size=10,
                                 line_search_fn="strong_wolfe")
    return torch.optim.Adam(steer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lbfgs_epoch(opt, steer, head, cache, values, dev, chunk: int = 4096) -> float:
    """One full-batch L-BFGS step (up to max_iter evaluations), gradients accumulated over token chunks."""

    def closure():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for s in range(0, cache.tokens, chunk):
            h = cache.h[s : s + chunk].to(dev)
            v = values[cache.text_index[s : s + chunk]].to(dev)
            loss = head.loss(steer, h, v, cache.targets[s : s + chunk].to(dev), reduction="sum") / cache.tokens
            loss.backward()
            total += float(loss.detach())
        return torch.tensor(total)

    return float(opt.step(closure))
