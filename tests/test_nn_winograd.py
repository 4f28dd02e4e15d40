"""Winograd's F(2x2, 3x3) convolution (nn.fused.winograd) against the reference Conv2D
(im2col, one GEMM), against sums computed by hand, and its transforms against their adjoints.

The Conv2D cases of test_nn_layers.py with 8 or more input channels run it against PyTorch too;
test_nn_fused.py checks that its gradients do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
import pytest

from deepfake_detector import nn

pytest.importorskip("numba", reason="the fused kernels need Numba")

from deepfake_detector.nn import fused  # noqa: E402

W = fused.winograd
TOL = {np.float64: dict(rtol=1e-9, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}
DTYPES = [np.float64, np.float32]


def test_a_hand_computed_case():
    """One 4x4 channel, a 3x3 filter of ones, no padding: each output is the sum of its 3x3 window."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 3, 3))
    y, _ = W.conv_forward(x, w, np.array([0.5]), 0)
    want = [[0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10, 1 + 2 + 3 + 5 + 6 + 7 + 9 + 10 + 11],
            [4 + 5 + 6 + 8 + 9 + 10 + 12 + 13 + 14, 5 + 6 + 7 + 9 + 10 + 11 + 13 + 14 + 15]]
    np.testing.assert_allclose(y[0, 0], np.array(want) + 0.5, rtol=1e-15)
    # the weight gradient of sum(y) is, for each filter tap, the sum of the cells it met
    dw, db, dx = W.conv_backward(np.ones((1, 1, 2, 2)), w, 0, x.shape, x=x)
    np.testing.assert_allclose(dw[0, 0], [[0 + 1 + 4 + 5, 1 + 2 + 5 + 6, 2 + 3 + 6 + 7],
                                          [4 + 5 + 8 + 9, 5 + 6 + 9 + 10, 6 + 7 + 10 + 11],
                                          [8 + 9 + 12 + 13, 9 + 10 + 13 + 14, 10 + 11 + 14 + 15]], rtol=1e-15)
    assert db.tolist() == [4.0]
    # and each cell's gradient counts the windows that hold it
    np.testing.assert_allclose(dx[0, 0], [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]], rtol=1e-15)


