"""One array backend for every layer: NumPy on the CPU, CuPy on a GPU.

Layers never import numpy or cupy directly for computation; they ask the array they
were given for its module (``xp = get_array_module(x)``), so the same code runs on both.
CuPy is imported lazily, only when a GPU is asked for.
"""

from __future__ import annotations

import numpy as np

DEVICES = ("cpu", "gpu")


class DeviceError(RuntimeError):
    """Raised when a device is asked for that this machine cannot provide."""


def _cupy():
    try:
        import cupy  # noqa: PLC0415 - optional, imported only when a GPU is asked for
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise DeviceError(
            "device='gpu' needs CuPy: install it with `pip install cupy-cuda12x` "
            "(or the build matching your CUDA), or use device='cpu'."
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # pragma: no cover - depends on the machine
        raise DeviceError(f"device='gpu' asked for, but CUDA is not usable here: {e}") from e
    if n < 1:  # pragma: no cover
        raise DeviceError("device='gpu' asked for, but no CUDA GPU was found.")
    return cupy


def xp_for(device: str):
    """The array module for ``device`` ('cpu' -> numpy, 'gpu' -> cupy)."""
    if device == "cpu":
        return np
    if device == "gpu":
        return _cupy()
    raise DeviceError(f"unknown device {device!r}; choose one of {DEVICES}")


def get_array_module(x):
    """numpy or cupy, whichever owns ``x`` (numpy for anything that is not a CuPy array)."""
    mod = type(x).__module__
    if mod.startswith("cupy"):
        import cupy  # noqa: PLC0415

        return cupy
    return np


def to_device(x, device: str):
    """Copy an array to ``device`` (no copy when it is already there)."""
    xp = xp_for(device)
    if xp is np:
        return to_numpy(x)
    return xp.asarray(x)


def to_numpy(x) -> np.ndarray:
    """A NumPy array from a NumPy or CuPy array."""
    if get_array_module(x) is np:
        return np.asarray(x)
    return x.get()  # pragma: no cover - GPU only


def device_of(x) -> str:
    return "cpu" if get_array_module(x) is np else "gpu"
