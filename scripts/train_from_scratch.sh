#!/usr/bin/env bash
# The best from-scratch model (df-cnn on the NumPy engine, no torch at all): about 9 minutes
# on a 2-core AMD EPYC with the fused kernels; tested once on Test and written to
# runs/default/df-cnn.npz.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DEEPFAKE_DETECTOR_DATA:-../shared/data}/dfdc-faces"
deepfake-detector train --config configs/default.json --data "$DATA" --out runs/default
deepfake-detector release --run runs/default --test "$DATA" --out runs/default/df-cnn.npz
