"""Conv2D's fused path for 3x3 kernels at stride 1: Winograd's minimal filtering F(2x2, 3x3)
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016), the GEMMs
still BLAS's (reference: :class:`..layers.Conv2D`, im2col and one GEMM).

A 2x2 block of outputs of a 3x3 convolution needs 36 multiplications per input channel done
directly (or by im2col); Winograd's transforms turn it into 16, 2.25x fewer. The input is cut
into 4x4 tiles that overlap by 2 (one tile per 2x2 output block), and with

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

a tile d, a filter w and its 2x2 output y are related by y = A^T [(G w G^T) * (B^T d B)] A
(``*`` elementwise). Summed over input channels, each of the 16 positions xi of the 4x4
transformed tile is one matrix product over the batch's tiles:

    M[xi] (C_out, P) = U[xi] (C_out, C_in) @ V[xi] (C_in, P),  U = G w G^T,  V = B^T d B

(P: tiles). The backward pass is the adjoint of each step, so it is the exact gradient of the
forward: dM = A dy A^T per tile, dU[xi] = dM[xi] V[xi]^T (summed over the batch),
dV[xi] = U[xi]^T dM[xi], dw = G^T dU G, and dx = B dV B^T added into the overlapping tiles.

The transforms' coefficients are 0, +-1 and +-1/2, so the result differs from im2col's only
by rounding (float32: about 1e-6 of the output's scale, as a different GEMM order would). The
batch is walked in chunks as in :mod:`.im2col`: a chunk's V is written, multiplied and read
back while it is in its core's cache. The kernels are serial (the parallelism is over
chunks) and index flat views with unsigned offsets (see ``_compile.u``).
"""

from __future__ import annotations

import numpy as np

from ._compile import over_chunks, serial_kernel
from ._compile import u as _u
from .im2col import chunks  # the same chunk size as im2col's (its CHUNK_BYTES)


G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def tiles(H, W, p):
    """(Ho, Wo, TH, TW): the output size of a 3x3 stride-1 convolution padded by ``p`` and its tiles per column and row."""
    Ho, Wo = H + 2 * p - 2, W + 2 * p - 2
    return Ho, Wo, (Ho + 1) // 2, (Wo + 1) // 2


def filter_transform(weight):
    """U (16, C_out, C_in) = G w G^T for every filter, position xi = 4*r + k."""
    g = G.astype(weight.dtype)
    C_out, C_in = weight.shape[:2]
    U = np.matmul(np.matmul(g, weight), g.T)  # (C_out, C_in, 4, 4)
    return np.ascontiguousarray(U.transpose(2, 3, 0, 1)).reshape(16, C_out, C_in)


def filter_transform_adjoint(dU):
    """dw (C_out, C_in, 3, 3) = G^T dU G, for dU (16, C_out, C_in)."""
    g = G.astype(dU.dtype)
    d = dU.reshape(4, 4, *dU.shape[1:]).transpose(2, 3, 0, 1)  # (C_out, C_in, 4, 4)
    return np.matmul(np.matmul(g.T, d), g)


