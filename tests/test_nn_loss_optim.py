"""Loss, optimisers and schedules against torch, one step or many steps at a time (the engine
on NumPy, or CuPy under ``DEEPFAKE_DETECTOR_TEST_DEVICE=gpu``; the loss and the optimisers with
each kernel set, the ``kernels`` fixture)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepfake_detector import nn

from .engine_device import dev, host

torch = pytest.importorskip("torch", reason="PyTorch is the oracle for these tests")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [None, (0.3, 1.7, 1.0)])
@pytest.mark.parametrize("scale", [1.0, 1e4])  # 1e4: stability with huge logits
def test_softmax_cross_entropy_matches_torch(smoothing, weights, scale, kernels):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((16, 3)) * scale
    y = rng.integers(0, 3, 16)
    loss, dz = nn.softmax_cross_entropy(dev(z), dev(y), label_smoothing=smoothing, class_weights=weights)
    dz = host(dz)
    tz = torch.tensor(z, requires_grad=True)
    tw = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y), weight=tw, label_smoothing=smoothing)
    tl.backward()
    assert math.isfinite(loss)
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-9)
    np.testing.assert_allclose(dz, tz.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_gradient_is_divided_by_batch_size_once(kernels):
    z = np.zeros((128, 2))
    y = np.ones(128, dtype=int)
    _, dz = nn.softmax_cross_entropy(dev(z), dev(y))
    np.testing.assert_allclose(host(dz)[:, 1], -0.5 / 128)  # (p - 1) / N, not / N**2


def _pair(seed=0):
    rng = np.random.default_rng(seed)
    params = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    params = {k: dev(v) for k, v in params.items()}
    return params, tparams


OPTIMS = [
    ("sgd", dict(lr=0.1), torch.optim.SGD, dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.01), torch.optim.SGD,
     dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True), torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("adam", dict(lr=0.01), torch.optim.Adam, dict(lr=0.01)),
    ("adam", dict(lr=0.01, weight_decay=0.1), torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
    ("adamw", dict(lr=0.01, weight_decay=0.1), torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), torch.optim.SGD,
     dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adamw", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0), torch.optim.AdamW,
     dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0)),
]


@pytest.mark.parametrize("name,kw,tcls,tkw", OPTIMS)
def test_optimizer_steps_match_torch(name, kw, tcls, tkw, kernels):
    params, tparams = _pair()
    opt = nn.OPTIMIZERS[name](params, **kw)
    topt = tcls(list(tparams.values()), **tkw)
    rng = np.random.default_rng(1)
    for _ in range(5):  # several steps: momentum and bias corrections matter after the first
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        opt.step({k: dev(g) for k, g in grads.items()})
        for k, tp in tparams.items():
            tp.grad = torch.tensor(grads[k])
        topt.step()
        for k in params:
            np.testing.assert_allclose(host(params[k]), tparams[k].detach().numpy(), rtol=1e-9, atol=1e-12)


def test_softmax_cross_entropy_float32_matches_torch(kernels):
    rng = np.random.default_rng(3)
    z = (rng.standard_normal((33, 5)) * 3).astype(np.float32)
    y = rng.integers(0, 5, 33)
    w = (0.5, 1.0, 2.0, 1.5, 0.7)
    loss, dz = nn.softmax_cross_entropy(dev(z), dev(y), label_smoothing=0.05, class_weights=w)
    assert host(dz).dtype == np.float32
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y), weight=torch.tensor(w, dtype=torch.float32),
                                           label_smoothing=0.05)
    tl.backward()
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-5)
    np.testing.assert_allclose(host(dz), tz.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,kw,tcls,tkw", OPTIMS)
def test_optimizer_steps_match_torch_float32(name, kw, tcls, tkw, kernels):
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    params = {k: dev(v) for k, v in params.items()}
    opt = nn.OPTIMIZERS[name](params, **kw)
    topt = tcls(list(tparams.values()), **tkw)
    for _ in range(5):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        opt.step({k: dev(g) for k, g in grads.items()})
        for k, tp in tparams.items():
            tp.grad = torch.tensor(grads[k])
        topt.step()
        for k in params:
            assert host(params[k]).dtype == np.float32
            np.testing.assert_allclose(host(params[k]), tparams[k].detach().numpy(), rtol=1e-4, atol=1e-5)


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(2)
    grads = {"a": rng.standard_normal((4, 4)) * 3, "b": rng.standard_normal(7)}
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g.copy())
    tnorm = torch.nn.utils.clip_grad_norm_(tensors, 1.0)
    grads = {k: dev(g) for k, g in grads.items()}
    norm = nn.clip_grad_norm(grads, 1.0)
    np.testing.assert_allclose(norm, tnorm.item(), rtol=1e-12)
    for t, g in zip(tensors, grads.values()):
        np.testing.assert_allclose(host(g), t.grad.numpy(), rtol=1e-9)
    assert nn.global_norm(grads) == pytest.approx(1.0, rel=1e-5)


def _torch_lrs(make_sched, n):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make_sched(opt)
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(lrs)


def test_exponential_schedule_matches_torch():
    ours = [nn.ExponentialDecay(0.1, 0.95)(s) for s in range(60)]
    theirs = _torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.95), 60)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    per_epoch = nn.ExponentialDecay(0.1, 0.95, every=300)
    assert per_epoch(299) == 0.1 and per_epoch(300) == pytest.approx(0.095)


def test_step_schedule_matches_torch():
    ours = [nn.StepDecay(0.1, 7, 0.5)(s) for s in range(50)]
    theirs = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, 7, 0.5), 50)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_warmup_cosine_matches_torch():
    warm, total = 10, 100
    ours = [nn.WarmupCosine(0.1, total, warm, min_lr=0.001, start_factor=0.1)(s) for s in range(total)]

    def make(o):
        lin = torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=warm)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - warm, eta_min=0.001)
        return torch.optim.lr_scheduler.SequentialLR(o, [lin, cos], milestones=[warm])

    theirs = _torch_lrs(make, total)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
