"""The fused kernels against the NumPy reference they replace, the switch between the two, the
BatchNorm + ReLU fusion in a Sequential, and the kernels' disk cache.

The layer tests (test_nn_layers.py, test_nn_loss_optim.py, test_nn_network.py) run every
layer against PyTorch with both kernel sets; these compare the kernels with the reference
directly, on the cases that break kernels: ties, overlapping windows, padding, odd shapes,
non-contiguous inputs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepfake_detector import nn
from deepfake_detector.nn import backend, kernels

numba = pytest.importorskip("numba", reason="the fused kernels need Numba")

from deepfake_detector.nn import fused  # noqa: E402

ref_im2col = importlib.import_module("deepfake_detector.nn.im2col")  # the module (nn.im2col is its function)

TOL = {np.float64: dict(rtol=1e-9, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}
DTYPES = [np.float64, np.float32]
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def both(fn):
    """fn() with the reference kernels, then with the fused ones."""
    with nn.use_kernels("numpy"):
        ref = fn()
    with nn.use_kernels("fused"):
        out = fn()
    return ref, out


# --- the switch ------------------------------------------------------------------------------


def test_use_kernels_switches_and_restores():
    before = nn.kernels_in_use()
    with nn.use_kernels("numpy"):
        assert nn.kernels_in_use() == "numpy"
        assert kernels.fused_for(np.zeros(3)) is None
        with nn.use_kernels("fused"):
            assert nn.kernels_in_use() == "fused"
            assert kernels.fused_for(np.zeros(3)) is fused
            assert kernels.fused_for([0.0, 1.0]) is None  # not a NumPy array (a CuPy one takes the reference)
        assert nn.kernels_in_use() == "numpy"
    assert nn.kernels_in_use() == before
    with pytest.raises(ValueError, match="unknown kernel set"):
        nn.use_kernels("cuda")
    assert nn.kernels_in_use() == before


def _python(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("DEEPFAKE_DETECTOR_KERNELS", "NUMBA_CACHE_DIR")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=PROJECT_ROOT)
    assert out.returncode == 0, out.stderr
    return out


def test_the_environment_variable_picks_the_kernels_and_importing_loads_no_numba():
    code = ("import sys, numpy as np; from deepfake_detector import nn; import deepfake_detector.models; "
            "loaded = 'numba' in sys.modules; bn = nn.BatchNorm2D(2); bn.forward(np.ones((2, 2, 3, 3)), True); "
            "print(loaded, nn.kernels_in_use(), bn._cache[0] is nn.kernels.FUSED)")
    assert _python(code).stdout.split() == ["False", "fused", "True"]
    assert _python(code, DEEPFAKE_DETECTOR_KERNELS="numpy").stdout.split() == ["False", "numpy", "False"]
    assert _python(code, DEEPFAKE_DETECTOR_KERNELS="fused").stdout.split() == ["False", "fused", "True"]


def test_numba_threads_follow_the_engine_setting():
    saved = backend._THREADS
    try:
        backend.set_num_threads(1)
        with nn.use_kernels("fused"):
            nn.ReLU().forward(np.ones(8))
            assert numba.get_num_threads() == 1
            backend.set_num_threads(2)
            nn.ReLU().forward(np.ones(8))
            assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    finally:
        backend.set_num_threads(saved)


def _spy(fn, name, calls):
    def spy(*a, **k):
        calls.append(name)
        return fn(*a, **k)
    return spy


def test_every_layer_with_a_fused_path_takes_it(monkeypatch):
    """With the fused kernels in use, each fused entry point runs (and the BatchNorm does the ReLU)."""
    calls = []
    for mod, name in [(fused.norm, "batch_norm_forward"), (fused.norm, "batch_norm_backward"),
                      (fused.activations, "relu"), (fused.activations, "relu_backward"),
                      (fused.pooling, "max_pool"), (fused.pooling, "max_pool_backward"),
                      (fused.im2col, "im2col"), (fused.im2col, "col2im"), (fused.im2col, "conv_forward"),
                      (fused.im2col, "conv_backward"), (fused.losses, "softmax_cross_entropy"),
                      (fused.optim, "adam_update"), (fused.optim, "sgd_update")]:
        monkeypatch.setattr(mod, name, _spy(getattr(mod, name), name, calls))
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Conv2D(2, 4, 3, padding=1, rng=rng), nn.BatchNorm2D(4), nn.ReLU(), nn.MaxPool2D(2),
                        nn.Flatten(), nn.Dense(4 * 3 * 3, 6, rng=rng), nn.ReLU(), nn.Dense(6, 2, rng=rng))
    x, y = rng.standard_normal((3, 2, 6, 6)), np.array([0, 1, 1])
    with nn.use_kernels("fused"):
        net.zero_grad()
        _, dz = nn.softmax_cross_entropy(net.forward(x, training=True), y)
        net.backward(dz)
        nn.Adam(net.named_parameters()).step(net.named_grads())
        nn.SGD(net.named_parameters(), momentum=0.9).step(net.named_grads())
    assert set(calls) == {"batch_norm_forward", "batch_norm_backward", "relu", "relu_backward", "max_pool",
                          "max_pool_backward", "im2col", "col2im", "conv_forward", "conv_backward",
                          "softmax_cross_entropy", "adam_update", "sgd_update"}
    assert calls.count("relu") == 1  # the ReLU after the BatchNorm ran inside it; the one after Dense on its own
    calls.clear()
    with nn.use_kernels("numpy"):
        net.forward(x, training=True)
    assert calls == []


# --- kernels against the reference -------------------------------------------------------------


IM2COL_CASES = [  # (N, C, H, W), kh, kw, stride, padding
    ((2, 3, 8, 8), 3, 3, 1, 1), ((2, 3, 9, 7), 3, 3, 2, 1), ((1, 2, 10, 10), 5, 5, 1, 2),
    ((3, 4, 6, 6), 1, 1, 1, 0), ((2, 3, 11, 11), 4, 4, 3, 0), ((2, 1, 7, 9), 2, 3, 2, 1),
    ((1, 2, 5, 4), 3, 2, 3, 2), ((2, 2, 3, 3), 3, 3, 1, 2),
]


def _per_image(ref_cols, n):
    """The reference's (K, N*L) columns in the fused layout (N, K, L)."""
    return ref_cols.reshape(ref_cols.shape[0], n, -1).transpose(1, 0, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kh,kw,s,p", IM2COL_CASES)
def test_im2col_and_col2im_equal_the_reference(shape, kh, kw, s, p, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    ref, Ho, Wo = ref_im2col.im2col(x, kh, kw, s, p)
    cols = fused.im2col.im2col(x, kh, kw, s, p)
    assert cols.shape == (shape[0], shape[1] * kh * kw, Ho * Wo)
    np.testing.assert_array_equal(cols, _per_image(ref, shape[0]))  # a copy: exact
    c = rng.standard_normal(cols.shape).astype(dtype)
    dx = fused.im2col.col2im(c, shape, kh, kw, s, p)
    ref_dx = ref_im2col.col2im(c.transpose(1, 0, 2).reshape(ref.shape), shape, kh, kw, s, p, Ho, Wo)
    np.testing.assert_array_equal(dx, ref_dx)  # overlaps summed in the same order
    # the adjoint: <im2col(x), c> == <x, col2im(c)>
    np.testing.assert_allclose(float((cols.astype(np.float64) * c).sum()), float((x.astype(np.float64) * dx).sum()),
                               rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_im2col_and_col2im_refuse_an_output_they_cannot_write_flat():
    x = np.zeros((2, 3, 5, 5), np.float32)
    cols = np.zeros((2, 27, 50), np.float32)[:, :, ::2]  # the right shape, every other column
    with pytest.raises(ValueError, match="C-contiguous"):
        fused.im2col.im2col(x, 3, 3, 1, 1, out=cols)
    with pytest.raises(ValueError, match="C-contiguous"):
        fused.im2col.col2im(np.zeros((2, 27, 25), np.float32), x.shape, 3, 3, 1, 1, out=np.zeros((2, 3, 5, 10), np.float32)[..., ::2])


def test_im2col_of_a_non_contiguous_input():
    x = np.random.default_rng(1).standard_normal((5, 6, 3, 4)).transpose(2, 3, 0, 1)  # (3, 4, 5, 6), a view
    want = _per_image(ref_im2col.im2col(x, 3, 3, 1, 1)[0], 3)
    np.testing.assert_array_equal(fused.im2col.im2col(x, 3, 3, 1, 1), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_bytes", [1, 300, 1 << 30])  # one image a chunk, a few, the whole batch
@pytest.mark.parametrize("bias,keep", [(True, False), (False, False), (True, True)])
def test_chunked_conv_equals_the_reference_layer(monkeypatch, chunk_bytes, bias, keep, dtype):
    """conv_forward/conv_backward give the reference Conv2D's output and gradients, however the
    batch is chunked, with and without bias, with the columns rebuilt or kept."""
    monkeypatch.setattr(fused.im2col, "CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(3)
    layer = nn.Conv2D(3, 5, 3, stride=2, padding=1, bias=bias, rng=rng, dtype=dtype)
    if bias:
        layer.params["bias"][:] = rng.standard_normal(5)
    x = rng.standard_normal((5, 3, 9, 8)).astype(dtype)
    with nn.use_kernels("numpy"):
        want = layer.forward(x, training=True)
        g = rng.standard_normal(want.shape).astype(dtype)
        want_dx = layer.backward(g)
    y, cols = fused.im2col.conv_forward(x, layer.params["weight"], layer.params.get("bias"), 2, 1, keep_columns=keep)
    assert (cols is not None) == keep
    np.testing.assert_allclose(y, want, **TOL[dtype])
    for need_dx in (True, False):
        dw, db, dx = fused.im2col.conv_backward(g, layer.params["weight"], 2, 1, x.shape, x=None if keep else x,
                                                columns=cols, with_bias=bias, need_input_grad=need_dx)
        np.testing.assert_allclose(dw, layer.grads["weight"], **TOL[dtype])
        assert dw.dtype == dtype and dw.shape == layer.params["weight"].shape
        if bias:
            np.testing.assert_allclose(db, layer.grads["bias"], **TOL[dtype])
        else:
            assert db is None
        if need_dx:
            np.testing.assert_allclose(dx, want_dx, **TOL[dtype])
        else:
            assert dx is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p,shape", [
    (2, 2, 0, (2, 3, 8, 8)), (2, 2, 0, (2, 3, 9, 7)), (3, 2, 1, (2, 3, 9, 9)), (3, 2, 1, (1, 2, 8, 6)),
    (2, 1, 0, (2, 2, 5, 6)), (3, 1, 1, (2, 2, 6, 5)), (4, 3, 2, (1, 3, 11, 10)), (3, 3, 0, (2, 2, 9, 9)),
])
@pytest.mark.parametrize("fill", ["random", "equal", "few values", "minus inf"])
def test_max_pool_equals_the_reference(k, s, p, shape, fill, dtype):
    """Outputs equal to the last bit; ties (all-equal windows, few distinct values) go to the first
    maximum; overlapping windows add their gradients."""
    rng = np.random.default_rng(3)
    x = {"random": lambda: rng.standard_normal(shape), "equal": lambda: np.full(shape, 0.5),
         "few values": lambda: rng.integers(0, 3, shape).astype(float),
         "minus inf": lambda: np.where(rng.random(shape) < 0.5, -np.inf, rng.standard_normal(shape))}[fill]()
    x = x.astype(dtype)

    def run():
        layer = nn.MaxPool2D(k, s, p)
        y = layer.forward(x, training=True)
        g = np.random.default_rng(4).standard_normal(y.shape).astype(dtype)
        return y, layer.backward(g)

    (y_ref, dx_ref), (y, dx) = both(run)
    np.testing.assert_array_equal(y, y_ref)
    if s >= k:  # each cell's gradient from one window: exact
        np.testing.assert_array_equal(dx, dx_ref)
    else:  # overlapping windows add up in another order
        np.testing.assert_allclose(dx, dx_ref, **TOL[dtype])
        np.testing.assert_array_equal(dx != 0, dx_ref != 0)  # the same cells take gradient


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0)])  # (2, 2, 0): the unrolled 2x2 kernel
def test_max_pool_propagates_nan_as_the_reference(k, s, p):
    x = np.random.default_rng(5).standard_normal((1, 2, 6, 6))
    x[0, 1, 2, 3] = np.nan
    x[0, 0, 5, 0] = np.nan  # the last cell of a 2x2 window
    x[0, 0, 4, 1] = 9.0  # beside it, a larger value first
    # (the gradient of a window holding a NaN is not compared: the reference gives it to no cell,
    # the kernels to the NaN, as PyTorch does; the loss is NaN either way)
    (y_ref,), (y,) = both(lambda: (nn.MaxPool2D(k, s, p).forward(x),))
    np.testing.assert_array_equal(y, y_ref)
    assert np.isnan(y).sum() == np.isnan(y_ref).sum() > 0
    out, arg = fused.pooling.max_pool(x, k, s, p)
    if (k, s, p) == (2, 2, 0):
        assert arg[0, 0, 2, 0] == 2 and arg[0, 1, 1, 1] == 1  # the NaN, after the 9.0 in its window


