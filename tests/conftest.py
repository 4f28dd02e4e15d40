"""Shared fixtures. Real data lives beside the project, never inside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    """``$DEEPFAKE_DETECTOR_DATA`` or ``../shared/data`` from the project root, if present."""
    env = os.environ.get("DEEPFAKE_DETECTOR_DATA")
    root = Path(env) if env else PROJECT_ROOT.parent / "shared" / "data"
    return root if (root / "dfdc-faces").is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("real data not found: set DEEPFAKE_DETECTOR_DATA or place it at ../shared/data")
    return root


@pytest.fixture(scope="session")
def dfdc_faces(data_root) -> Path:
    return data_root / "dfdc-faces"


@pytest.fixture(scope="session")
def videos_dir(data_root) -> Path:
    d = data_root / "videos"
    if not d.is_dir():
        pytest.skip(f"no videos folder at {d}")
    return d


@pytest.fixture(params=["numpy", "fused"])
def kernels(request):
    """Runs the test once with each kernel set of the engine: the NumPy reference and the fused kernels."""
    from deepfake_detector import nn

    if request.param == "fused":
        if os.environ.get("DEEPFAKE_DETECTOR_TEST_DEVICE", "cpu") != "cpu":
            pytest.skip("the fused kernels are CPU kernels: CuPy arrays always take the reference")
        pytest.importorskip("numba", reason="the fused kernels need Numba")
    with nn.use_kernels(request.param):
        yield request.param