@serial_kernel
def _input_tiles(x, p, TH, TW, V):
    """V[4r + k, c, (n*TH + ty)*TW + tx] = (B^T d B)[r, k], d the 4x4 input tile at rows
    2ty - p ... and columns 2tx - p ... of x[n, c] (0 outside the image)."""
    N, C, H, W = x.shape
    Hp, Wp = 2 * TH + 2, 2 * TW + 2
    P, T = N * TH * TW, TH * TW
    src, dst = x.reshape(x.size), V.reshape(V.size)
    buf = np.zeros(Hp * Wp, x.dtype)  # the plane, padded: its border stays 0
    s = np.empty((4, Wp), x.dtype)  # B^T d for one row of tiles, every column
    h, w = min(H, Hp - p), min(W, Wp - p)
    for t in range(N * C):
        n, c = t // C, t % C
        for iy in range(h):
            a, b = _u((t * H + iy) * W), _u((iy + p) * Wp + p)
            for q in range(_u(w)):
                buf[b + q] = src[a + q]
        for ty in range(TH):
            r0 = _u(2 * ty * Wp)
            for q in range(_u(Wp)):
                d0, d1 = buf[r0 + q], buf[r0 + _u(Wp) + q]
                d2, d3 = buf[r0 + _u(2 * Wp) + q], buf[r0 + _u(3 * Wp) + q]
                s[0, q], s[1, q], s[2, q], s[3, q] = d0 - d2, d1 + d2, d2 - d1, d1 - d3
            base = _u(c * P + n * T + ty * TW)
            for r in range(4):
                for tx in range(TW):
                    e0, e1, e2, e3 = s[r, 2 * tx], s[r, 2 * tx + 1], s[r, 2 * tx + 2], s[r, 2 * tx + 3]
                    o = _u(4 * r * C * P) + base + _u(tx)
                    dst[o] = e0 - e2
                    dst[o + _u(C * P)] = e1 + e2
                    dst[o + _u(2 * C * P)] = e2 - e1
                    dst[o + _u(3 * C * P)] = e1 - e3


@serial_kernel
def _input_tiles_adjoint(dV, p, TH, TW, dx):
    """The adjoint of _input_tiles: dx[n, c] = the sum over tiles of B dV B^T placed at
    (2ty - p, 2tx - p), cells outside the image dropped. Per row of tiles, the 4x4 blocks are
    added in two sweeps along the row (their columns 0-1, then 2-3), so that no sweep adds
    into a cell twice and each one vectorises."""
    N, C, H, W = dx.shape
    Hp, Wp = 2 * TH + 2, 2 * TW + 2
    P, T = N * TH * TW, TH * TW
    src, dst = dV.reshape(dV.size), dx.reshape(dx.size)
    buf = np.empty(Hp * Wp, dx.dtype)
    e = np.empty((4, 4, TW), dx.dtype)  # e[r, j] = (dV B^T)[r, j], every tile of the row
    d = np.empty((4, 4, TW), dx.dtype)  # d[i, j] = (B e)[i, j]
    h, w = min(H, Hp - p), min(W, Wp - p)
    zero = dx.dtype.type(0)
    for t in range(N * C):
        n, c = t // C, t % C
        for q in range(_u(Hp * Wp)):
            buf[q] = zero
        for ty in range(TH):
            base = _u(c * P + n * T + ty * TW)
            for r in range(4):
                o = _u(4 * r * C * P) + base
                for tx in range(_u(TW)):
                    v0, v1 = src[o + tx], src[o + _u(C * P) + tx]
                    v2, v3 = src[o + _u(2 * C * P) + tx], src[o + _u(3 * C * P) + tx]
                    e[r, 0, tx], e[r, 1, tx], e[r, 2, tx], e[r, 3, tx] = v0, v1 - v2 + v3, v1 + v2 - v0, -v3
            for j in range(4):
                for tx in range(_u(TW)):
                    e0, e1, e2, e3 = e[0, j, tx], e[1, j, tx], e[2, j, tx], e[3, j, tx]
                    d[0, j, tx], d[1, j, tx], d[2, j, tx], d[3, j, tx] = e0, e1 - e2 + e3, e1 + e2 - e0, -e3
            for i in range(4):
                row = _u((2 * ty + i) * Wp)
                for tx in range(_u(TW)):  # columns 0 and 1 of every block
                    buf[row + _u(2) * tx] += d[i, 0, tx]
                    buf[row + _u(2) * tx + _u(1)] += d[i, 1, tx]
                for tx in range(_u(TW)):  # columns 2 and 3
                    buf[row + _u(2) * tx + _u(2)] += d[i, 2, tx]
                    buf[row + _u(2) * tx + _u(3)] += d[i, 3, tx]
        for iy in range(H):
            a = _u((t * H + iy) * W)
            if iy < h:
                b = _u((iy + p) * Wp + p)
                for q in range(_u(w)):
                    dst[a + q] = buf[b + q]
                for q in range(_u(w), _u(W)):
                    dst[a + q] = zero
            else:
                for q in range(_u(W)):
                    dst[a + q] = zero


