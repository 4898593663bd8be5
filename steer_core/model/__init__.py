"""The frozen language model and the steer on top of it.

- ``lm``: load a model from a spec (``default``, a hub id, a directory, a GGUF), once per process (:func:`lm.shared_lm`);
- ``steer``: the Steer (W_i, ε, values) and its safetensors file;
- ``sampling``: the nucleus sampler with per-row random numbers;
- ``generate``: batched steered generation.
"""