def test_the_2x2_pool_takes_its_own_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(fused.pooling, "_max_pool_2x2", _spy(fused.pooling._max_pool_2x2, "2x2", calls))
    x = np.random.default_rng(6).standard_normal((2, 3, 7, 8))
    for k, s, p in [(2, 2, 0), (2, 2, 1), (3, 3, 0), (2, 1, 0)]:
        fused.pooling.max_pool(x, k, s, p)
    assert calls == ["2x2"]


def test_max_pool_without_grad_keeps_no_argmax():
    with nn.use_kernels("fused"), nn.no_grad():
        layer = nn.MaxPool2D(2)
        y = layer.forward(np.arange(32.0).reshape(1, 2, 4, 4))
    assert layer._cache is None
    np.testing.assert_array_equal(y[0, 0], [[5, 7], [13, 15]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (3, 5, 1, 1), (7, 4), (2, 16, 9, 13)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_equals_the_reference(shape, training, relu, dtype):
    rng = np.random.default_rng(6)
    C = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    if len(shape) == 4:
        x = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # non-contiguous input

    def run():
        bn = nn.BatchNorm2D(C) if len(shape) == 4 else nn.BatchNorm1D(C)
        bn.params["weight"] = rng_p.uniform(0.5, 1.5, C)
        bn.params["bias"] = rng_p.standard_normal(C)
        bn.buffers["running_mean"] = rng_p.standard_normal(C)
        bn.buffers["running_var"] = rng_p.uniform(0.5, 2, C)
        layers = [bn, nn.ReLU()] if relu else [bn]
        net = nn.Sequential(*layers).astype(dtype)
        net.zero_grad()
        y = net.forward(x, training)
        dx = net.backward(g)
        return y, dx, dict(bn.grads), dict(bn.buffers)

    rng_p = np.random.default_rng(7)
    ref = run()
    rng_p = np.random.default_rng(7)
    with nn.use_kernels("fused"):
        out = run()
    tol = TOL[dtype]
    np.testing.assert_allclose(out[0], ref[0], **tol)
    np.testing.assert_allclose(out[1], ref[1], **tol)
    for k in ("weight", "bias"):
        np.testing.assert_allclose(out[2][k], ref[2][k], **tol, err_msg=k)
        assert out[2][k].dtype == ref[2][k].dtype
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(out[3][k], ref[3][k], **tol, err_msg=k)
        assert out[3][k].dtype == ref[3][k].dtype


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_relu_passes_no_gradient_where_its_output_is_exactly_zero(training):
    """relu'(0) = 0 (torch's and the reference's rule): inputs at the channel mean with beta = 0 give 0."""
    x = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0]]).reshape(2, 1, 1, 3).repeat(2, axis=1)  # mean 0, var > 0
    g = np.random.default_rng(16).standard_normal(x.shape)

    def run():
        bn = nn.BatchNorm2D(2).astype(np.float64)
        bn.buffers["running_var"] = np.full(2, 2.0)
        net = nn.Sequential(bn, nn.ReLU())
        net.zero_grad()
        y = net.forward(x, training)
        return y, net.backward(g), bn.grads["bias"]

    (y_ref, dx_ref, db_ref), (y, dx, db) = both(run)
    assert (y_ref == 0).sum() >= 8 and (y == 0).sum() == (y_ref == 0).sum()
    np.testing.assert_allclose(db, db_ref, **TOL[np.float64])
    np.testing.assert_allclose(dx, dx_ref, **TOL[np.float64])
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle")
    F = torch.nn.functional
    tx = torch.tensor(x, requires_grad=True)
    ty = F.relu(F.batch_norm(tx, torch.zeros(2, dtype=torch.float64), torch.full((2,), 2.0, dtype=torch.float64),
                             None, None, training, 0.1, 1e-5))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(dx, tx.grad.numpy(), **TOL[np.float64])


