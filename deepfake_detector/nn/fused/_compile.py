"""How the fused kernels are compiled: Numba's on-disk cache in the user's cache folder (so
each kernel is compiled once per machine, not once per process), one decorator for all of
them, and Numba's thread count kept to the engine's.
"""

from __future__ import annotations

import contextlib
import os
import threading

from ..kernels import cache_dir

if not os.environ.get("NUMBA_CACHE_DIR"):  # before Numba reads its configuration
    os.environ["NUMBA_CACHE_DIR"] = str(cache_dir() / "numba")

import numba  # noqa: E402
import numpy as np  # noqa: E402

if not numba.config.CACHE_DIR:  # Numba was imported before us, without a cache folder of its own
    numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]

# Compiled on first call for the argument types seen (float32 and float64 alike) and kept on
# disk. parallel: numba.prange loops run on Numba's threads; fastmath off: IEEE arithmetic in
# the order written, so results stay those of the reference; error_model="numpy": a division
# by zero gives inf/nan instead of a check on every division; nogil: callers in other Python
# threads run at the same time.
kernel = numba.njit(cache=True, parallel=True, fastmath=False, error_model="numpy", nogil=True)
serial_kernel = numba.njit(cache=True, parallel=False, fastmath=False, error_model="numpy", nogil=True)
helper = numba.njit(cache=True, fastmath=False, error_model="numpy", nogil=True)  # called by kernels

prange = numba.prange

# Offsets into flat views are written as ``u(...)``, unsigned. Numba adds a wrap-around check (a
# negative index counts from the end) to every signed index it cannot prove non-negative, and
# that check keeps LLVM from vectorising a copy loop; offsets that are non-negative by
# construction need none as ``uint64``. Written with signed offsets or slices, im2col's row
# copies ran 3-7x slower. (Mixing it with a signed int gives a float in Numba: wrap both.)
u = np.uint64


def _start_threads() -> None:
    """Start Numba's thread pool now, its idle OpenMP threads told to sleep rather than spin.

    Conv2D alternates Numba kernels with OpenBLAS GEMMs many times a step; with OpenMP's
    default (spin after each parallel loop), Numba's idle threads and OpenBLAS's busy ones
    fight over the cores, and a chunked convolution ran 2-8x slower. OpenMP reads
    ``OMP_WAIT_POLICY`` once, when its library loads, so it is set for that moment only:
    child processes, and other OpenMP runtimes (torch's, scikit-learn's), keep their own.
    A policy the user set is kept; so is a pool that is already running.
    """
    from numba.np.ufunc import parallel  # noqa: PLC0415

    if os.environ.get("OMP_WAIT_POLICY"):
        return  # the user's, read when the pool starts
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        parallel._launch_threads()
    finally:
        del os.environ["OMP_WAIT_POLICY"]


_start_threads()


@helper
def total(buf):
    """sum(buf) in float64, in order: the last step of the kernels' sums, which first add
    along the batch per position (a vector loop: no sum is reassociated, fastmath off)."""
    s = 0.0
    for i in range(buf.size):
        s += buf[i]
    return s


_synced = threading.local()  # the engine's thread count this thread last applied


def sync_threads() -> None:
    """Numba's thread count for the calling thread (Numba keeps one per thread) set to the
    engine's (:func:`deepfake_detector.nn.backend.set_num_threads`), at most Numba's pool size."""
    from .. import backend  # noqa: PLC0415

    want = backend.num_threads()
    if getattr(_synced, "n", None) != want:
        numba.set_num_threads(min(want, numba.config.NUMBA_NUM_THREADS))
        _synced.n = want


# --- a batch spread over the engine's threads, one core per chunk ------------------------------

_blas_lock = threading.Lock()
_blas = {"users": 0, "limiter": None, "controller": None}


@contextlib.contextmanager
def one_blas_thread():
    """BLAS single-threaded while any caller is inside (process-wide; callers in several threads
    share one limit, and the last one out restores what was set before)."""
    with _blas_lock:
        if _blas["users"] == 0:
            if _blas["controller"] is None:
                from threadpoolctl import ThreadpoolController  # noqa: PLC0415

                _blas["controller"] = ThreadpoolController()
            _blas["limiter"] = _blas["controller"].limit(limits=1, user_api="blas")
        _blas["users"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas["users"] -= 1
            if _blas["users"] == 0:
                _blas["limiter"].restore_original_limits()


def over_chunks(fn, parts) -> list:
    """``[fn(part) for part in parts]``, the parts spread over the engine's threads.

    Each task runs serial kernels and a single-threaded BLAS on one core, so a chunk's
    columns stay in that core's cache from the im2col that writes them to the GEMM that
    reads them (two threads sharing each GEMM would stream them through memory). The
    results come back in order, so a sum over them does not depend on the thread count.
    """
    from .. import backend  # noqa: PLC0415

    if backend.num_threads() < 2 or len(parts) < 2:
        return [fn(part) for part in parts]
    with one_blas_thread():
        return list(backend.thread_pool().map(fn, parts))
