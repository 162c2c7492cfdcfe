#!/usr/bin/env bash
# The GPU checks of issue #14 on a lent NVIDIA machine with no package index (how docs/benchmarks-gpu.md was measured).
# The machine has CUDA, CuPy, PyTorch and GPyTorch; what xsi_dask needs beside them travels as wheels in .whl/
# (python -m pip download --python-version 3.12 ... dask distributed zarr numcodecs rosettasciio ...), and three
# real maps in .gpu-data/eds/ (copied from ../shared/data/eds). Usage: bash benchmarks/gpu_machine.sh STEP... with
# STEP in tests, kernels, dkl, smoke, paper; results under $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba-cache
mkdir -p ../shared/data/eds && cp -n .gpu-data/eds/* ../shared/data/eds/ 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import cupy, torch, gpytorch, dask, distributed, zarr, numba; print('cupy', cupy.__version__, 'torch', torch.__version__, 'dask', dask.__version__, 'numba', numba.__version__)"
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
    tests) timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -s -x 2>&1 | tail -60 | tee "$OUT/tests.log" ;;
    kernels) timeout 240 python3 benchmarks/bench_gpu.py --out /tmp/bg --stages kernels --report /tmp/bg/r.md && cp /tmp/bg/kernels.json /tmp/bg/machine.json "$OUT/" ;;
    dkl) timeout 150 python3 benchmarks/bench_gpu.py --out /tmp/bg --stages dkl --report /tmp/bg/r.md && cp /tmp/bg/dkl.json "$OUT/" ;;
    smoke) timeout 120 python3 benchmarks/bench_gpu.py --out /tmp/bgs --stages paper --tiles 2x2 --tile-shape 256x256 --nmf-iter 3 --report /tmp/bgs/r.md ;;
    paper) timeout 560 python3 benchmarks/bench_gpu.py --out /tmp/bg --stages paper --report /tmp/bg/r.md; cp /tmp/bg/paper.json /tmp/bg/machine.json "$OUT/" 2>/dev/null ;;
  esac
done
echo "=== done $(date +%T)"
