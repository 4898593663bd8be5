# Source this to keep every tool's state inside the project and make hub misses fail fast (see README).
_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
export STEER_PROJECT="${STEER_PROJECT:-$_root}"   # this copy of the project: where a pool worker started here runs
export STEER_CACHE_DIR="${STEER_CACHE_DIR:-$_root/.cache/steer}"
export HF_HOME="${HF_HOME:-$_root/.cache/hf}"
export TORCH_HOME="${TORCH_HOME:-$_root/.cache/torch}"
export TMPDIR="${TMPDIR:-$_root/.tmp}"
export PREFECT_HOME="${PREFECT_HOME:-$_root/.prefect}"
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_DISABLE_TELEMETRY=true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
export DVC_NO_ANALYTICS=1
export DVC_SITE_CACHE_DIR="${DVC_SITE_CACHE_DIR:-$_root/.dvc-site}"
export TOKENIZERS_PARALLELISM=false
export MPLCONFIGDIR="${MPLCONFIGDIR:-$_root/.cache/matplotlib}"
case ":$PATH:" in *":$_root/.venv/bin:"*) ;; *) [ -d "$_root/.venv/bin" ] && export PATH="$_root/.venv/bin:$PATH" ;; esac
mkdir -p "$TMPDIR" "$STEER_CACHE_DIR" "$HF_HOME"
unset _root
