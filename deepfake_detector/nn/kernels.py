"""Which kernels run the engine's memory-bound passes on NumPy arrays.

Two kernel sets compute the same thing:

- ``numpy``: the reference, the layers' own NumPy code (also the only path for CuPy arrays);
- ``fused``: Numba kernels in :mod:`.fused` that do in one pass over memory what the
  reference does in several (batch norm with the ReLU after it, max pooling with its argmax,
  im2col/col2im with the layout copies around the GEMM, softmax cross-entropy, optimiser
  updates). The GEMMs stay NumPy's (BLAS).

The choice is made here and nowhere else: ``DEEPFAKE_DETECTOR_KERNELS=fused|numpy`` (default:
``fused`` where Numba imports, else ``numpy``), or :func:`use_kernels` (also a context manager);
:func:`kernels_in_use` reads it. Numba is imported on first use, not with the package.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from ..user_cache import cache_dir  # noqa: F401 - where the fused kernels' compile cache lives

ENV_KERNELS = "DEEPFAKE_DETECTOR_KERNELS"
KERNEL_SETS = ("fused", "numpy")

FUSED = object()  # first item of a layer's cache written by a fused kernel (its backward takes the same path)


def _parse(name) -> str | None:
    if name is None or name == "":
        return None
    name = str(name).strip().lower()
    if name not in KERNEL_SETS:
        raise ValueError(f"unknown kernel set {name!r}; choose one of {KERNEL_SETS}")
    return name


_requested: str | None = _parse(os.environ.get(ENV_KERNELS))  # None: fused where Numba imports
_fused_module = None  # the imported .fused package, once loaded
_fused_error: Exception | None = None  # why it could not be loaded
_active = None  # the fused package while it is in use, else None (the hot path reads only this)
_resolved = False


def _load_fused():
    global _fused_module, _fused_error
    if _fused_module is None and _fused_error is None:
        try:
            from . import fused  # noqa: PLC0415 - imports Numba: on first use only

            _fused_module = fused
        except ImportError as e:
            _fused_error = e
    return _fused_module


def _resolve():
    global _active, _resolved
    if _requested == "numpy":
        _active = None
    else:
        mod = _load_fused()
        if mod is None and _requested == "fused":
            raise ImportError(f"the fused kernels need Numba (pip install numba): {_fused_error}") from _fused_error
        _active = mod
    _resolved = True
    return _active


def kernels_in_use() -> str:
    """'fused' or 'numpy': the kernel set layers use for NumPy arrays (CuPy arrays always take numpy's)."""
    return "fused" if (_active if _resolved else _resolve()) is not None else "numpy"


class use_kernels:
    """Select the kernel set ('fused' or 'numpy'; None: the default) for the whole process.

    Takes effect at once; used as a context manager, the previous choice comes back on exit::

        with nn.use_kernels("numpy"):
            reference = net.forward(x)

    Asking for 'fused' where Numba cannot be imported raises ImportError.
    """

    def __init__(self, name):
        global _requested
        self._previous = (_requested, _active, _resolved)
        new = _parse(name)
        _requested = new
        try:
            _resolve()
        except ImportError:
            self._restore()
            raise

    def _restore(self):
        global _requested, _active, _resolved
        _requested, _active, _resolved = self._previous

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._restore()
        return False


def fused_for(x):
    """The fused kernel package when fused kernels are in use and ``x`` is a NumPy array, else None.

    Called by every layer that has a fused path; it also brings Numba's thread count to the
    engine's (:func:`.backend.set_num_threads`) for the calling thread.
    """
    mod = _active if _resolved else _resolve()
    if mod is None or not isinstance(x, np.ndarray):
        return None
    mod.sync_threads()
    return mod


def fused_kernels():
    """The fused kernel package, for a backward pass whose forward ran fused (whatever is in use now)."""
    mod = _load_fused()
    if mod is None:  # pragma: no cover - a fused forward implies the package loaded
        raise ImportError(f"the fused kernels need Numba: {_fused_error}")
    mod.sync_threads()
    return mod


SMALL_GEMM = 1 << 22  # multiply-adds under which a BLAS product on the fused path runs on one thread


def small_product(x, macs: int):
    """A context for a BLAS product of ``macs`` multiply-adds on ``x``: one BLAS thread where
    the fused kernels are in use and the product is under :data:`SMALL_GEMM`, else nothing.

    OpenBLAS runs such a product (seed-cnn's last Dense layer: 2M multiply-adds, 50 us) on
    all its threads, and its idle threads then spin for about 0.1 s: on 2 cores they took one
    from the convolutions and batch norms that came next, and a seed-cnn training step ran
    1.3x slower. The fused kernels parallelise over chunks themselves (one BLAS thread each).
    """
    if macs >= SMALL_GEMM or fused_for(x) is None:
        return contextlib.nullcontext()
    return fused_kernels().one_blas_thread()
