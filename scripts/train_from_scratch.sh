#!/usr/bin/env bash
# The best from-scratch model (df-cnn on the NumPy engine, no torch at all): about 80 minutes
# on 2 CPU cores; tested once on Test and written to runs/default/df-cnn.npz.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DEEPFAKE_DETECTOR_DATA:-../shared/data}/dfdc-faces"
deepfake-detector train --config configs/default.json --data "$DATA" --out runs/default
deepfake-detector release --run runs/default --test "$DATA" --out runs/default/df-cnn.npz
