#!/usr/bin/env bash
# Train a larger 2D model (general-2d-large: depth 3, 48 features, noise-aware, about 3.1 M parameters) on the
# lent GPU machine (../shared/device/README.md), from scratch on general-2d's data, and bring the weights back.
#
# Here, from the project root:   ../shared/device/fetch_wheels.sh
# Then the device tool:          run(command="bash scripts/gpu_train.sh", carry=[".whl"], timeout_s=600)
# Back here: copy $OUT/general-2d-large (weights 11.7 MiB) to src/napari_flax_denoise/models/general-2d-large,
# measure it with `python scripts/train_embedded.py --evaluate-only --output ... --compare general-2d`.
# The best weights are saved whenever validation improves, so a run cut short still leaves a model; a later
# run continues it with INIT=<that folder> (and a lower LEARNING_RATE).
set -u
source scripts/device_setup.sh
STEPS=${STEPS:-8000}
if [ -n "${INIT:-}" ]; then
  start=(--init "$INIT" ${LEARNING_RATE:+--learning-rate "$LEARNING_RATE"})
else
  start=(--settings '{"depth": 3, "features": 48, "noise_input": true}')
fi
# 128 patches of 128^2 per step (the accelerator profile's default); about 8.5 minutes in all is the aim.
timeout "${SECONDS_LEFT:-540}" python3 scripts/train_embedded.py --steps "$STEPS" "${start[@]}" --realizations 2 \
  --synthetic 16 --no-evaluate --output "$OUT/general-2d-large" > "$OUT/train.log" 2>&1
echo "train exit $?"
rm -rf "$OUT/general-2d-large/last"  # the resume state (optimiser moments) is too large to come back
tail -c 3000 "$OUT/train.log"
ls -la "$OUT/general-2d-large"
