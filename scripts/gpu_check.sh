#!/usr/bin/env bash
# The engine's GPU checks in one short run, sized for a 15-minute lease of a CUDA machine:
# the engine's layer, loss and network tests on CuPy (the oracle, PyTorch, stays on the CPU),
# then the engine-against-PyTorch-CUDA benchmark. Prints the GPU first; the benchmark's last
# line is the seed-cnn ratio.
#   bash scripts/gpu_check.sh            # from the repository root, in its environment
# Needs: pip install -e ".[test,torch]" cupy-cuda12x (or the CuPy build for the CUDA there).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -c "import cupy; print('cupy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'device(s)')"
DEEPFAKE_DETECTOR_TEST_DEVICE=gpu timeout 300 python -m pytest -q -p no:cacheprovider \
    tests/test_nn_layers.py tests/test_nn_loss_optim.py tests/test_nn_network.py
timeout 240 python benchmarks/engine_vs_torch.py --device gpu --steps 20 --rounds 3