CASES = [  # (N, C_in, H, W), C_out, padding
    ((2, 3, 8, 8), 4, 1), ((3, 5, 7, 9), 6, 1), ((2, 4, 5, 6), 3, 0), ((1, 2, 4, 4), 3, 2),
    ((2, 3, 3, 3), 2, 1), ((1, 2, 1, 1), 2, 1), ((2, 16, 10, 11), 7, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_bytes", [1, 3000, 1 << 30])  # one image a chunk, a few, the whole batch
@pytest.mark.parametrize("shape,cout,p", CASES)
def test_equals_the_reference_conv(monkeypatch, shape, cout, p, chunk_bytes, dtype):
    """Output, weight, bias and input gradients of the reference Conv2D (im2col), however the
    batch is chunked, with the tiles rebuilt or kept, with and without the input gradient."""
    monkeypatch.setattr(fused.im2col, "CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(3)
    layer = nn.Conv2D(shape[1], cout, 3, padding=p, rng=rng, dtype=dtype)
    layer.params["bias"][:] = rng.standard_normal(cout)
    x = rng.standard_normal(shape).astype(dtype)
    with nn.use_kernels("numpy"):
        want = layer.forward(x, training=True)
        g = rng.standard_normal(want.shape).astype(dtype)
        want_dx = layer.backward(g)
    for keep in (False, True):
        y, kept = W.conv_forward(x, layer.params["weight"], layer.params["bias"], p, keep_tiles=keep)
        assert (kept is not None) == keep and y.dtype == dtype
        np.testing.assert_allclose(y, want, **TOL[dtype])
        for need_dx in (True, False):
            dw, db, dx = W.conv_backward(g, layer.params["weight"], p, x.shape, x=None if keep else x, kept=kept,
                                         need_input_grad=need_dx)
            assert dw.dtype == dtype and dw.shape == layer.params["weight"].shape
            np.testing.assert_allclose(dw, layer.grads["weight"], **TOL[dtype])
            np.testing.assert_allclose(db, layer.grads["bias"], **TOL[dtype])
            if need_dx:
                np.testing.assert_allclose(dx, want_dx, **TOL[dtype])
            else:
                assert dx is None


@pytest.mark.parametrize("shape,p", [((2, 3, 7, 9), 1), ((1, 2, 6, 5), 0), ((2, 1, 2, 3), 2)])
def test_the_backward_kernels_are_the_adjoints_of_the_forward_ones(shape, p):
    """<T x, c> == <x, T* c> for the input transform and for the output transform."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    N, C, H, Wd = shape
    Ho, Wo, TH, TW = W.tiles(H, Wd, p)
    V = W.input_tiles(x, p)
    c = rng.standard_normal(V.shape)
    back = np.empty_like(x)
    W._input_tiles_adjoint(c, p, TH, TW, back)
    np.testing.assert_allclose((V * c).sum(), (x * back).sum(), rtol=1e-12)
    M = rng.standard_normal((16, 3, N * TH * TW))
    y = np.empty((N, 3, Ho, Wo))
    W._output_tiles(M, np.zeros(1), False, TH, TW, y)
    gy = rng.standard_normal(y.shape)
    dM = np.empty_like(M)
    W._output_tiles_adjoint(gy, TH, TW, dM)
    np.testing.assert_allclose((y * gy).sum(), (M * dM).sum(), rtol=1e-12)


def test_the_filter_transform_and_its_adjoint():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3))
    U = W.filter_transform(w)
    assert U.shape == (16, 4, 3)
    np.testing.assert_allclose(U[0], w[:, :, 0, 0])  # G's first row picks the top-left tap
    np.testing.assert_allclose(U[15], w[:, :, 2, 2])  # and its last row the bottom-right one
    dU = rng.standard_normal(U.shape)
    np.testing.assert_allclose((U * dU).sum(), (w * W.filter_transform_adjoint(dU)).sum(), rtol=1e-12)


def test_which_layers_use_it():
    """3x3 at stride 1 from 8 input channels, by the layer's shape alone; the switch turns it off."""
    rng = np.random.default_rng(0)
    assert nn.Conv2D(16, 8, 3, padding=1, rng=rng).uses_winograd()
    assert nn.Conv2D(16, 8, 3, padding=0, bias=False, rng=rng).uses_winograd()
    assert nn.Conv2D(8, 8, 3, padding=1, rng=rng).uses_winograd()
    assert not nn.Conv2D(7, 8, 3, padding=1, rng=rng).uses_winograd()
    assert not nn.Conv2D(3, 8, 3, padding=1, rng=rng).uses_winograd()  # an RGB first layer stays im2col
    assert not nn.Conv2D(16, 8, 3, stride=2, padding=1, rng=rng).uses_winograd()
    assert not nn.Conv2D(16, 8, 5, padding=2, rng=rng).uses_winograd()
    layer = nn.Conv2D(16, 8, 3, padding=1, rng=rng)
    layer.winograd = False
    assert not layer.uses_winograd()


def test_a_layer_takes_it_on_the_fused_kernels_only(monkeypatch):
    calls = []
    for name in ("conv_forward", "conv_backward"):
        real = getattr(W, name)
        monkeypatch.setattr(W, name, lambda *a, _real=real, _name=name, **kw: calls.append(_name) or _real(*a, **kw))
    rng = np.random.default_rng(0)
    layer = nn.Conv2D(16, 4, 3, padding=1, rng=rng)
    x = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)
    with nn.use_kernels("fused"):
        y = layer.forward(x, training=True)
        layer.backward(np.ones_like(y))
    assert calls == ["conv_forward", "conv_backward"]
    calls.clear()
    with nn.use_kernels("numpy"):
        ref = layer.forward(x, training=True)
    assert calls == []
    np.testing.assert_allclose(y, ref, **TOL[np.float32])


def test_backward_takes_the_path_its_forward_took():
    """Turning Winograd off between a forward and its backward changes nothing for that step
    (the tiles the forward kept are not read as im2col columns)."""
    rng = np.random.default_rng(2)
    layer = nn.Conv2D(8, 4, 3, padding=1, rng=rng, dtype=np.float64)
    layer.cache_columns = True
    x = rng.standard_normal((2, 8, 6, 6))
    g = rng.standard_normal((2, 4, 6, 6))
    with nn.use_kernels("numpy"):
        layer.forward(x, training=True)
        want_dx = layer.backward(g)
    want_dw = layer.grads.pop("weight").copy()
    layer.grads.pop("bias")
    with nn.use_kernels("fused"):
        layer.forward(x, training=True)
        layer.winograd = False
        dx = layer.backward(g)
    np.testing.assert_allclose(dx, want_dx, **TOL[np.float64])
    np.testing.assert_allclose(layer.grads["weight"], want_dw, **TOL[np.float64])
