"""Softmax cross-entropy: stable, averaged over the batch, gradient divided by it once."""

from __future__ import annotations

from .backend import get_array_module
from .kernels import fused_for


def log_softmax(logits):
    """Row-wise log-softmax of (N, K) logits, stable for any magnitude."""
    xp = get_array_module(logits)
    z = logits - logits.max(axis=1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))


def softmax(logits):
    xp = get_array_module(logits)
    return xp.exp(log_softmax(logits))


def softmax_cross_entropy(logits, labels, label_smoothing: float = 0.0, class_weights=None):
    """Mean cross-entropy of (N, K) logits against integer labels (N,), and its gradient.

    Matches ``torch.nn.functional.cross_entropy(logits, labels, weight=class_weights,
    label_smoothing=label_smoothing)``: with weights, the mean is weighted by the weight of
    each sample's true class. The returned gradient is d(loss)/d(logits): the division by
    the batch size (or the sum of weights) happens here and nowhere else.

    Returns
    -------
    loss : float
    dlogits : array (N, K), same dtype as logits
    """
    fk = fused_for(logits)
    if fk is not None:
        done = fk.losses.softmax_cross_entropy(logits, labels, label_smoothing, class_weights)
        if done is not None:
            return done
    xp = get_array_module(logits)
    N, K = logits.shape
    labels = xp.asarray(labels).astype(xp.int64)
    logp = log_softmax(logits)  # (N, K)
    p = xp.exp(logp)
    onehot = xp.zeros_like(logp)
    onehot[xp.arange(N), labels] = 1
    w = xp.ones(K, dtype=logits.dtype) if class_weights is None else xp.asarray(class_weights, dtype=logits.dtype)
    eps = label_smoothing
    w_y = w[labels]  # (N,)
    denom = w_y.sum()
    nll = -(logp[xp.arange(N), labels] * w_y).sum()
    smooth = -(logp * w).sum()
    loss = ((1 - eps) * nll + (eps / K) * smooth) / denom
    # d/dz_i of -log p_ik is p_i - e_k; weight each term as in the loss
    coef = (1 - eps) * w_y + (eps / K) * w.sum()  # (N,)
    dlogits = (coef[:, None] * p - (1 - eps) * w_y[:, None] * onehot - (eps / K) * w) / denom
    return float(loss), dlogits.astype(logits.dtype, copy=False)