@serial_kernel
def _output_tiles(M, bias, with_bias, TH, TW, y):
    """y[n, o, 2ty + a, 2tx + b] = (A^T m A)[a, b] (+ bias[o]), m the 4x4 tile
    M[:, o, (n*TH + ty)*TW + tx]; cells past the output's edge (odd sizes) are not written."""
    N, C_out, Ho, Wo = y.shape
    P, T = N * TH * TW, TH * TW
    src, dst = M.reshape(M.size), y.reshape(y.size)
    u = np.empty((2, 4, TW), y.dtype)  # A^T m for one row of tiles
    zero = y.dtype.type(0)
    for t in range(N * C_out):
        n, o = t // C_out, t % C_out
        add = bias[o] if with_bias else zero
        for ty in range(TH):
            base = _u(o * P + n * T + ty * TW)
            for k in range(4):
                for tx in range(_u(TW)):
                    i = _u(k * C_out * P) + base + tx
                    m0, m1 = src[i], src[i + _u(4 * C_out * P)]
                    m2, m3 = src[i + _u(8 * C_out * P)], src[i + _u(12 * C_out * P)]
                    u[0, k, tx] = m0 + m1 + m2
                    u[1, k, tx] = m1 - m2 - m3
            for a in range(2):
                yy = 2 * ty + a
                if yy >= Ho:
                    break
                row = _u((t * Ho + yy) * Wo)
                for tx in range(TW):
                    v0, v1, v2, v3 = u[a, 0, tx], u[a, 1, tx], u[a, 2, tx], u[a, 3, tx]
                    dst[row + _u(2 * tx)] = (v0 + v1 + v2) + add
                    if 2 * tx + 1 < Wo:
                        dst[row + _u(2 * tx + 1)] = (v1 - v2 - v3) + add


