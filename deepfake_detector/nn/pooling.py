"""Pooling layers: max and average over windows, and global average pooling, each with its
forward and backward side by side (windows as strided views, see :mod:`.im2col`).
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module, over_batch
from .grad import grad_enabled
from .im2col import _pad, _windows, out_size
from .kernels import FUSED, fused_for, fused_kernels
from .layers import Layer


class MaxPool2D(Layer):
    """Max over each window; the gradient goes to the first maximum, as in PyTorch."""

    def __init__(self, kernel_size=2, stride=None, padding=0):
        super().__init__()
        self.k, self.s, self.p = kernel_size, stride or kernel_size, padding

    def forward(self, x, training=False):
        fk = fused_for(x)
        if fk is not None:  # the max and its argmax in one pass; backward scatters by the argmax
            out, arg = fk.pooling.max_pool(x, self.k, self.s, self.p, keep_arg=grad_enabled())
            self._cache = (FUSED, arg, x.shape) if grad_enabled() else None
            return out
        xp = get_array_module(x)
        N, C, H, W = x.shape
        k, s, p = self.k, self.s, self.p
        Ho, Wo = out_size(H, k, s, p), out_size(W, k, s, p)
        x = _pad(x, p, -np.inf)
        out = xp.empty((N, C, Ho, Wo), x.dtype)

        def run(b):  # images b of the batch
            for n, (_, _, view) in enumerate(_windows(x[b], k, k, s, Ho, Wo)):
                if n == 0:
                    out[b] = view
                else:
                    xp.maximum(out[b], view, out=out[b])

        over_batch(run, N, xp)
        self._cache = (x, out) if grad_enabled() else None  # x is the ReLU's cached output anyway
        return out

    def backward(self, grad, need_input_grad=True):
        if self._cache[0] is FUSED:
            _, arg, x_shape = self._cache
            self._cache = None
            return fused_kernels().pooling.max_pool_backward(grad, arg, x_shape, self.k, self.s, self.p)
        x, out = self._cache
        self._cache = None
        xp = get_array_module(grad)
        k, s, p = self.k, self.s, self.p
        Ho, Wo = out.shape[2:]
        # disjoint windows that tile the input: each gradient is written once, no zero-fill
        tiled = k == s and p == 0 and x.shape[2] == k * Ho and x.shape[3] == k * Wo
        dx = xp.empty(x.shape, grad.dtype) if tiled else xp.zeros(x.shape, grad.dtype)

        def run(b):
            taken = None  # windows whose maximum was already routed (ties: the first one wins)
            o, g = out[b], grad[b]
            for (_, _, view), (_, _, dview) in zip(_windows(x[b], k, k, s, Ho, Wo),
                                                   _windows(dx[b], k, k, s, Ho, Wo)):
                hit = view == o
                if taken is None:
                    taken = hit.copy()
                else:
                    xp.greater(hit, taken, out=hit)  # hit and not yet taken
                    taken |= hit
                if tiled:
                    xp.multiply(g, hit, out=dview)
                else:
                    dview += g * hit

        over_batch(run, grad.shape[0], xp)
        if p:
            dx = dx[:, :, p:-p, p:-p]
        return dx

    def extra_repr(self):
        return f"kernel_size={self.k}, stride={self.s}, padding={self.p}"


class AvgPool2D(Layer):
    """Mean over each window; zero padding counts in the mean (PyTorch's default)."""

    def __init__(self, kernel_size=2, stride=None, padding=0):
        super().__init__()
        self.k, self.s, self.p = kernel_size, stride or kernel_size, padding

    def forward(self, x, training=False):
        N, C, H, W = x.shape
        k, s, p = self.k, self.s, self.p
        Ho, Wo = out_size(H, k, s, p), out_size(W, k, s, p)
        x = _pad(x, p)
        out = None
        for _, _, view in _windows(x, k, k, s, Ho, Wo):
            out = view.copy() if out is None else out.__iadd__(view)
        out *= 1.0 / (k * k)
        self._cache = ((N, C, H + 2 * p, W + 2 * p), Ho, Wo) if grad_enabled() else None
        return out

    def backward(self, grad, need_input_grad=True):
        padded_shape, Ho, Wo = self._cache
        self._cache = None
        xp = get_array_module(grad)
        dx = xp.zeros(padded_shape, dtype=grad.dtype)
        g = grad * (1.0 / (self.k * self.k))
        for _, _, view in _windows(dx, self.k, self.k, self.s, Ho, Wo):
            view += g
        p = self.p
        return dx[:, :, p:-p, p:-p] if p else dx

    def extra_repr(self):
        return f"kernel_size={self.k}, stride={self.s}, padding={self.p}"


class GlobalAvgPool2D(Layer):
    """(N, C, H, W) -> (N, C): the mean over all positions."""

    def forward(self, x, training=False):
        self._hw = x.shape[2:]
        return x.mean(axis=(2, 3))

    def backward(self, grad, need_input_grad=True):
        xp = get_array_module(grad)
        H, W = self._hw
        return xp.broadcast_to((grad / (H * W))[:, :, None, None], grad.shape + (H, W)).copy()
