#!/usr/bin/env bash
# The kvpress peer's own environment: kvpress 0.5.5 needs transformers<5.3, the main .venv has 5.24.
#   bash benchmarks/peers/setup_kvpress.sh          # -> .venv-kvpress (git-ignored)
#   .venv-kvpress/bin/python benchmarks/kvpress_compare.py
# torch is the CPU wheel pinned by .ci/constraints.txt; labkit is installed editable without its heavy
# (notebook) deps: labkit.models / labkit.kv / labkit.data need only torch and numpy.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv-kvpress}
PY=${PYTHON:-python3.11}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q -c .ci/constraints.txt)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" kvpress==0.5.5 "transformers>=4.56,<5.3"
"${PIP[@]}" numpy numba scipy plotly tqdm hypothesis
"${PIP[@]}" --no-deps -e .
"$VENV/bin/python" - <<'PY'
import kvpress, torch, transformers
from importlib.metadata import version
print("kvpress", version("kvpress"), "transformers", transformers.__version__, "torch", torch.__version__)
PY
