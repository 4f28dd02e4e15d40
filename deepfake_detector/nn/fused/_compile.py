"""How the fused kernels are compiled: Numba's on-disk cache in the user's cache folder (so
each kernel is compiled once per machine, not once per process), one decorator for all of
them, and Numba's thread count kept to the engine's.
"""

from __future__ import annotations

import os
import threading

from ..kernels import cache_dir

if not os.environ.get("NUMBA_CACHE_DIR"):  # before Numba reads its configuration
    os.environ["NUMBA_CACHE_DIR"] = str(cache_dir() / "numba")

import numba  # noqa: E402

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

    want = backend._THREADS
    if getattr(_synced, "n", None) != want:
        numba.set_num_threads(min(want, numba.config.NUMBA_NUM_THREADS))
        _synced.n = want
