"""Which device the engine tests run on: NumPy by default, CuPy with
``DEEPFAKE_DETECTOR_TEST_DEVICE=gpu`` (on a machine with CuPy and a CUDA GPU, where a missing
GPU is an error, not a skip). The oracle (PyTorch on the CPU) and the comparisons stay on
the host; only the engine's arrays move.
"""

from __future__ import annotations

import os

from deepfake_detector import nn

DEVICE = os.environ.get("DEEPFAKE_DETECTOR_TEST_DEVICE", "cpu")


def dev(a):
    """``a`` on the engine's test device."""
    return nn.to_device(a, DEVICE)


def host(a):
    """``a`` as a NumPy array."""
    return nn.to_numpy(a)
