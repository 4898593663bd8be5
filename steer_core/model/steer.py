"""The Steer: named linear maps W_i of the final hidden state (LM-Steer, arXiv 2305.12798).

``logits = E · (h + ε · Σ_i s_i · W_i h)``. Each W_i is d×d (full rank) or A_i B_iᵀ (rank r). A steer file is
safetensors (tensors) plus JSON metadata in the safetensors header: nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save as save_bytes
from torch import nn

from steer_core.files import write_atomic

FORMAT_VERSION = "1"



def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted.

    safetensors writes the header from a hash map, so two saves of equal tensors and metadata can order the header
    differently and differ in bytes. Steers are content-addressed (DVC, the registry's sha256 dedupe): equal
    inputs must give equal bytes. The data offsets are relative to the end of the header, so only the header is
    rewritten (padded with spaces to a multiple of 8, as the format requires).
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]

class SteerFileError(ValueError):
    """A file that is not a readable steer (missing, truncated, foreign format)."""


class BaseModelMismatch(ValueError):
    """A steer loaded onto a base model other than the one it was trained on."""


class Steer(nn.Module):
    """A set of named steers W_i over a d-dimensional hidden state.

    Full rank stores ``W`` of shape (n, d, d) and starts at zero (the loss is linear in W there, so gradients
    flow). Rank r stores ``A``, ``B`` of shape (n, d, r): A starts small and random, B at zero, so W = A Bᵀ = 0.
    """

    def __init__(
        self,
        names: Sequence[str],
        dim: int,
        rank: int | None = None,
        epsilon: float = 1e-3,
        metadata: Mapping[str, Any] | None = None,
        init_scale: float = 1e-2,
    ) -> None:
        super().__init__()
        if not names:
            raise ValueError("a steer needs at least one name")
        if len(set(names)) != len(names):
            raise ValueError(f"steer names must be unique, got {list(names)}")
        self.names = list(names)
        self.dim = int(dim)
        self.rank = None if rank is None or rank >= dim else int(rank)
        self.epsilon = float(epsilon)
        self.metadata: dict[str, Any] = dict(metadata or {})
        n = len(self.names)
        if self.rank is None:
            self.W = nn.Parameter(torch.zeros(n, dim, dim))
        else:
            self.A = nn.Parameter(torch.randn(n, dim, self.rank) * init_scale)
            self.B = nn.Parameter(torch.zeros(n, dim, self.rank))

    # ------------------------------------------------------------------ math
    def matrices(self) -> torch.Tensor:
        """Every W_i as a dense (n, d, d) tensor."""
        if self.rank is None:
            return self.W
        return self.A @ self.B.transpose(1, 2)

    def values_tensor(self, values: Mapping[str, float] | Sequence[float] | torch.Tensor) -> torch.Tensor:
        """Steer values as a tensor over ``self.names``: (n,) or (rows, n). A mapping may omit names (→ 0)."""
        if isinstance(values, Mapping):
            unknown = set(values) - set(self.names)
            if unknown:
                raise KeyError(f"unknown steer name(s) {sorted(unknown)}; this steer has {self.names}")
            return torch.tensor([float(values.get(k, 0.0)) for k in self.names])
        t = torch.as_tensor(values, dtype=torch.float32)
        if t.shape[-1] != len(self.names):
            raise ValueError(f"expected {len(self.names)} steer values ({self.names}), got shape {tuple(t.shape)}")
        return t

    def combined(self, values: torch.Tensor) -> torch.Tensor:
        """ε Σ_i s_i W_i for each row of ``values`` (rows, n) → (rows, d, d); or (d, d) for values (n,)."""
        return self.epsilon * torch.einsum("...n,nij->...ij", values.to(self._dtype()), self.matrices())

    def delta(self, h: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """ε Σ_i s_i W_i h for h of shape (..., d).

        ``values`` is (n,) for one setting, or (rows, n) with one row per leading index of h (per-row strengths
        in one batch), or (N, n) with one row per h vector when h is (N, d) (token-packed training).
        """
        values = values.to(device=h.device, dtype=h.dtype)
        if self.rank is None:
            W = self.W.to(h.dtype)
            if values.dim() == 1:
                M = self.epsilon * torch.einsum("n,nij->ij", values, W)
                return h @ M.T
            if h.dim() == 2:  # token-packed: one value row per vector → Σ_i s_i (W_i h)
                Wh = torch.einsum("nij,tj->tni", W, h)
                return self.epsilon * torch.einsum("tn,tni->ti", values, Wh)
            # per-row values: weight each W_i h rather than build a d×d matrix per row (cheaper per step)
            Wh = torch.einsum("nij,b...j->b...ni", W, h)
            shape = (values.shape[0],) + (1,) * (h.dim() - 2) + (values.shape[1], 1)
            return self.epsilon * (Wh * values.view(shape)).sum(-2)
        A, B = self.A.to(h.dtype), self.B.to(h.dtype)
        proj = torch.einsum("...j,njr->...nr", h, B)  # Bᵢᵀ h for each i
        if values.dim() == 1:
            scaled = proj * values[:, None]
        elif h.dim() == 2:
            scaled = proj * values[:, :, None]
        else:
            shape = (values.shape[0],) + (1,) * (h.dim() - 2) + (values.shape[1], 1)
            scaled = proj * values.view(shape)
        return self.epsilon * torch.einsum("...nr,nir->...i", scaled, A)

    def apply(self, h: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """h + ε Σ_i s_i W_i h (the steered hidden state)."""
        return h + self.delta(h, values)

    def _dtype(self) -> torch.dtype:
        return (self.W if self.rank is None else self.A).dtype

    def copy(self) -> "Steer":
        out = Steer(self.names, self.dim, self.rank, self.epsilon, json.loads(json.dumps(self.metadata)))
        out.load_state_dict({k: v.detach().clone() for k, v in self.state_dict().items()})
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write safetensors + JSON metadata atomically (temp file, then rename): no half-written steer."""
        return write_atomic(Path(path), self.to_bytes())

    def to_bytes(self) -> bytes:
        """The steer file's bytes: safetensors with the JSON metadata in its header, equal for equal steers."""
        header = {
            "format": "lm-steer",
            "format_version": FORMAT_VERSION,
            "names": json.dumps(self.names),
            "dim": str(self.dim),
            "rank": "" if self.rank is None else str(self.rank),
            "epsilon": repr(self.epsilon),
            "metadata": json.dumps(self.metadata, sort_keys=True, default=str),
        }
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        return canonical_safetensors(save_bytes(tensors, metadata=header))

    @classmethod
    def load(cls, path: str | Path, expect_fingerprint: str | None = None) -> "Steer":
        """Read a steer file; refuse it when ``expect_fingerprint`` names another base model."""
        path = Path(path)
        if not path.is_file():
            raise SteerFileError(f"steer file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for truncated / foreign files
            raise SteerFileError(f"{path} is not a readable steer file ({exc.__class__.__name__}: {exc})") from exc
        if header.get("format") != "lm-steer":
            raise SteerFileError(f"{path} is a safetensors file but not a steer (no 'lm-steer' format header)")
        try:
            names = json.loads(header["names"])
            dim = int(header["dim"])
            rank = int(header["rank"]) if header["rank"] else None
            epsilon = float(header["epsilon"])
            metadata = json.loads(header.get("metadata") or "{}")
        except (KeyError, ValueError) as exc:
            raise SteerFileError(f"{path}: steer header is incomplete or corrupt ({exc})") from exc
        steer = cls(names, dim, rank, epsilon, metadata)
        try:
            steer.load_state_dict(tensors)
        except RuntimeError as exc:
            raise SteerFileError(f"{path}: tensors do not match the header ({exc})") from exc
        if expect_fingerprint is not None:
            steer.check_base(expect_fingerprint, source=str(path))
        return steer

    def check_base(self, fingerprint: str, source: str = "steer") -> None:
        """Raise BaseModelMismatch unless this steer was trained on the model with ``fingerprint``."""
        own = self.metadata.get("base_fingerprint")
        if own and own != fingerprint:
            name = self.metadata.get("base_model", "another model")
            raise BaseModelMismatch(
                f"{source} was trained on {name} (fingerprint {own[:12]}), not on this model "
                f"(fingerprint {fingerprint[:12]}); use `steer transfer` to move a steer across models"
            )

    def check_model(self, lm, model: str = "the model") -> None:
        """Raise unless this steer fits ``lm`` (a ``LoadedLM``): trained on it (:meth:`check_base`) and of its
        hidden size."""
        self.check_base(lm.fingerprint)
        if self.dim != lm.dim:
            raise ValueError(f"steer dimension {self.dim} does not match {model}'s hidden size {lm.dim}")


def parse_strengths(spec: str | float | None, steer: Steer, default_name: str | None = None) -> torch.Tensor:
    """Turn a CLI strength ("3", "-2.5", "sentiment=2,detox=1") into steer values; dummy stays 0 unless named."""
    values = {name: 0.0 for name in steer.names}
    if spec is None or spec == "":
        return steer.values_tensor(values)
    if isinstance(spec, (int, float)):
        spec = str(spec)
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    for part in parts:
        if "=" in part:
            name, _, raw = part.partition("=")
            name = name.strip()
        else:
            name, raw = default_name or primary_name(steer), part
        try:
            val = float(raw)
        except ValueError:
            raise ValueError(f"strength {raw!r} is not a number (expected e.g. 2, -1.5 or name=2)") from None
        if val != val or val in (float("inf"), float("-inf")):
            raise ValueError(f"strength {raw!r} must be a finite number")
        if name not in values:
            raise ValueError(f"unknown steer name {name!r} in strength; this steer has {steer.names}")
        values[name] = val
    return steer.values_tensor(values)


def primary_name(steer: Steer) -> str:
    """The style steer a bare strength sets: the first name that is not the dummy."""
    for name in steer.names:
        if name != "dummy":
            return name
    return steer.names[0]
