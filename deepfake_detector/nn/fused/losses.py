"""Softmax cross-entropy, loss and gradient in one pass over the logits (reference:
:func:`..losses.softmax_cross_entropy`, the same formulas). Computed in float64 whatever the
logits' dtype; the gradient is returned in theirs.
"""

from __future__ import annotations

import numpy as np

from ._compile import serial_kernel


@serial_kernel  # N x K logits: far less work than a parallel launch costs
def _softmax_xent(z, labels, w, eps, denom, dz, row_loss):
    """Per row i, with logp = z - max(z) - log(sum(exp(z - max(z)))), p = exp(logp), y = labels[i]:
    row_loss[i] = -(1 - eps) * w[y] * logp[y] - (eps / K) * sum(w * logp) and
    dz[i] = ((1 - eps) * w[y] + (eps / K) * sum(w)) * p - (1 - eps) * w[y] * onehot(y) - (eps / K) * w,
    both divided by ``denom`` (the sum of w[y] over the batch) afterwards, dz here."""
    N, K = z.shape
    wsum = 0.0
    for k in range(K):
        wsum += w[k]
    for i in range(N):
        zi, y = z[i], labels[i]
        mx = np.float64(zi[0])
        for k in range(1, K):
            if zi[k] > mx:
                mx = np.float64(zi[k])
        se = 0.0
        for k in range(K):
            se += np.exp(zi[k] - mx)
        lse = np.log(se)
        wy = np.float64(w[y])
        smooth = 0.0
        for k in range(K):
            smooth += (zi[k] - mx - lse) * w[k]
        row_loss[i] = -(1 - eps) * (zi[y] - mx - lse) * wy - (eps / K) * smooth
        coef = (1 - eps) * wy + (eps / K) * wsum
        for k in range(K):
            d = coef * np.exp(zi[k] - mx - lse) - (eps / K) * w[k]
            if k == y:
                d -= (1 - eps) * wy
            dz[i, k] = d / denom


def softmax_cross_entropy(logits, labels, label_smoothing=0.0, class_weights=None):
    """(loss, dlogits) as the reference returns them, or None where the kernel does not apply
    (labels outside [0, K): the reference then reports them as it does)."""
    z = np.ascontiguousarray(logits)
    N, K = z.shape
    y = np.ascontiguousarray(np.asarray(labels).astype(np.int64))
    if y.shape != (N,) or (N and (y.min() < 0 or y.max() >= K)):
        return None
    w = np.ones(K) if class_weights is None else np.asarray(class_weights, dtype=z.dtype).astype(np.float64)
    if w.shape != (K,):
        return None
    denom = float(w[y].sum())
    dz = np.empty((N, K), z.dtype)
    row_loss = np.empty(N)
    _softmax_xent(z, y, w, float(label_smoothing), denom, dz, row_loss)
    return float(row_loss.sum() / denom), dz
