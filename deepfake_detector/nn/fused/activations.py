"""ReLU forward and backward, each one parallel pass (reference: :class:`..layers.ReLU`)."""

from __future__ import annotations

import numpy as np

from ._compile import kernel, prange


@kernel
def _relu(x, out):
    """out = max(x, 0) over flat arrays (NaN stays NaN, as np.maximum has it)."""
    zero = out.dtype.type(0)
    for i in prange(x.size):
        v = x[i]
        out[i] = zero if v <= zero else v


@kernel
def _relu_backward(out, grad, dx):
    """dx = grad where out > 0, else 0 (torch's threshold_backward)."""
    zero = dx.dtype.type(0)
    for i in prange(grad.size):
        dx[i] = grad[i] if out[i] > 0 else zero


def relu(x, inplace=False):
    """max(x, 0); ``inplace`` writes it over ``x`` (when ``x`` is contiguous)."""
    if inplace and x.flags.c_contiguous and x.flags.writeable:
        out = x
    else:
        x = np.ascontiguousarray(x)
        out = np.empty_like(x)
    _relu(x.reshape(-1), out.reshape(-1))
    return out


def relu_backward(out, grad):
    """The gradient through a ReLU whose output was ``out``."""
    out, grad = np.ascontiguousarray(out), np.ascontiguousarray(grad)
    dx = np.empty_like(grad)
    _relu_backward(out.reshape(-1), grad.reshape(-1), dx.reshape(-1))
    return dx
