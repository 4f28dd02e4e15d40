"""im2col / col2im and the array-layout helpers around them (padding, kernel-offset windows,
an axis swap spread over the cores), shared by Conv2D and the pooling layers.
NCHW throughout; the array module comes from the input (NumPy or CuPy).
"""

from __future__ import annotations

from .backend import get_array_module, over_batch


def out_size(n: int, k: int, s: int, p: int) -> int:
    """Output length of a window of ``k`` at stride ``s`` over ``n`` cells padded by ``p`` on each side."""
    return (n + 2 * p - k) // s + 1


def _pad(x, p, value=0.0):
    """(N, C, H, W) -> (N, C, H+2p, W+2p), borders filled with ``value``."""
    if p == 0:
        return x
    xp = get_array_module(x)
    N, C, H, W = x.shape
    out = xp.full((N, C, H + 2 * p, W + 2 * p), value, dtype=x.dtype)

    def copy(s):
        out[s, :, p:-p, p:-p] = x[s]

    over_batch(copy, N, xp)
    return out


def _windows(x, kh, kw, stride, Ho, Wo):
    """Yield (i, j, view) for every kernel offset; view is (N, C, Ho, Wo), strided."""
    for i in range(kh):
        for j in range(kw):
            yield i, j, x[:, :, i : i + stride * Ho : stride, j : j + stride * Wo : stride]


def im2col(x, kh: int, kw: int, stride: int, padding: int):
    """(N, C, H, W) -> columns (C*kh*kw, N*Ho*Wo) and (Ho, Wo).

    Row index of a column is c*kh*kw + i*kw + j, the order of a PyTorch weight
    (C_out, C_in, kh, kw) flattened, so ``W.reshape(C_out, -1) @ cols`` is the whole
    batch's convolution in one GEMM (one large GEMM beats N small ones several times over).
    """
    N, C, H, W = x.shape
    Ho, Wo = out_size(H, kh, stride, padding), out_size(W, kw, stride, padding)
    xp = get_array_module(x)
    xt = _pad(x, padding).transpose(1, 0, 2, 3)  # (C, N, Hp, Wp), a view
    cols = xp.empty((C, kh, kw, N, Ho, Wo), dtype=x.dtype)

    def fill(s):  # images s of the batch
        for i, j, view in _windows(xt[:, s], kh, kw, stride, Ho, Wo):  # view: (C, n, Ho, Wo)
            cols[:, i, j, s] = view

    over_batch(fill, N, xp)
    return cols.reshape(C * kh * kw, N * Ho * Wo), Ho, Wo  # (C*kh*kw, N*Ho*Wo)


def col2im(cols, x_shape, kh: int, kw: int, stride: int, padding: int, Ho: int, Wo: int):
    """Adjoint of :func:`im2col`: (C*kh*kw, N*Ho*Wo) -> (N, C, H, W), overlaps summed."""
    N, C, H, W = x_shape
    xp = get_array_module(cols)
    cols = cols.reshape(C, kh, kw, N, Ho, Wo)  # (C, kh, kw, N, Ho, Wo)
    dx = xp.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=cols.dtype)  # (N, C, Hp, Wp)
    dxt = dx.transpose(1, 0, 2, 3)  # (C, N, Hp, Wp), a view into dx

    def add(s):
        for i, j, view in _windows(dxt[:, s], kh, kw, stride, Ho, Wo):  # view: (C, n, Ho, Wo)
            view += cols[:, i, j, s]

    over_batch(add, N, xp)
    if padding:
        dx = dx[:, :, padding:-padding, padding:-padding]  # (N, C, H, W)
    return dx


def _swap01(a, out=None):
    """(A, B, ...) -> contiguous (B, A, ...), the copy spread over the cores along B."""
    xp = get_array_module(a)
    out = xp.empty((a.shape[1], a.shape[0]) + a.shape[2:], a.dtype) if out is None else out

    def copy(s):
        out[s] = a[:, s].swapaxes(0, 1)  # (A, b, ...) -> (b, A, ...)

    over_batch(copy, a.shape[1], xp)
    return out
