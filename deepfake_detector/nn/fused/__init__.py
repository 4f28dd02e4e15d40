"""Fused CPU kernels for the engine's memory-bound passes, compiled with Numba.

Each module mirrors the reference module it accelerates, kernel beside kernel:
:mod:`.norm` (batch norm, optionally with the ReLU after it), :mod:`.activations` (ReLU),
:mod:`.pooling` (max pooling), :mod:`.im2col` (im2col, col2im, Conv2D's layout copies),
:mod:`.winograd` (3x3 stride-1 convolutions by Winograd's F(2x2, 3x3)),
:mod:`.losses` (softmax cross-entropy), :mod:`.optim` (SGD, Adam, AdamW). They work on NumPy
arrays of float32 or float64; which kernels the layers use is chosen in :mod:`..kernels`.
Compiled code is kept on disk (see :mod:`._compile`); :func:`warm_up` compiles (or loads) all.
"""

from __future__ import annotations

import time

import numpy as np

from . import activations, im2col, losses, norm, optim, pooling, winograd
from ._compile import one_blas_thread, sync_threads

__all__ = ["activations", "im2col", "losses", "norm", "one_blas_thread", "optim", "pooling", "sync_threads", "warm_up",
           "winograd"]


def warm_up(dtypes=(np.float32,)) -> float:
    """Compile every kernel for ``dtypes`` (or load it from the disk cache), with the argument
    types the layers pass; returns the seconds it took."""
    start = time.perf_counter()
    sync_threads()
    rng = np.random.default_rng(0)
    for dt in dtypes:
        x = rng.standard_normal((2, 3, 5, 5)).astype(dt)
        c = np.ones(3, dt)
        for training in (True, False):
            y, saved = norm.batch_norm_forward(x, c, c, c, c, 1e-5, training, relu=True)
            norm.batch_norm_backward(saved, y, c, c, training, relu=True)
        activations.relu_backward(activations.relu(x), x)
        out, arg = pooling.max_pool(x, 2, 2, 0)
        pooling.max_pool_backward(out, arg, x.shape, 2, 2, 0)
        w = np.ones((2, 3, 3, 3), dt)
        y, _ = im2col.conv_forward(x, w, c[:2].copy(), 1, 1)
        im2col.conv_backward(y, w, 1, 1, x.shape, x=x)
        y, _ = winograd.conv_forward(x, w, c[:2].copy(), 1)
        winograd.conv_backward(y, w, 1, x.shape, x=x)
        losses.softmax_cross_entropy(x[:, :, 0, 0].copy(), np.array([0, 2]))
        for size in (8, optim.PARALLEL_FROM):  # the serial and the parallel update
            p, g = np.ones(size, dt), np.ones(size, dt)
            optim.sgd_update(p, g, {}, 0.1, 0.9, False, 0.0)
            optim.adam_update(p, g, {}, 0.1, 1, (0.9, 0.999), 1e-8, 0.0, False)
    return time.perf_counter() - start
