"""One array backend for every layer: NumPy on the CPU, CuPy on a GPU.

Layers never import numpy or cupy directly for computation; they ask the array they
were given for its module (``xp = get_array_module(x)``), so the same code runs on both.
CuPy is imported lazily, only when a GPU is asked for.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

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


# --- spreading elementwise work over the cores ---------------------------------------------
#
# BLAS already runs the GEMMs on every core; everything else (im2col copies, BatchNorm, ReLU,
# pooling) is a NumPy loop on one core. NumPy releases the GIL inside such loops, so cutting
# the batch into one slice per core and running the slices in threads spreads that work too.

_THREADS = max(1, int(os.environ.get("DEEPFAKE_DETECTOR_THREADS", os.cpu_count() or 1)))
_POOL: ThreadPoolExecutor | None = None


def set_num_threads(n: int) -> None:
    """Threads for the engine's elementwise work, the fused kernels' included (BLAS has its own setting)."""
    global _THREADS, _POOL
    _THREADS = max(1, int(n))
    if _POOL is not None:
        _POOL.shutdown(wait=True)
        _POOL = None


def num_threads() -> int:
    """The engine's thread count (:func:`set_num_threads`, else ``DEEPFAKE_DETECTOR_THREADS``, else the cores)."""
    return _THREADS


def thread_pool() -> ThreadPoolExecutor:
    """The engine's worker threads, one per engine thread, started on first use. Tasks given to
    it must not wait on tasks of their own (nothing run in it submits to it)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="engine")
    return _POOL


def over_batch(fn, n: int, xp=np) -> list:
    """``[fn(slice) for slice in k slices of range(n)]``, the slices run in parallel threads.

    One call with the whole range on CuPy (the GPU is parallel already), with one thread, or
    for a batch of one.
    """
    k = min(_THREADS, n)
    if xp is not np or k < 2:
        return [fn(slice(0, n))]
    bounds = [round(i * n / k) for i in range(k + 1)]
    futures = [thread_pool().submit(fn, slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]
    return [f.result() for f in futures]


# --- keeping freed memory for the next step ----------------------------------------------
#
# A training step allocates the same large temporaries every time (im2col columns, layer
# outputs, gradients: tens to hundreds of MB each). glibc serves blocks above 32 MB with
# mmap and hands them back to the kernel on free, so every step page-faults (and the kernel
# zeroes) all of that memory again: a quarter of a CPU step on seed-cnn. Serving every block
# from the heap and never trimming it lets the next step reuse the same pages. The cost: the
# process keeps its peak memory until it exits (it needs that peak every step anyway).

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # from <malloc.h>


def reuse_freed_memory(enable: bool = True) -> bool:
    """Keep freed memory in this process's heap for reuse (glibc only; a no-op elsewhere).

    Called by the command line before training, evaluating or predicting; library users
    may call it themselves. ``DEEPFAKE_DETECTOR_REUSE_MEMORY=0`` turns it off everywhere.
    Returns whether the setting is in force. Process-wide: it changes how every later
    allocation of the process is served, not only the engine's.
    """
    if os.environ.get("DEEPFAKE_DETECTOR_REUSE_MEMORY", "1") == "0":
        return False
    import ctypes  # noqa: PLC0415
    import platform  # noqa: PLC0415

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if enable:
        ok = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    else:  # glibc's defaults
        ok = libc.mallopt(_M_MMAP_MAX, 65536) and libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
    return bool(ok) and enable
