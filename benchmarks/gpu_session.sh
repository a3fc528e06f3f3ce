#!/usr/bin/env bash
# Verify the experimental fast path on a CUDA machine, then benchmark it (see docs/performance.md):
#   bash benchmarks/gpu_session.sh --models d16 d30 --repeats 2
# Wheels in .whl/ (pure Python; for machines without diffusers/datasets/evaluate/pytest) are installed into /tmp/site
# first; var_hf itself is installed editable. tests/test_cuda_graphs.py runs first, then benchmarks/bench_var.py.
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
