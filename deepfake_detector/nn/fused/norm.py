"""Batch normalisation forward and backward, each optionally fused with the ReLU that follows
(reference: :class:`..layers._BatchNorm` then :class:`..layers.ReLU`).

Arrays are (N, C, L): BatchNorm2D's (N, C, H*W), BatchNorm1D's (N, C, 1). One parallel task
per channel, so each channel's statistics are its own task's sums (no shared accumulator);
its sweeps over the channel (statistics, then output) run back to back, while the channel is
still in the core's cache. Sums are float64, accumulated per position over the batch (a
vector loop without reassociating any sum) and then over the positions; the elementwise
arithmetic is the reference's, in the array's dtype and in the same order.
"""

from __future__ import annotations

import numpy as np

from ._compile import kernel, prange, total


@kernel
def _bn_forward(x, gamma, beta, mean, var, inv_std, eps, training, relu, y):
    """y = (x - mean) * inv_std * gamma + beta per channel, max(y, 0) when ``relu``;
    inv_std = 1 / sqrt(var + eps). In training, mean and var (biased) are the batch's,
    written to ``mean`` and ``var``; otherwise they are read from them."""
    N, C, L = x.shape
    m = N * L
    zero = y.dtype.type(0)
    for c in prange(C):
        if training:
            acc = np.zeros(L)  # per-position float64 sums over the batch: a vector loop, no reassociation
            for n in range(N):
                xr = x[n, c]
                for i in range(L):
                    acc[i] += xr[i]
            mu = total(acc) / m
            acc[:] = 0.0
            for n in range(N):
                xr = x[n, c]
                for i in range(L):
                    d = xr[i] - mu
                    acc[i] += d * d
            v = total(acc) / m
            mean[c] = mu
            var[c] = v
        else:
            v = np.float64(var[c])
        inv_std[c] = 1.0 / np.sqrt(v + eps)
        mu_c, inv, g, b = mean[c], inv_std[c], gamma[c], beta[c]
        for n in range(N):
            xr, yr = x[n, c], y[n, c]
            for i in range(L):
                o = (xr[i] - mu_c) * inv * g + b
                yr[i] = zero if relu and o <= zero else o


@kernel
def _bn_backward(x, grad, gamma, beta, mean, inv_std, training, relu, need_dx, dgamma, dbeta, dx):
    """dbeta = sum(dy), dgamma = sum(dy * xhat) per channel, xhat = (x - mean) * inv_std and dy
    the gradient after the ReLU's mask when ``relu``. Training (batch statistics):
    dx = gamma * inv_std / m * (m * dy - dbeta - xhat * dgamma), evaluated as the reference
    does, ((xhat * (-dgamma / m) + dy) - dbeta / m) * (gamma * inv_std); evaluation
    (running statistics, constants): dx = dy * gamma * inv_std."""
    N, C, L = x.shape
    m = N * L
    t = dx.dtype.type
    zero = t(0)
    for c in prange(C):
        mu, inv, g, b = mean[c], inv_std[c], gamma[c], beta[c]
        acc_g, acc_gh = np.zeros(L), np.zeros(L)  # float64 sums per position, as in _bn_forward
        for n in range(N):
            xr, gr = x[n, c], grad[n, c]
            for i in range(L):
                h = (xr[i] - mu) * inv
                gv = gr[i]
                if relu and not (h * g + b > zero):
                    gv = zero
                acc_g[i] += gv
                acc_gh[i] += np.float64(gv) * h
        dbeta[c] = total(acc_g)
        dgamma[c] = total(acc_gh)
        if not need_dx:
            continue
        scale = g * inv
        ca, cb = t(-(dgamma[c] / m)), t(dbeta[c] / m)
        for n in range(N):
            xr, gr, dr = x[n, c], grad[n, c], dx[n, c]
            for i in range(L):
                h = (xr[i] - mu) * inv
                gv = gr[i]
                if relu and not (h * g + b > zero):
                    gv = zero
                dr[i] = ((h * ca + gv) - cb) * scale if training else gv * scale


def _as_ncl(x):
    return np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)  # (N, C, L)


def batch_norm_forward(x, gamma, beta, running_mean, running_var, eps, training, relu=False):
    """Batch norm of (N, C, ...) ``x`` (max(., 0) of it when ``relu``).

    Returns (y, saved) where saved = (x as (N, C, L), mean, var, inv_std), what
    :func:`batch_norm_backward` takes; mean and var are the batch's (biased var) in training,
    the running ones otherwise.
    """
    x3 = _as_ncl(x)
    dt, C = x3.dtype, x3.shape[1]
    gamma, beta = np.ascontiguousarray(gamma, dtype=dt), np.ascontiguousarray(beta, dtype=dt)
    if training:
        mean, var = np.empty(C, dt), np.empty(C, dt)
    else:
        mean, var = np.array(running_mean, dtype=dt), np.array(running_var, dtype=dt)
    inv_std = np.empty(C, dt)
    y = np.empty_like(x3)
    _bn_forward(x3, gamma, beta, mean, var, inv_std, float(eps), bool(training), bool(relu), y)
    return y.reshape(x.shape), (x3, mean, var, inv_std)


def batch_norm_backward(saved, grad, gamma, beta, training, relu=False, need_dx=True):
    """(dx or None, dgamma, dbeta) for the upstream gradient ``grad``, ``saved`` from the forward."""
    x3, mean, _, inv_std = saved
    dt, C = x3.dtype, x3.shape[1]
    g3 = _as_ncl(grad).astype(dt, copy=False)
    gamma, beta = np.ascontiguousarray(gamma, dtype=dt), np.ascontiguousarray(beta, dtype=dt)
    dgamma, dbeta = np.empty(C, dt), np.empty(C, dt)
    dx = np.empty_like(g3) if need_dx else np.empty((1, 1, 1), dt)
    _bn_backward(x3, g3, gamma, beta, mean, inv_std, bool(training), bool(relu), bool(need_dx), dgamma, dbeta, dx)
    return (dx.reshape(grad.shape) if need_dx else None), dgamma, dbeta
