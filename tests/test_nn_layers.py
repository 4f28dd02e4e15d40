"""Every layer against PyTorch: output, input gradient and parameter gradients.

One helper (:func:`check_layer`) runs a case; each case is one line. float64 within 1e-9
relative, float32 within 1e-4. The engine runs on NumPy, or on CuPy under
``DEEPFAKE_DETECTOR_TEST_DEVICE=gpu``; the oracle is PyTorch on the CPU either way. Layers with
a fused kernel run with each kernel set (the ``kernels`` fixture: NumPy reference, fused).
"""

from __future__ import annotations

import numpy as np
import pytest

from deepfake_detector import nn

from .engine_device import DEVICE, dev, host

torch = pytest.importorskip("torch", reason="PyTorch is the oracle for these tests")
F = torch.nn.functional

TOL = {np.float64: dict(rtol=1e-9, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}
DTYPES = [np.float64, np.float32]


def check_layer(ours, torch_fn, x_shape, dtype, training=True, seed=0, torch_params=None,
                state_check=None):
    """Run ``ours`` and ``torch_fn`` on the same seeded input and upstream gradient.

    ``torch_params`` maps our parameter names to the names torch_fn takes as keyword
    arguments (torch tensors are built from our initial values, so both start equal).
    """
    rng = np.random.default_rng(seed)
    ours.astype(dtype).to(DEVICE)
    x = rng.standard_normal(x_shape).astype(dtype)
    ours.zero_grad()
    y = host(ours.forward(dev(x), training))
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = host(ours.backward(dev(g)))

    tx = torch.tensor(x, requires_grad=True)
    tparams = {k: torch.tensor(host(v), requires_grad=True) for k, v in ours.params.items()}
    kwargs = {(torch_params or {}).get(k, k): v for k, v in tparams.items()}
    ty = torch_fn(tx, **kwargs)
    ty.backward(torch.tensor(g))

    tol = TOL[dtype]
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol, err_msg="output")
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol, err_msg="input gradient")
    for k, tp in tparams.items():
        np.testing.assert_allclose(host(ours.grads[k]), tp.grad.numpy(), **tol, err_msg=f"grad {k}")
    if state_check:
        state_check(ours)


def _conv(cin, cout, k, stride, pad, bias, dtype):
    layer = nn.Conv2D(cin, cout, k, stride=stride, padding=pad, bias=bias, rng=np.random.default_rng(1))
    fn = lambda x, weight, bias=None: F.conv2d(x, weight, bias, stride=stride, padding=pad)
    return layer, fn


CONV_CASES = [  # (N, C_in, H, W), C_out, kernel, stride, padding, bias
    ((2, 3, 8, 8), 4, 3, 1, 1, True),
    ((2, 3, 9, 7), 5, 3, 2, 1, False),
    ((1, 2, 10, 10), 3, 5, 1, 2, True),
    ((3, 4, 6, 6), 2, 1, 1, 0, True),
    ((2, 3, 11, 11), 4, 4, 3, 0, True),
    ((2, 1, 7, 9), 3, 2, 2, 1, False),
    # 3x3 at stride 1 from 8 input channels: Winograd's F(2x2, 3x3) on the fused kernels
    ((2, 16, 9, 7), 5, 3, 1, 1, True),
    ((1, 17, 6, 5), 3, 3, 1, 0, False),
    ((2, 16, 4, 4), 4, 3, 1, 2, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,cout,k,stride,pad,bias", CONV_CASES)
def test_conv2d(shape, cout, k, stride, pad, bias, dtype, kernels):
    check_layer(*_conv(shape[1], cout, k, stride, pad, bias, dtype), shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_random_shapes(dtype, kernels):
    rng = np.random.default_rng(42)
    for _ in range(8):
        k = int(rng.integers(1, 5))
        pad = int(rng.integers(0, k))
        stride = int(rng.integers(1, 4))
        H, W = (int(v) for v in rng.integers(k + 1, 13, size=2))
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 5)), H, W)
        check_layer(*_conv(shape[1], int(rng.integers(1, 6)), k, stride, pad, bool(rng.integers(2)), dtype),
                    shape, dtype, seed=int(rng.integers(1000)))


