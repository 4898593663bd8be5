"""steer_core: LM-Steer (arXiv 2305.12798) as a library: load a frozen LM, fit steers on cached hidden states,
generate with them, evaluate them. Imports no Prefect, MLflow or DVC."""

__version__ = "0.1.0"