def test_batchnorm_backward_without_input_gradient():
    x = np.random.default_rng(8).standard_normal((4, 3, 2, 2))

    def run():
        bn = nn.BatchNorm2D(3).astype(np.float64)
        bn.zero_grad()
        bn.forward(x, True)
        return bn.backward(np.ones_like(x), need_input_grad=False), bn.grads["weight"], bn.grads["bias"]

    ref, out = both(run)
    assert ref[0] is None and out[0] is None
    np.testing.assert_allclose(out[1], ref[1], **TOL[np.float64])
    np.testing.assert_allclose(out[2], ref[2], **TOL[np.float64])


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_equals_the_reference(inplace):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, -0.0, np.nan]
    g = rng.standard_normal(x.shape).astype(np.float32)

    def run():
        layer = nn.ReLU(inplace)
        xin = x.copy()
        y = layer.forward(xin, True)
        assert (y is xin) == inplace
        return y, layer.backward(g)

    (y_ref, dx_ref), (y, dx) = both(run)
    np.testing.assert_array_equal(y, y_ref)
    ok = ~np.isnan(x)  # the reference multiplies a NaN's gradient by 0 (NaN); the kernel, as torch, gives 0
    np.testing.assert_array_equal(dx[ok], dx_ref[ok])
    with nn.use_kernels("fused"):  # a transposed view
        xt = x.transpose(3, 2, 1, 0)
        np.testing.assert_array_equal(nn.ReLU().forward(xt), np.maximum(xt, 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,kw", [
    ("sgd", dict(lr=0.1)), ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", dict(lr=0.01)), ("adam", dict(lr=0.01, weight_decay=0.1)), ("adamw", dict(lr=0.01, weight_decay=0.1)),
])
def test_optimizers_equal_the_reference_bit_for_bit(name, kw, dtype):
    """The kernels cast the coefficients to the parameter dtype and keep the reference's order of
    operations, so the parameters and the state are the reference's exactly."""
    def run():
        rng = np.random.default_rng(10)
        params = {"a": rng.standard_normal((3, 4)).astype(dtype), "b": rng.standard_normal(7).astype(dtype)}
        opt = nn.OPTIMIZERS[name](params, **kw)
        for step in range(4):
            grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
            if step == 2:
                grads["a"] = np.asfortranarray(grads["a"])  # a non-contiguous gradient (Conv2D's dw is one)
            opt.step(grads)
        return params, opt.state_arrays()

    (p_ref, s_ref), (p, s) = both(run)
    for k in p_ref:
        np.testing.assert_array_equal(p[k], p_ref[k])
        assert p[k].dtype == dtype
    assert s.keys() == s_ref.keys()
    for k in s_ref:
        np.testing.assert_array_equal(s[k], s_ref[k])