def _bn_state(torch_cls, shape, dtype, training):
    """Our BatchNorm next to torch's module, after one forward: running stats compared."""
    def check(ours):
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape).astype(dtype)
        m = torch_cls(shape[1], momentum=0.1, eps=1e-5).to(torch.float64 if dtype == np.float64 else torch.float32)
        m.train(training)
        with torch.no_grad():
            m(torch.tensor(x))
        tol = TOL[dtype]
        np.testing.assert_allclose(host(ours.buffers["running_mean"]), m.running_mean.numpy(), **tol)
        np.testing.assert_allclose(host(ours.buffers["running_var"]), m.running_var.numpy(), **tol)
    return check


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (2, 6, 3, 7)])
def test_batchnorm2d(shape, training, dtype, kernels):
    layer = nn.BatchNorm2D(shape[1])
    rng = np.random.default_rng(3)
    layer.params["weight"] = rng.uniform(0.5, 1.5, shape[1])
    layer.params["bias"] = rng.standard_normal(shape[1])
    if not training:  # evaluation uses running statistics; make them non-trivial
        layer.buffers["running_mean"] = rng.standard_normal(shape[1])
        layer.buffers["running_var"] = rng.uniform(0.5, 2, shape[1])
    rm, rv = (torch.tensor(layer.buffers[k].astype(dtype)) for k in ("running_mean", "running_var"))
    fn = lambda x, weight, bias: F.batch_norm(x, rm.clone(), rv.clone(), weight, bias, training, 0.1, 1e-5)
    state = _bn_state(torch.nn.BatchNorm2d, shape, dtype, training) if training else None
    check_layer(layer, fn, shape, dtype, training=training, state_check=state)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm1d(training, dtype, kernels):
    layer = nn.BatchNorm1D(5)
    rng = np.random.default_rng(4)
    layer.params["weight"] = rng.uniform(0.5, 1.5, 5)
    if not training:
        layer.buffers["running_mean"] = rng.standard_normal(5)
        layer.buffers["running_var"] = rng.uniform(0.5, 2, 5)
    rm, rv = (torch.tensor(layer.buffers[k].astype(dtype)) for k in ("running_mean", "running_var"))
    fn = lambda x, weight, bias: F.batch_norm(x, rm.clone(), rv.clone(), weight, bias, training, 0.1, 1e-5)
    state = _bn_state(torch.nn.BatchNorm1d, (8, 5), dtype, training) if training else None
    check_layer(layer, fn, (8, 5), dtype, training=training, state_check=state)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer,fn,shape", [
    (nn.ReLU(), F.relu, (2, 3, 4, 4)),
    (nn.LeakyReLU(0.1), lambda x: F.leaky_relu(x, 0.1), (2, 3, 4, 4)),
    (nn.MaxPool2D(2), lambda x: F.max_pool2d(x, 2), (2, 3, 8, 8)),
    (nn.MaxPool2D(3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), (2, 2, 9, 7)),
    (nn.MaxPool2D(2, 1), lambda x: F.max_pool2d(x, 2, 1), (1, 2, 5, 6)),
    (nn.MaxPool2D(3, 1, 1), lambda x: F.max_pool2d(x, 3, 1, 1), (2, 3, 7, 5)),
    (nn.MaxPool2D(2), lambda x: F.max_pool2d(x, 2), (2, 2, 9, 7)),
    (nn.MaxPool2D(4, 3, 2), lambda x: F.max_pool2d(x, 4, 3, 2), (1, 2, 11, 10)),
    (nn.AvgPool2D(2), lambda x: F.avg_pool2d(x, 2), (2, 3, 8, 6)),
    (nn.AvgPool2D(3, 2, 1), lambda x: F.avg_pool2d(x, 3, 2, 1), (2, 2, 9, 7)),
    (nn.GlobalAvgPool2D(), lambda x: x.mean(dim=(2, 3)), (3, 4, 5, 6)),
    (nn.Flatten(), lambda x: x.flatten(1), (2, 3, 4, 5)),
], ids=["relu", "leaky", "max2", "max3s2p1", "max2s1", "max3s1p1", "max2odd", "max4s3p2", "avg2", "avg3s2p1", "gap",
        "flatten"])
def test_parameter_free_layers(layer, fn, shape, dtype, kernels):
    check_layer(layer, fn, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (2, 1, 0)])
