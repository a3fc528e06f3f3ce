#!/usr/bin/env bash
# Run the benchmark on a lent GPU machine whose image lacks diffusers/datasets/evaluate (see docs/performance.md):
#   bash benchmarks/gpu_session.sh --models d16          # one model per call keeps inside a 10-minute command limit
# Wheels in .whl/ (Python 3.12, pure Python) are installed into /tmp/site first; var_hf itself is installed editable.
# tests/test_cuda_graphs.py runs first (it needs pytest's wheels in .whl/ too).
set -euo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# The CUDA-graph path against the plain path, bit for bit (about a minute), then the timings.
PYTHONUNBUFFERED=1 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py || echo "CUDA GRAPH CHECKS FAILED"
PYTHONUNBUFFERED=1 python3 benchmarks/bench_var.py "$@"