def test_optimizer_state_loaded_from_a_checkpoint_continues_alike():
    rng = np.random.default_rng(11)
    p0 = rng.standard_normal(6).astype(np.float32)
    state = {"w/m": rng.standard_normal(6).astype(np.float32), "w/v": rng.random(6).astype(np.float32)}
    g = rng.standard_normal(6).astype(np.float32)

    def run():
        params = {"w": p0.copy()}
        opt = nn.AdamW(params, lr=0.01)
        opt.load_state_arrays({k: v.copy() for k, v in state.items()}, t=7)
        opt.step({"w": g})
        return params["w"]

    ref, out = both(run)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weights", [None, (0.3, 1.7, 1.0, 0.5)])
def test_softmax_cross_entropy_equals_the_reference(smoothing, weights, dtype):
    rng = np.random.default_rng(12)
    z = (rng.standard_normal((17, 4)) * 5).astype(dtype)
    y = rng.integers(0, 4, 17)
    (l_ref, d_ref), (loss, d) = both(lambda: nn.softmax_cross_entropy(z, y, smoothing, weights))
    tol = TOL[dtype]
    np.testing.assert_allclose(loss, l_ref, **tol)
    np.testing.assert_allclose(d, d_ref, **tol)
    assert d.dtype == dtype


def test_softmax_cross_entropy_bad_labels_fail_as_in_the_reference():
    with nn.use_kernels("fused"), pytest.raises(IndexError):
        nn.softmax_cross_entropy(np.zeros((2, 2)), np.array([0, 2]))