def test_max_pool_ties_go_to_the_first_maximum(k, s, p, dtype, kernels):
    """All-equal windows (and a few rows of equal values): the gradient goes where torch sends it."""
    layer = nn.MaxPool2D(k, s, p).to(DEVICE)
    x = np.ones((2, 3, 8, 7), dtype)
    x[:, :, 3:5] = 2.0  # two rows of equal maxima
    g = np.random.default_rng(0).standard_normal(layer.forward(dev(x), True).shape).astype(dtype)
    dx = host(layer.backward(dev(g)))
    tx = torch.tensor(x, requires_grad=True)
    F.max_pool2d(tx, k, s, p).backward(torch.tensor(g))
    np.testing.assert_array_equal(dx, tx.grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (2, 6, 3, 7), (8, 5)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_then_relu_in_a_sequential(shape, training, dtype, kernels):
    """Sequential(BatchNorm, ReLU) against torch's relu(batch_norm(x)); with the fused kernels the pair
    runs as one step (the ReLU passed over). Output, input and parameter gradients, running statistics."""
    C = shape[1]
    bn = nn.BatchNorm2D(C) if len(shape) == 4 else nn.BatchNorm1D(C)
    rng = np.random.default_rng(7)
    bn.params["weight"] = rng.uniform(0.5, 1.5, C)
    bn.params["bias"] = rng.standard_normal(C) * 0.5  # some channels mostly clipped, some mostly passed
    bn.buffers["running_mean"] = rng.standard_normal(C)
    bn.buffers["running_var"] = rng.uniform(0.5, 2, C)
    relu = nn.ReLU()
    seq = nn.Sequential(bn, relu).astype(dtype).to(DEVICE)
    rm, rv = (torch.tensor(host(bn.buffers[k]).copy()) for k in ("running_mean", "running_var"))
    tw, tb = (torch.tensor(host(bn.params[k]).copy(), requires_grad=True) for k in ("weight", "bias"))
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    seq.zero_grad()
    y = host(seq.forward(dev(x), training))
    if kernels == "fused" and DEVICE == "cpu":
        assert seq._passed_over == (1,) and relu._out is None  # fused: the BatchNorm did the ReLU
    dx = host(seq.backward(dev(g)))
    tx = torch.tensor(x, requires_grad=True)
    ty = F.relu(F.batch_norm(tx, rm, rv, tw, tb, training, 0.1, 1e-5))
    ty.backward(torch.tensor(g))
    tol = TOL[dtype]
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol, err_msg="output")
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol, err_msg="input gradient")
    np.testing.assert_allclose(host(bn.grads["weight"]), tw.grad.numpy(), **tol, err_msg="grad weight")
    np.testing.assert_allclose(host(bn.grads["bias"]), tb.grad.numpy(), **tol, err_msg="grad bias")
    np.testing.assert_allclose(host(bn.buffers["running_mean"]), rm.numpy(), **tol, err_msg="running mean")
    np.testing.assert_allclose(host(bn.buffers["running_var"]), rv.numpy(), **tol, err_msg="running var")
    assert int(host(bn.buffers["num_batches_tracked"])) == int(training)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_dense(bias, dtype):
    layer = nn.Dense(7, 3, bias=bias, rng=np.random.default_rng(5))
    check_layer(layer, lambda x, weight, bias=None: F.linear(x, weight, bias), (4, 7), dtype)


def _attention_pool(x, weight, bias, score):
    """Attention pooling written independently in torch: a score per token, a softmax over tokens."""
    a = torch.softmax(torch.tanh(x @ weight.T + bias) @ score, dim=1)  # (N, T)
    return torch.einsum("nt,ntd->nd", a, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 1, 4), (2, 9, 3)])
def test_attention_pool(shape, dtype):
    layer = nn.AttentionPool(shape[2], hidden=6, rng=np.random.default_rng(4))
    check_layer(layer, _attention_pool, shape, dtype)


def test_attention_pool_weighs_the_tokens_it_scores_high():
    """A hand-made case: the score favours token 1 by 10 logits, so the pool is ~ token 1."""
    layer = nn.AttentionPool(2, hidden=1)
    layer.params.update(weight=np.array([[1.0, 0.0]]), bias=np.zeros(1), score=np.array([20.0]))
    x = np.array([[[-1.0, 3.0], [1.0, 5.0]]])  # tanh: -0.76 vs +0.76 -> scores -15.2 vs +15.2
    a, _ = layer.weights_of(x)
    np.testing.assert_allclose(a, [[1 / (1 + np.exp(30.46)), 1 / (1 + np.exp(-30.46))]], rtol=1e-2)
    np.testing.assert_allclose(layer.forward(x), [[1.0, 5.0]], atol=1e-9)


def test_dropout_masks_and_scales():
    layer = nn.Dropout(0.25, seed=0)
    x = np.ones((200, 50))
    y = layer.forward(x, training=True)
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    np.testing.assert_allclose(layer.backward(np.ones_like(x)), y)  # same mask, same scale
    np.testing.assert_array_equal(layer.forward(x, training=False), x)


def test_the_fused_kernels_take_numpy_arrays_only():
    """With the fused kernels in use, a NumPy array takes them and a CuPy one the reference."""
    pytest.importorskip("numba", reason="the fused kernels need Numba")
    bn = nn.BatchNorm2D(2).to(DEVICE)
    with nn.use_kernels("fused"):
        bn.forward(dev(np.ones((2, 2, 3, 3), np.float32)), True)
    assert (bn._cache[0] is nn.kernels.FUSED) == (DEVICE == "cpu")


def test_sequential_names_and_input_gradient(kernels):
    net = nn.Sequential(nn.Conv2D(3, 2, 3, padding=1, rng=np.random.default_rng(0)), nn.ReLU(),
                        nn.Flatten(), nn.Dense(2 * 4 * 4, 2, rng=np.random.default_rng(1)),
                        names=["conv", "relu", "flat", "fc"])
    assert sorted(net.named_parameters()) == ["conv.bias", "conv.weight", "fc.bias", "fc.weight"]
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4))
    net.astype(np.float64)
    net.zero_grad()
    y = net.forward(x, training=True)
    dx = net.backward(np.ones_like(y))
    assert dx.shape == x.shape  # backward reaches the image (saliency maps)
    net.forward(x, training=True)
    assert net.backward(np.ones_like(y), need_input_grad=False) is None
