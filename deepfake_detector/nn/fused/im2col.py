"""im2col, col2im and the layout copies around Conv2D's GEMMs, as loops (reference:
:mod:`..im2col` and :class:`..layers.Conv2D`).

The column layout is the reference's: row c*kh*kw + i*kw + j, column n*Ho*Wo + y*Wo + x.
Padding is handled in the loops (cells outside the image read as 0, their gradient dropped);
no padded copy is made. One parallel task per (image, channel) plane, so no two tasks write
the same cell (col2im's overlapping windows add up within one task); the innermost loops run
along the contiguous axis of what they write.
"""

from __future__ import annotations

import numpy as np

from ..im2col import out_size
from ._compile import helper, kernel, prange, total


@helper
def _inside(j, s, p, W, Wo):
    """[lo, hi): the output columns x whose input column x*s + j - p lies in [0, W)."""
    lo = (p - j + s - 1) // s if p > j else 0
    last = W - 1 - j + p  # x*s <= last
    hi = min(Wo, last // s + 1) if last >= 0 else 0
    return min(lo, Wo), max(hi, min(lo, Wo))


@kernel
def _im2col(x, kh, kw, s, p, Ho, Wo, cols):
    """cols[c*kh*kw + i*kw + j, n*Ho*Wo + y*Wo + x] = x[n, c, y*s + i - p, x*s + j - p], 0 outside."""
    N, C, H, W = x.shape
    zero = cols.dtype.type(0)
    for t in prange(N * C):
        n, c = t // C, t % C
        plane = x[n, c]
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                lo, hi = _inside(j, s, p, W, Wo)
                off = j - p
                for y in range(Ho):
                    iy = y * s + i - p
                    dst = row[(n * Ho + y) * Wo : (n * Ho + y + 1) * Wo]  # one output row, written in order
                    if iy < 0 or iy >= H:
                        dst[:] = zero
                        continue
                    dst[:lo] = zero
                    if s == 1:
                        dst[lo:hi] = plane[iy, lo + off : hi + off]
                    elif hi > lo:
                        dst[lo:hi] = plane[iy, lo * s + off : (hi - 1) * s + off + 1 : s]
                    dst[hi:] = zero


@kernel
def _col2im(cols, kh, kw, s, p, Ho, Wo, dx):
    """The adjoint of _im2col: dx[n, c, y*s + i - p, x*s + j - p] += cols[...] over every
    (i, j, y, x), in that order (the reference's), cells outside the image dropped."""
    N, C, H, W = dx.shape
    zero = dx.dtype.type(0)
    for t in prange(N * C):
        n, c = t // C, t % C
        plane = dx[n, c]
        plane[:, :] = zero
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                lo, hi = _inside(j, s, p, W, Wo)
                off, m = j - p, hi - lo
                if m <= 0:
                    continue
                for y in range(Ho):
                    iy = y * s + i - p
                    if iy < 0 or iy >= H:
                        continue
                    b = (n * Ho + y) * Wo
                    src = row[b + lo : b + hi]
                    if s == 1:
                        dst = plane[iy, lo + off : hi + off]
                    else:
                        dst = plane[iy, lo * s + off : (hi - 1) * s + off + 1 : s]
                    for q in range(m):  # views from 0: no index wrap-around in the loop
                        dst[q] += src[q]


@kernel
def _swap01_bias(a, bias, has_bias, out):
    """out[n, c, l] = a[c, n, l] (+ bias[c] when ``has_bias``): the GEMM's (C_out, N, L) output as (N, C_out, L)."""
    C, N, L = a.shape
    for t in prange(N * C):
        n, c = t // C, t % C
        src, dst = a[c, n], out[n, c]
        if has_bias:
            b = bias[c]
            for i in range(L):
                dst[i] = src[i] + b
        else:
            for i in range(L):
                dst[i] = src[i]


@kernel
def _swap01_sum(g, with_sum, out, sums):
    """out[c, n, l] = g[n, c, l]; sums[c] = sum over n, l of g[n, c, l] (float64, accumulated per
    position l over the batch, then over l) when ``with_sum``. One task per channel."""
    N, C, L = g.shape
    for c in prange(C):
        acc = np.zeros(L if with_sum else 0)
        for n in range(N):
            src, dst = g[n, c], out[c, n]
            for i in range(L):
                dst[i] = src[i]
            if with_sum:
                for i in range(L):
                    acc[i] += src[i]
        if with_sum:
            sums[c] = total(acc)


def im2col(x, kh, kw, s, p):
    """(N, C, H, W) -> (columns (C*kh*kw, N*Ho*Wo), Ho, Wo), as :func:`..im2col.im2col`."""
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    Ho, Wo = out_size(H, kh, s, p), out_size(W, kw, s, p)
    cols = np.empty((C * kh * kw, N * Ho * Wo), x.dtype)
    _im2col(x, int(kh), int(kw), int(s), int(p), int(Ho), int(Wo), cols)
    return cols, Ho, Wo


def col2im(cols, x_shape, kh, kw, s, p, Ho, Wo):
    """Adjoint of :func:`im2col`: (C*kh*kw, N*Ho*Wo) -> (N, C, H, W), overlaps summed."""
    cols = np.ascontiguousarray(cols)
    dx = np.empty(tuple(x_shape), cols.dtype)
    _col2im(cols, int(kh), int(kw), int(s), int(p), int(Ho), int(Wo), dx)
    return dx


def conv_output(out, bias, N, Ho, Wo):
    """The GEMM's (C_out, N*Ho*Wo) result as (N, C_out, Ho, Wo), plus ``bias`` (None: none), one pass."""
    C = out.shape[0]
    a = np.ascontiguousarray(out).reshape(C, N, Ho * Wo)
    y = np.empty((N, C, Ho, Wo), a.dtype)
    has_bias = bias is not None
    b = np.ascontiguousarray(bias, dtype=a.dtype) if has_bias else np.empty(0, a.dtype)
    _swap01_bias(a, b, has_bias, y.reshape(N, C, Ho * Wo))
    return y


def conv_grad(grad, with_bias):
    """(N, C_out, Ho, Wo) gradient -> ((C_out, N*Ho*Wo) for the GEMMs, its sum per channel or None), one pass."""
    g = np.ascontiguousarray(grad)
    N, C = g.shape[:2]
    g3 = g.reshape(N, C, -1)
    out = np.empty((C, N, g3.shape[2]), g.dtype)
    sums = np.empty(C if with_bias else 0)
    _swap01_sum(g3, bool(with_bias), out, sums)
    dbias = sums.astype(g.dtype) if with_bias else None
    return out.reshape(C, -1), dbias
