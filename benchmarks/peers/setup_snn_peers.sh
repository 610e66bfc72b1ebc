#!/usr/bin/env bash
# The spiking-simulator peers' own environment (chapter 6, benchmarks/snn_peers.py): brian2 with its Cython
# target (needs a C++ compiler: g++) and snnTorch. brian2 needs numpy < 2.4 (2.9 fails to import with 2.4), the
# main .venv has numpy 2.4, so the peers live in their own venv and run as subprocesses of benchmarks/snn_peers.py.
#   bash benchmarks/peers/setup_snn_peers.sh           # -> .venv-snnpeers (git-ignored)
#   .venv/bin/python benchmarks/snn_peers.py           # runs ours here and the peers in .venv-snnpeers
# torch is the CPU wheel pinned by .ci/constraints.txt (an unpinned torch pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv-snnpeers}
PY=${PYTHON:-python3.11}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q -c .ci/constraints.txt)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" "numpy<2.4" "brian2>=2.9" cython snntorch
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
import brian2, numpy, snntorch, torch
print("brian2", brian2.__version__, "numpy", numpy.__version__, "snntorch", version("snntorch"), "torch",
      torch.__version__, "cython", version("cython"))
PY
