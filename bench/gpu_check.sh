#!/usr/bin/env bash
# The one prepared run for the GPU machine (../shared/device/README.md): the GPU benchmark (inference and
# training beside PyTorch, start-up, bfloat16's cost; bench/gpu.py) and the backend-dependent tests, with
# every result and log written under $OUT as it comes, so that a timeout still brings them back.
#
# Here, from the project root:   ../shared/device/fetch_wheels.sh
# Then the device tool:          run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Results: $OUT/gpu.json and gpu.md (copy them to bench/ and quote them in bench/README.md), gpu.log,
# tests.log, device.txt.
set -u
source scripts/device_setup.sh
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import jax; print(jax.devices())"; } \
  > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
# About 5 minutes on one H200; the numbers the issues name are in gpu.json.
timeout 330 python3 bench/gpu.py --output "$OUT/gpu.json" > "$OUT/gpu.log" 2>&1
echo "bench exit $?"
tail -c 2500 "$OUT/gpu.log"
# The files whose path depends on the backend profile, on the GPU (float32 comparisons pin full precision
# themselves); 8 workers share the GPU.
timeout 230 python3 -m pytest -q -n 8 -p no:cacheprovider -m "not slow" tests/test_resident.py tests/test_backend.py \
  tests/test_prediction.py tests/test_fusion.py tests/test_noise_level.py tests/test_normalization.py tests/test_device_training.py \
  tests/test_training.py > "$OUT/tests.log" 2>&1
echo "tests exit $?"
tail -c 2500 "$OUT/tests.log"
