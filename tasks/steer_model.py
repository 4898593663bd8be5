"""MLflow pyfunc "model from code" that samples steered text from a frozen base LM.

MLflow copies this file into the model and executes it at load time, so no Python object is ever pickled: the model
is this code, ``steer_core`` (logged as ``code_paths``) and one artifact, the steer's ``.safetensors`` file. The
base LM is not stored in the model; ``load_context`` loads it from the spec recorded in the steer
(``metadata['base_model']``; ``default`` is the packaged SmolLM2 and works offline) and refuses it unless its
fingerprint matches the one the steer was trained on.

Input: a DataFrame with column ``prompt`` and optional column ``strength`` (per-row strength of the primary steer;
missing / NaN → the ``strength`` param). Params: strength, max_new_tokens, num_samples, top_p, temperature, seed, base_nucleus.
Output: one row per prompt × sample with columns prompt, strength, sample_index, generation.
"""

from __future__ import annotations

import math
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from steer_core.config import MAX_NEW_TOKENS, TEMPERATURE, TOP_P

STEER_ARTIFACT = "steer"
#: Generation params and their defaults; registry.py builds the signature's ParamSchema from this (strength's
#: default there is the steer's recommended strength).
DEFAULT_PARAMS: dict[str, Any] = {
    "strength": 0.0,
    "max_new_tokens": MAX_NEW_TOKENS,
    "num_samples": 1,
    "top_p": TOP_P,
    "temperature": TEMPERATURE,
    "seed": 0,
    "base_nucleus": False,  # sample within the unsteered model's nucleus (steer_core.model.sampling); set at registration
}


class SteerModel(PythonModel):
    """Steered generation: base LM + steer, loaded once per process in ``load_context``."""

    def load_context(self, context: PythonModelContext) -> None:
        from steer_core.model.lm import load_lm
        from steer_core.model.steer import Steer

        path = context.artifacts[STEER_ARTIFACT]
        self.steer = Steer.load(path)
        device = (context.model_config or {}).get("device", "auto")
        self.lm = load_lm(self.steer.metadata.get("base_model") or "default", device=device)
        self.steer.check_base(self.lm.fingerprint, source=path)  # refuse a steer trained on another model
        self.defaults = {**DEFAULT_PARAMS, **(context.model_config or {}).get("defaults", {})}

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Params override the signature's defaults. (MLflow accepts a DataFrame hint without deriving a schema.)"""
        import torch

        from steer_core.model.generate import generate, values_for

        p = {**self.defaults, **{k: v for k, v in (params or {}).items() if v is not None}}
        df = _as_frame(model_input)
        default_strength = float(p["strength"])
        strengths = [_strength(v, default_strength) for v in df.get("strength", [None] * len(df))]
        prompts = [str(x) for x in df["prompt"]]
        n = int(p["num_samples"])
        rows = torch.stack([values_for(self.steer, s) for s in strengths for _ in range(n)])
        gens = generate(
            self.lm, prompts, self.steer, rows, num_samples=n, max_new_tokens=int(p["max_new_tokens"]),
            top_p=float(p["top_p"]), temperature=float(p["temperature"]), seed=int(p["seed"]),
            base_nucleus=bool(p["base_nucleus"]),
        )
        return pd.DataFrame(
            {
                "prompt": [g.prompt for g in gens],
                "strength": [float(g.strength) for g in gens],
                "sample_index": [int(g.sample_index) for g in gens],
                "generation": [g.text for g in gens],
            }
        )


def _as_frame(model_input: Any) -> pd.DataFrame:
    """The scoring server and ``pyfunc.predict`` hand over a DataFrame; a plain dict of columns works too."""
    df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    if "prompt" not in df.columns:
        raise ValueError(f"input needs a 'prompt' column, got columns {list(df.columns)}")
    if len(df) == 0:
        raise ValueError("input has no rows: nothing to generate")
    return df


def _strength(value: Any, default: float) -> float:
    if value is None:
        return default
    val = float(value)
    if math.isnan(val):
        return default
    if math.isinf(val):
        raise ValueError(f"strength must be finite, got {value!r}")
    return val


mlflow.models.set_model(SteerModel())