@serial_kernel
def _output_tiles_adjoint(grad, TH, TW, dM):
    """The adjoint of _output_tiles: dM[:, o, p] = A g A^T for the 2x2 block g of
    grad[n, o] at tile p (0 past the edge)."""
    N, C_out, Ho, Wo = grad.shape
    P, T = N * TH * TW, TH * TW
    src, dst = grad.reshape(grad.size), dM.reshape(dM.size)
    zero = grad.dtype.type(0)
    g = np.empty((2, 2, TW), grad.dtype)  # g[a, b, tx]: the row of tiles' blocks, 0 past the edge
    h = np.empty((4, 2, TW), grad.dtype)  # h[r] = (A g)[r]: (g0, g0 + g1, g0 - g1, -g1)
    for t in range(N * C_out):
        n, o = t // C_out, t % C_out
        for ty in range(TH):
            for a in range(2):
                if 2 * ty + a < Ho:
                    row = _u((t * Ho + 2 * ty + a) * Wo)
                    for tx in range(_u(Wo // 2)):
                        g[a, 0, tx] = src[row + _u(2) * tx]
                        g[a, 1, tx] = src[row + _u(2) * tx + _u(1)]
                    if Wo % 2:
                        g[a, 0, TW - 1], g[a, 1, TW - 1] = src[row + _u(Wo - 1)], zero
                else:
                    g[a, :, :] = zero
            for b in range(2):
                for tx in range(_u(TW)):
                    g0, g1 = g[0, b, tx], g[1, b, tx]
                    h[0, b, tx], h[1, b, tx], h[2, b, tx], h[3, b, tx] = g0, g0 + g1, g0 - g1, -g1
            base = _u(o * P + n * T + ty * TW)
            for r in range(4):  # then h A^T along the columns: (h0, h0 + h1, h0 - h1, -h1)
                i = _u(4 * r * C_out * P) + base
                for tx in range(_u(TW)):
                    h0, h1 = h[r, 0, tx], h[r, 1, tx]
                    dst[i + tx] = h0
                    dst[i + _u(C_out * P) + tx] = h0 + h1
                    dst[i + _u(2 * C_out * P) + tx] = h0 - h1
                    dst[i + _u(3 * C_out * P) + tx] = -h1


def input_tiles(x, p):
    """V (16, C, n*TH*TW) of (n, C, H, W) ``x``."""
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    _, _, TH, TW = tiles(H, W, p)
    V = np.empty((16, C, N * TH * TW), x.dtype)
    _input_tiles(x, int(p), TH, TW, V)
    return V


def conv_forward(x, weight, bias, p, keep_tiles=False):
    """A 3x3 stride-1 convolution padded by ``p``, chunk by chunk over the engine's threads:
    a chunk's tiles V, the 16 products U[xi] @ V[xi] (BLAS), then the output transform into
    the NCHW output, plus ``bias`` (None: none).

    Returns (y (N, C_out, Ho, Wo), the chunks' V if ``keep_tiles`` else None).
    """
    x = np.ascontiguousarray(x)
    N, C_in, H, W = x.shape
    C_out = weight.shape[0]
    Ho, Wo, TH, TW = tiles(H, W, p)
    U = filter_transform(weight)
    y = np.empty((N, C_out, Ho, Wo), x.dtype)
    b = bias if bias is not None else np.zeros(1, x.dtype)
    parts = chunks(N, 16 * C_in * TH * TW * x.itemsize)

    def run(c):
        V = input_tiles(x[c], p)
        M = np.matmul(U, V)  # (16, C_out, P)
        _output_tiles(M, b, bias is not None, TH, TW, y[c])
        return V if keep_tiles else None

    kept = over_chunks(run, parts)
    return y, (list(zip(parts, kept)) if keep_tiles else None)


def conv_backward(grad, weight, p, x_shape, x=None, kept=None, with_bias=True, need_input_grad=True):
    """The backward of :func:`conv_forward`, chunk by chunk: V rebuilt from the input ``x`` (or
    the ``kept`` chunks' V), dM = A g A^T per tile, dU[xi] += dM[xi] V[xi]^T, and
    dV = U^T dM taken back to dx through the input transform's adjoint. The chunks' dU and
    dbias are added in batch order.

    Returns (dW like ``weight``, dbias (C_out,) or None, dx or None).
    """
    g = np.ascontiguousarray(grad)
    N, C_out, Ho, Wo = g.shape
    C_in, H, W = x_shape[1:]
    _, _, TH, TW = tiles(H, W, p)
    Ut = np.ascontiguousarray(filter_transform(weight).transpose(0, 2, 1))  # (16, C_in, C_out)
    dx = np.empty(tuple(x_shape), g.dtype) if need_input_grad else None
    if kept is not None:
        parts, tiles_of = [c for c, _ in kept], dict((c.start, V) for c, V in kept)
    else:
        parts, tiles_of = chunks(N, 16 * C_in * TH * TW * g.itemsize), None

    def run(c):
        V = tiles_of[c.start] if tiles_of is not None else input_tiles(x[c], p)
        gc = g[c]
        dM = np.empty((16, C_out, V.shape[2]), g.dtype)
        _output_tiles_adjoint(gc, TH, TW, dM)
        dU = np.matmul(dM, V.transpose(0, 2, 1))  # (16, C_out, C_in); ran as fast as V dM^T or faster
        if need_input_grad:
            dV = np.matmul(Ut, dM, out=V if tiles_of is None else None)  # (16, C_in, P), over V
            _input_tiles_adjoint(dV, p, TH, TW, dx[c])
        return dU, gc.sum(axis=(0, 2, 3)) if with_bias else None

    dUs, dbiases = zip(*over_chunks(run, parts))
    dU = sum(dUs[1:], dUs[0])  # in batch order
    dbias = sum(dbiases[1:], dbiases[0]) if with_bias else None
    dw = filter_transform_adjoint(dU)
    return dw.astype(weight.dtype, copy=False), dbias, dx
