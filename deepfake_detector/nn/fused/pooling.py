"""Max pooling forward (recording each window's argmax in the same pass) and backward
(scattering the gradient by it); reference: :class:`..pooling.MaxPool2D`.

A window's argmax is its position i*k + j, the first maximum in row-major order (PyTorch's
rule for ties); padding is -inf, as in the reference, so a padded cell can only hold the
maximum of a window with nothing above -inf, and then the gradient is dropped with it.
One parallel task per (image, channel) plane: planes share nothing. The window size and stride
are compile-time constants of the kernels (see :func:`_kernels`); the padding is not.
"""

from __future__ import annotations

import functools

import numpy as np

from ..im2col import out_size
from ._compile import kernel, prange
from ._compile import u as _u


@functools.cache
def _kernels(k, s):
    """(forward, backward) kernels for windows k x k at stride s, both compile-time constants (the
    window loops unroll; Numba compiles, and caches on disk, one pair per (k, s) in use)."""

    @kernel
    def forward(x, p, keep_arg, out, arg):
        """out[n, c, y, x] = max over i, j < k of x[n, c, y*s + i - p, x*s + j - p] (-inf outside);
        arg = the i*k + j of its first maximum (a NaN counts as the maximum), when ``keep_arg``."""
        N, C, H, W = x.shape
        Ho, Wo = out.shape[2], out.shape[3]
        neg_inf = out.dtype.type(-np.inf)
        ox_lo = min((p + s - 1) // s, Wo)  # windows from ox_lo to ox_hi lie inside the image's columns
        ox_hi = max(min(Wo, (W - k + p) // s + 1), ox_lo) if W - k + p >= 0 else ox_lo
        for t in prange(N * C):
            n, c = t // C, t % C
            plane, op, ap = x[n, c], out[n, c], (arg[n, c] if keep_arg else arg[0, 0])
            for oy in range(Ho):
                y0 = oy * s - p
                rows_inside = y0 >= 0 and y0 + k <= H
                orow, arow = op[oy], ap[oy if keep_arg else 0]
                for ox in range(Wo):
                    x0 = ox * s - p
                    if rows_inside and ox_lo <= ox < ox_hi:  # no cell outside: unrolled, unchecked
                        b, at, nan = plane[y0, x0], 0, False
                        for i in range(k):
                            for j in range(k):
                                v = plane[y0 + i, x0 + j]
                                nan |= v != v
                                if v > b:
                                    b, at = v, i * k + j
                        if nan:  # again, the first NaN being the maximum
                            b, at = plane[y0, x0], 0
                            for i in range(k):
                                for j in range(k):
                                    v = plane[y0 + i, x0 + j]
                                    if not (v <= b) and b == b:  # v > b, or v the first NaN
                                        b, at = v, i * k + j
                    else:  # a border window: padding is -inf, at position 0 unless a cell beats it
                        b, at = neg_inf, 0
                        for i in range(k):
                            for j in range(k):
                                iy, ix = y0 + i, x0 + j
                                if 0 <= iy < H and 0 <= ix < W:
                                    v = plane[iy, ix]
                                    if not (v <= b) and b == b:
                                        b, at = v, i * k + j
                    orow[ox] = b
                    if keep_arg:
                        arow[ox] = at

    @kernel
    def backward(grad, arg, p, tiled, dx):
        """dx[n, c, y*s + i - p, x*s + j - p] += grad[n, c, y, x] for the recorded i*k + j of each
        window (cells outside the image dropped). ``tiled`` (stride k, no padding, the windows
        cover the input exactly): every cell is written once, in memory order, no zero-fill."""
        N, C, H, W = dx.shape
        Ho, Wo = grad.shape[2], grad.shape[3]
        zero = dx.dtype.type(0)
        for t in prange(N * C):
            n, c = t // C, t % C
            gp, ap, dp = grad[n, c], arg[n, c], dx[n, c]
            if tiled:
                for oy in range(Ho):
                    for i in range(k):
                        row = dp[oy * k + i]
                        for ox in range(Wo):
                            a, g = ap[oy, ox] - i * k, gp[oy, ox]
                            for j in range(k):
                                row[ox * k + j] = g if a == j else zero
            else:
                dp[:, :] = zero
                for oy in range(Ho):
                    for ox in range(Wo):
                        a = ap[oy, ox]
                        iy, ix = oy * s + a // k - p, ox * s + a % k - p
                        if 0 <= iy < H and 0 <= ix < W:
                            dp[iy, ix] += gp[oy, ox]

    return forward, backward


@kernel
def _max_pool_2x2(x, keep_arg, out, arg):
    """The forward kernel of _kernels(2, 2) without padding, for the common 2x2 pool: flat
    views with unsigned offsets and the window unrolled, so the row loop vectorises (see
    ``_compile.u``); 2-5x faster here. A row of windows holding a NaN is done
    again by the general rule (a NaN counts as the maximum), so every value and argmax is
    _kernels(2, 2)'s."""
    N, C, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    src, dst, ag = x.reshape(x.size), out.reshape(out.size), arg.reshape(arg.size)
    for t in prange(N * C):
        for oy in range(Ho):
            r0 = _u(t * H * W + 2 * oy * W)
            r1, o = r0 + _u(W), _u(t * Ho * Wo + oy * Wo)
            nan = False
            for ox in range(_u(Wo)):
                a, b = src[r0 + _u(2) * ox], src[r0 + _u(2) * ox + _u(1)]
                c, d = src[r1 + _u(2) * ox], src[r1 + _u(2) * ox + _u(1)]
                best, at = a, 0
                if b > best:
                    best, at = b, 1
                if c > best:
                    best, at = c, 2
                if d > best:
                    best, at = d, 3
                nan |= (a != a) | (b != b) | (c != c) | (d != d)
                dst[o + ox] = best
                if keep_arg:
                    ag[o + ox] = at
            if nan:
                for ox in range(Wo):
                    i = r0 + _u(2 * ox)
                    cells = (src[i], src[i + _u(1)], src[i + _u(W)], src[i + _u(W) + _u(1)])
                    best, at = cells[0], 0
                    for q in range(4):
                        if not (cells[q] <= best) and best == best:
                            best, at = cells[q], q
                    dst[o + _u(ox)] = best
                    if keep_arg:
                        ag[o + _u(ox)] = at


def _arg_dtype(k):
    return np.int8 if k * k <= 127 else np.int32


def max_pool(x, k, s, p, keep_arg=True):
    """(out, arg): the max pool of (N, C, H, W) ``x`` and each window's argmax (None unless ``keep_arg``)."""
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    Ho, Wo = out_size(H, k, s, p), out_size(W, k, s, p)
    out = np.empty((N, C, Ho, Wo), x.dtype)
    arg = np.empty((N, C, Ho, Wo) if keep_arg else (1, 1, 1, 1), _arg_dtype(k))
    if k == s == 2 and p == 0:
        _max_pool_2x2(x, bool(keep_arg), out, arg)
    else:
        _kernels(int(k), int(s))[0](x, int(p), bool(keep_arg), out, arg)
    return out, (arg if keep_arg else None)


def max_pool_backward(grad, arg, x_shape, k, s, p):
    """The gradient (x_shape) of the max pool whose argmax was ``arg``."""
    grad = np.ascontiguousarray(grad)
    Ho, Wo = arg.shape[2:]
    tiled = k == s and p == 0 and x_shape[2] == k * Ho and x_shape[3] == k * Wo
    dx = np.empty(x_shape, grad.dtype)
    _kernels(int(k), int(s))[1](grad, arg, int(p), bool(tiled), dx)
    return dx
