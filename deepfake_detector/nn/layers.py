"""Layers of the from-scratch engine, NCHW throughout, PyTorch's weight layouts.

Every layer has ``forward(x, training)`` and ``backward(grad) -> grad_x`` side by side.
Parameters and their gradients live in parallel dicts (``params``/``grads``); running
statistics live in ``buffers``. Each layer caches only what its backward needs, and only
while gradients are enabled (see :mod:`.grad`). Gradients accumulate with ``+=``.
The array module comes from the input (NumPy or CuPy), so no layer has a copy per backend.
Where the fused kernels are in use (:mod:`.kernels`), layers with a fused path hand NumPy
arrays to them; the NumPy code beside it stays the reference.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import numpy as np

from .backend import get_array_module, over_batch, to_device
from .grad import enable_grad, grad_enabled, no_grad  # noqa: F401  (nn.layers.no_grad etc. still work)
from .im2col import _swap01, col2im, im2col
from .kernels import FUSED, fused_for, fused_kernels, small_product

_BUDGET: contextvars.ContextVar = contextvars.ContextVar("param_budget", default=None)


@contextlib.contextmanager
def param_budget(elements: int):
    """Layers built inside may hold at most ``elements`` parameter and buffer values in all: a
    layer that would pass it raises ValueError before allocating. Rebuilding the architecture
    a checkpoint names this way costs no more memory than the arrays the file declares."""
    token = _BUDGET.set([int(elements)])
    try:
        yield
    finally:
        _BUDGET.reset(token)


def budgeted() -> bool:
    """Whether layers are being built under a :func:`param_budget`."""
    return _BUDGET.get() is not None


def reserve_params(*shapes) -> None:
    """Count arrays of ``shapes`` against the current :func:`param_budget` (none: no limit)."""
    left = _BUDGET.get()
    if left is None:
        return
    n = sum(math.prod(int(d) for d in s) for s in shapes)
    if n > left[0]:
        raise ValueError(f"the architecture needs more than the {left[0]} more values its checkpoint holds")
    left[0] -= n


class Layer:
    """Base class: parameters, gradients and buffers in dicts keyed by short names."""

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}

    def forward(self, x, training: bool = False):
        raise NotImplementedError

    def backward(self, grad, need_input_grad: bool = True):
        raise NotImplementedError

    def __call__(self, x, training: bool = False):
        return self.forward(x, training)

    def zero_grad(self):
        for k, p in self.params.items():
            self.grads[k] = get_array_module(p).zeros_like(p)

    def _accumulate(self, name, g):
        assert g.shape == self.params[name].shape, (name, g.shape, self.params[name].shape)
        if name in self.grads:
            self.grads[name] += g
        else:
            self.grads[name] = g

    def to(self, device: str):
        for d in (self.params, self.grads, self.buffers):
            for k in d:
                d[k] = to_device(d[k], device)
        return self

    def astype(self, dtype):
        for d in (self.params, self.grads, self.buffers):
            for k in d:
                if d[k].dtype.kind == "f":
                    d[k] = d[k].astype(dtype)
        return self

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


# --- convolution -------------------------------------------------------------------------


class Conv2D(Layer):
    """2-D convolution by im2col + one GEMM for the batch. Weight (C_out, C_in, kh, kw).

    On the fused kernels (:mod:`.kernels`), im2col runs a few images at a time, and 3x3
    stride-1 layers with 8 or more input channels use Winograd's F(2x2, 3x3) instead
    (2.25x fewer multiplications, the same result up to float rounding).

    Backward needs the columns again; by default they are rebuilt from the cached input
    (about 5 % more time, and a 3x3 layer holds 9x less memory for backward).
    """

    cache_columns = False  # True: keep the columns from forward (faster, far more memory)
    winograd = True  # the fused path's 3x3 stride-1 layers by Winograd's F(2x2, 3x3); False: im2col
    winograd_from = 8  # input channels from which it pays (measured: 3 -> 16 at 128 px slower, 8 -> 16 at 64 px faster)

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0,
                 bias=True, rng=None, dtype=np.float32):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kh, self.kw, self.stride, self.padding = kh, kw, stride, padding
        rng = rng if rng is not None else np.random.default_rng()
        fan_in = in_channels * kh * kw
        std = math.sqrt(2.0 / fan_in)  # He init, for ReLU networks (as the original)
        reserve_params((out_channels, in_channels, kh, kw), *([(out_channels,)] if bias else []))
        self.params["weight"] = (rng.standard_normal((out_channels, in_channels, kh, kw)) * std).astype(dtype)
        if bias:
            self.params["bias"] = np.zeros(out_channels, dtype=dtype)
        self._cache = None

    def forward(self, x, training=False):
        fk = fused_for(x)
        if fk is not None:
            return self._forward_fused(fk, x)
        N = x.shape[0]
        cols, Ho, Wo = im2col(x, self.kh, self.kw, self.stride, self.padding)
        w = self.params["weight"].reshape(self.out_channels, -1)  # (C_out, C_in*kh*kw)
        out = w @ cols  # (C_out, N*Ho*Wo)
        if "bias" in self.params:
            out += self.params["bias"][:, None]
        if grad_enabled():  # the columns are kh*kw times the input: keep them only if asked
            self._cache = (cols if self.cache_columns else x, x.shape, Ho, Wo)
        return _swap01(out.reshape(self.out_channels, N, Ho, Wo))  # (N, C_out, Ho, Wo)

    def backward(self, grad, need_input_grad=True):
        if self._cache is not None and self._cache[0] is FUSED:
            return self._backward_fused(grad, need_input_grad)
        cols, x_shape, Ho, Wo = self._cache
        self._cache = None
        if not self.cache_columns:
            cols = im2col(cols, self.kh, self.kw, self.stride, self.padding)[0]  # from the input
        g = _swap01(grad).reshape(self.out_channels, -1)  # (C_out, N*Ho*Wo)
        if "bias" in self.params:
            self._accumulate("bias", g.sum(axis=1))
        dw = (cols @ g.T).T  # (C_out, C_in*kh*kw); this operand order is the faster GEMM
        self._accumulate("weight", dw.reshape(self.params["weight"].shape))  # (C_out, C_in, kh, kw)
        if not need_input_grad:
            return None
        w = self.params["weight"].reshape(self.out_channels, -1)  # (C_out, C_in*kh*kw)
        dcols = w.T @ g  # (C_in*kh*kw, N*Ho*Wo)
        return col2im(dcols, x_shape, self.kh, self.kw, self.stride, self.padding, Ho, Wo)

    def uses_winograd(self) -> bool:
        """Whether the fused path computes this layer by Winograd's F(2x2, 3x3) (:mod:`.fused.winograd`):
        a 3x3 kernel at stride 1 with at least :attr:`winograd_from` input channels, unless
        :attr:`winograd` is off. Set by the layer's shape alone, so every machine computes alike."""
        return self.winograd and self.in_channels >= self.winograd_from and self.kh == self.kw == 3 and self.stride == 1

    def _forward_fused(self, fk, x):
        """forward with the fused kernels: a chunk of images at a time, its columns (or Winograd
        tiles) kept in cache (:mod:`.fused.im2col`, :mod:`.fused.winograd`)."""
        keep, winograd = grad_enabled() and self.cache_columns, self.uses_winograd()
        if winograd:
            y, kept = fk.winograd.conv_forward(x, self.params["weight"], self.params.get("bias"),
                                               self.padding, keep_tiles=keep)
        else:
            y, kept = fk.im2col.conv_forward(x, self.params["weight"], self.params.get("bias"),
                                             self.stride, self.padding, keep_columns=keep)
        if grad_enabled():
            self._cache = (FUSED, kept, None if keep else x, x.shape, winograd)  # backward takes the same path
        return y

    def _backward_fused(self, grad, need_input_grad):
        _, kept, x, x_shape, winograd = self._cache
        self._cache = None
        fk, bias = fused_kernels(), "bias" in self.params
        if winograd:
            dw, dbias, dx = fk.winograd.conv_backward(
                grad, self.params["weight"], self.padding, x_shape, x=x, kept=kept, with_bias=bias,
                need_input_grad=need_input_grad)
        else:
            dw, dbias, dx = fk.im2col.conv_backward(
                grad, self.params["weight"], self.stride, self.padding, x_shape, x=x, columns=kept,
                with_bias=bias, need_input_grad=need_input_grad)
        if dbias is not None:
            self._accumulate("bias", dbias)
        self._accumulate("weight", dw)
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel=({self.kh}, {self.kw}), "
                f"stride={self.stride}, padding={self.padding}, bias={'bias' in self.params}")


