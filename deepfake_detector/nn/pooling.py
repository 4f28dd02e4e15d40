"""Pooling layers: max and average over windows, global average pooling, and attention pooling
over tokens, each with its forward and backward side by side (windows as strided views, see :mod:`.im2col`).
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


class AttentionPool(Layer):
    """(N, T, D) tokens -> (N, D): a weighted mean of the tokens, the weights a softmax over
    the tokens of a learned score (attention-based pooling, Ilse et al. 2018):

        h = tanh(x @ W.T + b)   (N, T, H)       s = h @ v   (N, T)
        a = softmax(s, axis=1)                  y = sum_t a[:, t] * x[:, t]

    ``weight`` W is (hidden, dim) as a Dense layer's, ``bias`` b (hidden,), ``score`` v (hidden,).
    A head on a ViT's patch tokens learns which patches to look at, where a mean weighs all alike.
    """

    def __init__(self, dim: int, hidden: int = 64, rng=None, dtype=np.float32):
        super().__init__()
        from .layers import reserve_params

        self.dim, self.hidden = dim, hidden
        rng = rng if rng is not None else np.random.default_rng()
        reserve_params((hidden, dim), (hidden,), (hidden,))
        self.params["weight"] = (rng.standard_normal((hidden, dim)) * np.sqrt(1.0 / dim)).astype(dtype)
        self.params["bias"] = np.zeros(hidden, dtype=dtype)
        self.params["score"] = (rng.standard_normal(hidden) * np.sqrt(1.0 / hidden)).astype(dtype)

    def weights_of(self, x):
        """(N, T) attention weights of tokens ``x``, and the (N, T, H) hidden activations."""
        xp = get_array_module(x)
        N, T, D = x.shape
        h = xp.tanh((x.reshape(N * T, D) @ self.params["weight"].T + self.params["bias"]).reshape(N, T, -1))
        s = h @ self.params["score"]  # (N, T)
        e = xp.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True), h

    def forward(self, x, training=False):
        a, h = self.weights_of(x)
        self._cache = (x, a, h) if grad_enabled() else None
        return (a[:, None, :] @ x)[:, 0, :]  # (N, 1, T) @ (N, T, D)

    def backward(self, grad, need_input_grad=True):
        (x, a, h), self._cache = self._cache, None
        N, T, D = x.shape
        da = (x @ grad[:, :, None])[:, :, 0]  # (N, T): dL/da_t = x_t . g
        ds = a * (da - (a * da).sum(axis=1, keepdims=True))  # through the softmax
        self._accumulate("score", (h * ds[:, :, None]).sum(axis=(0, 1)))
        dpre = (ds[:, :, None] * self.params["score"]) * (1 - h * h)  # (N, T, H), through the tanh
        dpre2 = dpre.reshape(N * T, -1)
        self._accumulate("weight", dpre2.T @ x.reshape(N * T, D))
        self._accumulate("bias", dpre2.sum(axis=0))
        if not need_input_grad:
            return None
        return a[:, :, None] * grad[:, None, :] + (dpre2 @ self.params["weight"]).reshape(N, T, D)

    def extra_repr(self):
        return f"{self.dim}, hidden={self.hidden}"
