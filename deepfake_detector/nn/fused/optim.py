"""Optimiser updates, one pass per parameter over the parameter, its gradient and its state
(reference: :mod:`..optim`). The formulas and the order of operations are the reference's
(torch.optim's): the scalar coefficients are cast to the parameter's dtype first, as NumPy does
with Python floats, so the updates are the reference's to the last bit.
"""

from __future__ import annotations

import math

import numpy as np

from ._compile import helper, kernel, prange, serial_kernel


@helper
def _sgd_step(p, g, buf, lr, momentum, weight_decay, use_momentum, use_decay, nesterov, first):
    """d = g + weight_decay * p; with momentum: buf = d on the first step, else buf * momentum + d,
    and d = d + momentum * buf (nesterov) or buf; then p = p - lr * d."""
    for i in range(p.size):  # from 0 over whole arrays (views): a vector loop
        d = g[i]
        if use_decay:
            d = d + weight_decay * p[i]
        if use_momentum:
            b = d if first else buf[i] * momentum + d
            buf[i] = b
            d = d + momentum * b if nesterov else b
        p[i] = p[i] - lr * d


@helper
def _adam_step(p, g, m, v, lr_bc1, sqrt_bc2, b1, one_minus_b1, b2, one_minus_b2, eps, weight_decay, decay,
               use_decay, decoupled):
    """AdamW: p = p * decay (decay = 1 - lr * weight_decay); Adam: g = g + weight_decay * p. Then
    m = m * b1 + (1 - b1) * g; v = v * b2 + (1 - b2) * g * g;
    p = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)."""
    for i in range(p.size):
        pi, gi = p[i], g[i]
        if use_decay:
            if decoupled:
                pi = pi * decay
            else:
                gi = gi + weight_decay * pi
        mi = m[i] * b1 + one_minus_b1 * gi
        vi = v[i] * b2 + one_minus_b2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pi - lr_bc1 * mi / (np.sqrt(vi) / sqrt_bc2 + eps)


# A small parameter is updated on the calling thread: a parallel launch costs more than its
# update. A large one in CHUNK-sized pieces over the threads.
PARALLEL_FROM = 1 << 16
CHUNK = 1 << 14


@serial_kernel
def _sgd(p, g, buf, *coefficients):
    _sgd_step(p, g, buf, *coefficients)


@kernel
def _sgd_parallel(p, g, buf, *coefficients):
    for c in prange((p.size + CHUNK - 1) // CHUNK):
        a, b = c * CHUNK, min(p.size, (c + 1) * CHUNK)
        _sgd_step(p[a:b], g[a:b], buf[a:b], *coefficients)  # buf is empty without momentum


@serial_kernel
def _adam(p, g, m, v, *coefficients):
    _adam_step(p, g, m, v, *coefficients)


@kernel
def _adam_parallel(p, g, m, v, *coefficients):
    for c in prange((p.size + CHUNK - 1) // CHUNK):
        a, b = c * CHUNK, min(p.size, (c + 1) * CHUNK)
        _adam_step(p[a:b], g[a:b], m[a:b], v[a:b], *coefficients)


def _flat(*arrays):
    """1-D views of contiguous arrays of one dtype, or None when the update must stay the reference's."""
    dt = arrays[0].dtype
    if not all(isinstance(a, np.ndarray) and a.dtype == dt and a.flags.c_contiguous for a in arrays):
        return None
    return [a.reshape(-1) for a in arrays]


def sgd_update(p, g, state, lr, momentum, nesterov, weight_decay) -> bool:
    """One SGD step on ``p`` in place (``state``: the parameter's state dict). False when the
    arrays do not suit the kernel (the caller then runs the reference)."""
    g = np.ascontiguousarray(g) if isinstance(g, np.ndarray) else g
    first = bool(momentum) and "momentum" not in state
    buf = state.get("momentum") if momentum and not first else None
    if buf is None:
        buf = np.empty_like(p) if momentum else np.empty(0, p.dtype)
    flat = _flat(p, g) if buf.size == 0 else _flat(p, g, buf)
    if flat is None:
        return False
    t = p.dtype.type
    run = _sgd_parallel if p.size >= PARALLEL_FROM else _sgd
    run(flat[0], flat[1], buf.reshape(-1), t(lr), t(momentum), t(weight_decay), bool(momentum), bool(weight_decay),
        bool(nesterov), first)
    if first:
        state["momentum"] = buf
    return True


def adam_update(p, g, state, lr, step, betas, eps, weight_decay, decoupled) -> bool:
    """One Adam (``decoupled``: AdamW) step on ``p`` in place, at step number ``step`` (from 1)."""
    g = np.ascontiguousarray(g) if isinstance(g, np.ndarray) else g
    if "m" not in state:
        if _flat(p, g) is None:
            return False
        state["m"], state["v"] = np.zeros_like(p), np.zeros_like(p)
    flat = _flat(p, g, state["m"], state["v"])
    if flat is None:
        return False
    b1, b2 = betas
    bc1, bc2 = 1 - b1**step, 1 - b2**step
    t = p.dtype.type
    run = _adam_parallel if p.size >= PARALLEL_FROM else _adam
    run(*flat, t(lr / bc1), t(math.sqrt(bc2)), t(b1), t(1 - b1), t(b2), t(1 - b2), t(eps), t(weight_decay),
        t(1 - lr * weight_decay), bool(weight_decay), bool(decoupled))
    return True