# --- normalisation -----------------------------------------------------------------------


class _BatchNorm(Layer):
    """Shared by BatchNorm1D (N, C) and BatchNorm2D (N, C, H, W); statistics per channel.

    Running statistics follow PyTorch: running = (1 - momentum) * running + momentum * batch,
    with the unbiased batch variance; normalisation uses the biased one.
    """

    axes: tuple = (0,)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        reserve_params(*[(num_features,)] * 4, ())
        self.params["weight"] = np.ones(num_features, dtype=dtype)
        self.params["bias"] = np.zeros(num_features, dtype=dtype)
        self.buffers["running_mean"] = np.zeros(num_features, dtype=dtype)
        self.buffers["running_var"] = np.ones(num_features, dtype=dtype)
        self.buffers["num_batches_tracked"] = np.zeros((), dtype=np.int64)
        self._cache = None

    def _shape(self, v):
        return v.reshape((1, -1) + (1,) * (len(self.axes) - 1))  # (1, C[, 1, 1])

    def forward(self, x, training=False):
        fk = fused_for(x)
        if fk is not None:
            return self._forward_fused(fk, x, training, relu=False)
        xp = get_array_module(x)
        N, sh = x.shape[0], self._shape
        m = x.size // self.num_features
        xhat = xp.empty_like(x)
        if training:
            mean = sum(over_batch(lambda s: x[s].sum(axis=self.axes), N, xp)) / m

            def centre(s):  # xhat holds x - mean until it is scaled below
                xp.subtract(x[s], sh(mean), out=xhat[s])
                return self._sumsq(xhat[s])

            var = sum(over_batch(centre, N, xp)) / m
            self._update_running(mean, var, m, x.dtype)
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
            over_batch(lambda s: xp.subtract(x[s], sh(mean), out=xhat[s]), N, xp)
        inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype)
        out = xp.empty_like(x)

        def scale(s):  # xhat = (x - mean) * inv_std; out = xhat * gamma + beta
            xhat[s] *= sh(inv_std)
            xp.multiply(xhat[s], sh(self.params["weight"]), out=out[s])
            out[s] += sh(self.params["bias"])

        over_batch(scale, N, xp)
        self._cache = (xhat, inv_std, training) if grad_enabled() else None
        return out

    def _update_running(self, mean, var, m, dtype):
        """running = (1 - momentum) * running + momentum * batch (var made unbiased), in ``dtype``."""
        b, mo = self.buffers, self.momentum
        b["running_mean"] = ((1 - mo) * b["running_mean"] + mo * mean).astype(dtype)
        b["running_var"] = ((1 - mo) * b["running_var"] + mo * var * (m / max(m - 1, 1))).astype(dtype)
        b["num_batches_tracked"] = b["num_batches_tracked"] + 1

    def forward_relu(self, x, training=False):
        """max(forward(x), 0) in one pass, its backward applying the ReLU's mask; NumPy arrays with
        the fused kernels in use only (:class:`.containers.Sequential` runs a BatchNorm and the
        ReLU after it so)."""
        return self._forward_fused(fused_for(x), x, training, relu=True)

    def _forward_fused(self, fk, x, training, relu):
        b = self.buffers
        y, saved = fk.norm.batch_norm_forward(x, self.params["weight"], self.params["bias"], b["running_mean"],
                                              b["running_var"], self.eps, training, relu)
        if training:
            _, mean, var, _ = saved
            self._update_running(mean, var, x.size // self.num_features, x.dtype)
        self._cache = (FUSED, saved, training, relu) if grad_enabled() else None  # saved holds x, not xhat
        return y

    def _backward_fused(self, grad, need_input_grad):
        _, saved, training, relu = self._cache
        self._cache = None
        dx, dgamma, dbeta = fused_kernels().norm.batch_norm_backward(
            saved, grad, self.params["weight"], self.params["bias"], training, relu, need_input_grad)
        self._accumulate("bias", dbeta)
        self._accumulate("weight", dgamma)
        return dx

    def _sumsq(self, a, b=None):
        """Per-channel sum of a*b (a*a by default) without a temporary array."""
        xp = get_array_module(a)
        spec = "nc,nc->c" if a.ndim == 2 else "nchw,nchw->c"
        return xp.einsum(spec, a, a if b is None else b)

    def backward(self, grad, need_input_grad=True):
        if self._cache is not None and self._cache[0] is FUSED:
            return self._backward_fused(grad, need_input_grad)
        xhat, inv_std, training = self._cache
        self._cache = None
        xp, N, sh = get_array_module(grad), grad.shape[0], self._shape
        sums = over_batch(lambda s: (grad[s].sum(axis=self.axes), self._sumsq(grad[s], xhat[s])), N, xp)
        dbeta, dgamma = sum(d for d, _ in sums), sum(d for _, d in sums)
        self._accumulate("bias", dbeta)
        self._accumulate("weight", dgamma)
        if not need_input_grad:
            return None
        scale = sh(self.params["weight"] * inv_std)
        if not training:  # running statistics are constants
            return grad * scale
        m = grad.size // self.num_features
        dx = xp.empty_like(grad)

        def run(s):  # dx = gamma * inv_std / m * (m * g - sum(g) - xhat * sum(g * xhat))
            xp.multiply(xhat[s], sh(-dgamma / m), out=dx[s])
            dx[s] += grad[s]
            dx[s] -= sh(dbeta / m)
            dx[s] *= scale

        over_batch(run, N, xp)
        return dx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm2D(_BatchNorm):
    axes = (0, 2, 3)


class BatchNorm1D(_BatchNorm):
    axes = (0,)


# --- activations -------------------------------------------------------------------------


class ReLU(Layer):
    """max(x, 0). ``inplace=True`` overwrites its input (safe after a layer that keeps no
    reference to its output, such as BatchNorm or Conv2D), saving one activation copy."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x, training=False):
        fk = fused_for(x)
        if fk is not None:
            out = fk.activations.relu(x, self.inplace)
        else:
            xp = get_array_module(x)
            out = x if self.inplace else xp.empty_like(x)
            over_batch(lambda s: xp.maximum(x[s], 0, out=out[s]), x.shape[0], xp)
        self._out = out if grad_enabled() else None
        return out

    def backward(self, grad, need_input_grad=True):
        out, self._out = self._out, None
        fk = fused_for(grad)
        if fk is not None:
            return fk.activations.relu_backward(out, grad)
        xp = get_array_module(grad)
        dx = xp.empty_like(grad)
        over_batch(lambda s: xp.multiply(grad[s], out[s] > 0, out=dx[s]), grad.shape[0], xp)
        return dx


_PLAIN_BN_RELU = (_BatchNorm.forward, _BatchNorm.backward, ReLU.forward, ReLU.backward)


def fuses_with_relu(layer, after) -> bool:
    """Whether ``layer`` then ``after`` may run as one fused batch norm + ReLU: a BatchNorm and a
    ReLU with the engine's own forward and backward (a subclass or a patch that changes either
    runs as written, unfused)."""
    if not (isinstance(layer, _BatchNorm) and isinstance(after, ReLU)):
        return False
    if any(k in vars(obj) for obj in (layer, after) for k in ("forward", "backward")):
        return False
    return (type(layer).forward, type(layer).backward, type(after).forward, type(after).backward) == _PLAIN_BN_RELU


class LeakyReLU(Layer):
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x, training=False):
        xp = get_array_module(x)
        self._x = x if grad_enabled() else None
        return xp.where(x > 0, x, x * self.negative_slope)

    def backward(self, grad, need_input_grad=True):
        xp = get_array_module(grad)
        x, self._x = self._x, None
        return xp.where(x > 0, grad, grad * self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


# --- pooling -----------------------------------------------------------------------------


class Flatten(Layer):
    def forward(self, x, training=False):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)  # (N, C*H*W)

    def backward(self, grad, need_input_grad=True):
        return grad.reshape(self._shape)  # (N, C, H, W)


# --- dense and dropout -------------------------------------------------------------------


class Dense(Layer):
    """y = x @ W.T + b, with W of shape (out_features, in_features) as in PyTorch."""

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        rng = rng if rng is not None else np.random.default_rng()
        std = math.sqrt(2.0 / in_features)  # He init
        reserve_params((out_features, in_features), *([(out_features,)] if bias else []))
        self.params["weight"] = (rng.standard_normal((out_features, in_features)) * std).astype(dtype)
        if bias:
            self.params["bias"] = np.zeros(out_features, dtype=dtype)

    def forward(self, x, training=False):
        self._x = x if grad_enabled() else None
        with small_product(x, x.shape[0] * self.in_features * self.out_features):
            out = x @ self.params["weight"].T  # (N, out)
        if "bias" in self.params:
            out += self.params["bias"]
        return out

    def backward(self, grad, need_input_grad=True):
        x, self._x = self._x, None
        with small_product(grad, grad.shape[0] * self.in_features * self.out_features):
            self._accumulate("weight", grad.T @ x)  # (out, in)
            if "bias" in self.params:
                self._accumulate("bias", grad.sum(axis=0))
            return grad @ self.params["weight"] if need_input_grad else None

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={'bias' in self.params}"


class Dropout(Layer):
    """Inverted dropout: zeroes a fraction p in training, scales the rest by 1/(1-p)."""

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        self.p = p
        self._seed = seed
        self._rng, self._rng_xp = None, None

    def reseed(self, seed):
        """Restart the mask stream from ``seed`` (an int or a list of ints); the trainer
        reseeds every step from (run seed, step), so a resumed run draws the same masks."""
        self._seed, self._rng, self._rng_xp = seed, None, None

    def forward(self, x, training=False):
        if not training or self.p == 0:
            self._mask = None
            return x
        xp = get_array_module(x)
        if self._rng_xp is not xp:
            seed = self._seed
            if isinstance(seed, (list, tuple)):  # CuPy's generators take one integer
                seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
            self._rng, self._rng_xp = xp.random.default_rng(seed), xp
        mask = (self._rng.random(x.shape, dtype=x.dtype) >= self.p).astype(x.dtype) / (1 - self.p)
        self._mask = mask
        return x * mask

    def backward(self, grad, need_input_grad=True):
        return grad if self._mask is None else grad * self._mask

    def extra_repr(self):
        return f"p={self.p}"
