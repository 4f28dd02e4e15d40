#!/usr/bin/env bash
# Trains the default model shipped in deepfake_detector/assets/default.npz, from scratch, on
# ../shared/data/dfdc-faces (about 80 minutes on 2 CPU cores), then tests it once on Test.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DEEPFAKE_DETECTOR_DATA:-../shared/data}/dfdc-faces"
deepfake-detector train --config configs/default.json --data "$DATA" --out runs/default
deepfake-detector release --run runs/default --test "$DATA" --out deepfake_detector/assets/default.npz