# --- the BatchNorm + ReLU fusion and whole networks ------------------------------------------------


def small_net(seed, dtype):
    rng = np.random.default_rng(seed)
    # no bias right before a BatchNorm: its true gradient is 0, and Adam would turn the rounding noise
    # there into steps of either sign
    return nn.Sequential(
        nn.Conv2D(3, 6, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2D(6), nn.ReLU(inplace=True),
        nn.MaxPool2D(2), nn.Conv2D(6, 8, 3, stride=2, padding=1, bias=False, rng=rng), nn.BatchNorm2D(8), nn.ReLU(),
        nn.Sequential(nn.Conv2D(8, 8, 1, bias=False, rng=rng), nn.BatchNorm2D(8), nn.ReLU(),
                      names=["conv", "bn", "act"]),
        nn.Conv2D(8, 8, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2D(3, 2, 1), nn.Flatten(),
        nn.Dense(32, 8, bias=False, rng=rng), nn.BatchNorm1D(8), nn.ReLU(), nn.Dense(8, 2, rng=rng)).astype(dtype)


# Adam in float32 is left out: its first step is lr * sign(g), and a gradient that is rounding noise
# (a dead channel's bias, here |g| ~ 1e-8 of the largest) takes either sign with either kernel set
@pytest.mark.parametrize("optimizer,dtype", [("adam", np.float64), ("sgd", np.float64), ("sgd", np.float32)])
def test_training_steps_give_the_same_losses_with_both_kernel_sets(optimizer, dtype):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((8, 3, 12, 12)).astype(dtype)
    y = rng.integers(0, 2, 8)

    def train():
        net = small_net(0, dtype)
        extra = {"momentum": 0.9} if optimizer == "sgd" else {}
        opt = nn.OPTIMIZERS[optimizer](net.named_parameters(), lr=0.01, **extra)
        losses = []
        for _ in range(6):
            net.zero_grad()
            loss, dz = nn.softmax_cross_entropy(net.forward(x, training=True), y, label_smoothing=0.1)
            net.backward(dz, need_input_grad=False)
            opt.step(net.named_grads())
            losses.append(loss)
        with nn.no_grad():
            logits = net.forward(x, training=False)
        return np.array(losses), logits, net.named_parameters(), net.named_buffers()

    (l_ref, z_ref, p_ref, b_ref), (losses, z, p, b) = both(train)
    tol = TOL[dtype]
    np.testing.assert_allclose(losses, l_ref, **tol)
    np.testing.assert_allclose(z, z_ref, **tol)
    if optimizer == "sgd":  # Adam divides by the gradient's scale: where that is ~0 it amplifies rounding
        for k in p_ref:
            np.testing.assert_allclose(p[k], p_ref[k], **tol, err_msg=k)
    for k in b_ref:
        np.testing.assert_allclose(b[k], b_ref[k], **tol, err_msg=k)
    assert losses[-1] < losses[0]


def test_layers_called_one_by_one_match_the_fused_sequential():
    """Code that walks the leaf layers itself (saliency maps, convolution maps) runs them unfused;
    the results are the Sequential's, forward and backward."""
    net = small_net(1, np.float64)
    x = np.random.default_rng(14).standard_normal((2, 3, 12, 12))
    leaves = [layer for _, layer in nn.flat_layers(net)]
    with nn.use_kernels("fused"):
        with nn.enable_grad():
            y = net.forward(x, False)
            dx = net.backward(np.ones_like(y))
            out = x
            for layer in leaves:
                out = layer.forward(out, False)
            grad = np.ones_like(out)
            for layer in reversed(leaves):
                grad = layer.backward(grad)
    np.testing.assert_allclose(out, y, **TOL[np.float64])
    np.testing.assert_allclose(grad, dx, **TOL[np.float64])


def test_fusion_keeps_names_buffers_and_the_layer_list():
    net = small_net(2, np.float32)
    names = (list(net.named_parameters()), list(net.named_buffers()), [n for n, _ in nn.flat_layers(net)])
    with nn.use_kernels("fused"):
        net.forward(np.zeros((2, 3, 12, 12), np.float32), training=True)
    assert net._passed_over == (2, 6, 14) and net.layers[7]._passed_over == (2,)
    assert names == (list(net.named_parameters()), list(net.named_buffers()), [n for n, _ in nn.flat_layers(net)])


def test_a_relu_with_its_own_forward_is_not_fused():
    class Halved(nn.ReLU):
        def forward(self, x, training=False):
            return super().forward(x, training) / 2

        def backward(self, grad, need_input_grad=True):
            return super().backward(grad / 2)

    x = np.random.default_rng(15).standard_normal((4, 2, 3, 3))
    (y_ref, dx_ref), (y, dx) = both(lambda: (lambda n: (n.forward(x, True), n.backward(np.ones_like(x))))(
        nn.Sequential(nn.BatchNorm2D(2).astype(np.float64), Halved())))
    np.testing.assert_allclose(y, y_ref, **TOL[np.float64])
    np.testing.assert_allclose(dx, dx_ref, **TOL[np.float64])


# --- compiling once -------------------------------------------------------------------------------


def test_kernels_are_compiled_into_the_user_cache_and_loaded_from_it(tmp_path):
    """The first process compiles a kernel into <cache>/numba; the next loads it from there."""
    code = ("import numpy as np; from deepfake_detector.nn.fused import activations; "
            "print(activations.relu(np.array([-1.0, 2.0], np.float32)))")
    env = dict(DEEPFAKE_DETECTOR_CACHE=str(tmp_path), NUMBA_DEBUG_CACHE="1")
    first = _python(code, **env)
    assert "[0. 2.]" in first.stdout
    folder = tmp_path / "numba"
    assert list(folder.rglob("activations._relu-*.nbi")) and list(folder.rglob("activations._relu-*.nbc"))
    assert "data saved to" in first.stdout
    second = _python(code, **env)
    assert "data loaded from" in second.stdout and str(folder) in second.stdout
    assert "data saved to" not in second.stdout


def test_cache_dir_rules(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPFAKE_DETECTOR_CACHE", str(tmp_path / "own"))
    assert kernels.cache_dir() == tmp_path / "own"
    monkeypatch.delenv("DEEPFAKE_DETECTOR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kernels.cache_dir() == tmp_path / "xdg" / "deepfake-detector"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert kernels.cache_dir() == Path.home() / ".cache" / "deepfake-detector"


def test_warm_up_compiles_everything_and_reports_the_seconds():
    seconds = fused.warm_up()
    assert isinstance(seconds, float) and seconds >= 0


@pytest.mark.parametrize("path", ["im2col", "winograd"])
def test_chunked_conv_gradients_do_not_depend_on_the_thread_count(monkeypatch, path):
    """The chunks' weight gradients are added in batch order, whatever thread ran each chunk
    (both of Conv2D's fused paths)."""
    monkeypatch.setattr(fused.im2col, "CHUNK_BYTES", 1)  # one image a chunk: 6 chunks
    rng = np.random.default_rng(4)
    C = 4 if path == "im2col" else 16
    x = rng.standard_normal((6, C, 10, 10)).astype(np.float32)
    w = rng.standard_normal((8, C, 3, 3)).astype(np.float32)
    g = rng.standard_normal((6, 8, 10, 10)).astype(np.float32)
    before = backend.num_threads()
    got = []
    try:
        for n in (2, 1, 2):
            backend.set_num_threads(n)
            if path == "im2col":
                got.append(fused.im2col.conv_backward(g, w, 1, 1, x.shape, x=x))
            else:
                got.append(fused.winograd.conv_backward(g, w, 1, x.shape, x=x))
    finally:
        backend.set_num_threads(before)
    for dw, db, dx in got[1:]:
        np.testing.assert_array_equal(dw, got[0][0])
        np.testing.assert_array_equal(db, got[0][1])
        np.testing.assert_array_equal(dx, got[0][2])


def test_importing_the_kernels_leaves_the_environment_as_it_was():
    """The passive OpenMP wait policy is set only while Numba's pool starts: children and other
    OpenMP runtimes of the process do not inherit it; a policy the user set is kept."""
    code = ("import os; from deepfake_detector.nn import fused; import numba; "
            "fused.warm_up(); print(os.environ.get('OMP_WAIT_POLICY'), numba.threading_layer())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "None"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "ACTIVE"


def test_small_dense_products_run_on_one_blas_thread(monkeypatch):
    """On the fused kernels, a Dense product under SMALL_GEMM multiply-adds runs with one BLAS
    thread (OpenBLAS's idle threads would otherwise spin on the cores the next layers need);
    a large one, or any on the NumPy reference kernels, keeps BLAS's own threading."""
    from threadpoolctl import threadpool_info

    seen = []
    real = fused.one_blas_thread

    @contextlib.contextmanager
    def spy():
        with real():
            seen.append(max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"))
            yield

    monkeypatch.setattr(fused, "one_blas_thread", spy)
    rng = np.random.default_rng(0)
    small, large = nn.Dense(300, 2, rng=rng), nn.Dense(2048, 2048, rng=rng)
    x_small, x_large = rng.standard_normal((64, 300)).astype(np.float32), rng.standard_normal((8, 2048)).astype(np.float32)
    assert 64 * 300 * 2 < kernels.SMALL_GEMM <= 8 * 2048 * 2048
    with nn.use_kernels("fused"):
        y = small.forward(x_small, training=True)
        small.backward(np.ones_like(y))
        assert seen == [1, 1]
        y = large.forward(x_large, training=True)
        large.backward(np.ones_like(y))
    with nn.use_kernels("numpy"):
        small.forward(x_small)
    assert seen == [1, 1]
    np.testing.assert_allclose(small.forward(x_small), x_small @ small.params["weight"].T + small.params["bias"],
                               rtol=1e-5, atol=1e-6)
