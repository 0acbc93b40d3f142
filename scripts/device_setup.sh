# Sourced by the scripts that run on the lent GPU machine (bench/gpu_check.sh, scripts/gpu_train.sh):
# the folder whose files come back ($OUT, set by the device tool), the packages that machine lacks (carried
# as .whl/, see ../shared/device/README.md), the package from src/, and no memory preallocation (tests and
# benchmarks start other processes that share the GPU).
OUT=${OUT:-/tmp/device_run}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  >/dev/null || exit 3
export PYTHONPATH=/tmp/site:$PWD/src XLA_PYTHON_CLIENT_PREALLOCATE=false
