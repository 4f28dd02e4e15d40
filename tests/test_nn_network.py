"""Whole-network checks that need no oracle: numerical gradients, files, overfitting (the engine
on NumPy, or CuPy under ``DEEPFAKE_DETECTOR_TEST_DEVICE=gpu``)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

from deepfake_detector import nn
from deepfake_detector.models import create_model, list_models, load_model, save_model
from deepfake_detector.nn.io import CheckpointError

from .engine_device import DEVICE, dev


def small_net(seed=0):
    rng = np.random.default_rng(seed)
    net = nn.Sequential(
        nn.Conv2D(2, 3, 3, padding=1, rng=rng), nn.BatchNorm2D(3), nn.ReLU(), nn.MaxPool2D(2),
        nn.Conv2D(3, 4, 3, stride=2, padding=1, bias=False, rng=rng), nn.LeakyReLU(0.1),
        nn.AvgPool2D(2), nn.Flatten(), nn.Dense(4, 2, rng=rng))
    return net.astype(np.float64).to(DEVICE)


def loss_and_grads(net, x, y):
    net.zero_grad()
    loss, dz = nn.softmax_cross_entropy(net.forward(x, training=True), y)
    dx = net.backward(dz)
    return loss, net.named_grads(), dx


def gradient_check(net, x, y, n_probe=6, h=1e-6, seed=0):
    """Largest relative error between backward and central differences, over parameters
    and the input, probing ``n_probe`` random entries of each."""
    _, grads, dx = loss_and_grads(net, x, y)
    grads = {k: v.copy() for k, v in grads.items()}
    rng = np.random.default_rng(seed)
    targets = dict(net.named_parameters(), input=x)
    analytic = dict(grads, input=dx)
    worst = 0.0
    for name, arr in targets.items():
        for _ in range(n_probe):
            i = tuple(int(rng.integers(s)) for s in arr.shape)
            old = float(arr[i])
            arr[i] = old + h
            lp = nn.softmax_cross_entropy(net.forward(x, training=True), y)[0]
            arr[i] = old - h
            lm = nn.softmax_cross_entropy(net.forward(x, training=True), y)[0]
            arr[i] = old
            num, ana = (lp - lm) / (2 * h), float(analytic[name][i])
            # the floor makes zero-gradient entries (a bias before BN) compare absolutely
            err = abs(num - ana) / max(abs(num) + abs(ana), 1e-4)
            worst = max(worst, err)
    return worst


def test_gradient_check_passes_on_the_network(kernels):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 2, 8, 8)), np.array([0, 1, 1, 0])
    assert gradient_check(small_net(), dev(x), y) < 1e-5


def test_gradient_check_catches_a_wrong_backward(monkeypatch, kernels):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 2, 8, 8)), np.array([0, 1, 1, 0])
    original = nn.ReLU.backward
    # the original system's bug in spirit: one layer divides its gradient again
    monkeypatch.setattr(nn.ReLU, "backward", lambda self, g, need_input_grad=True: original(self, g) / 4)
    assert gradient_check(small_net(), dev(x), y) > 1e-2


def test_registry_and_seed_cnn_size():
    assert {"seed-cnn", "df-cnn"} <= set(list_models())
    m = create_model("seed-cnn")
    assert m.num_parameters() == 56_578  # 448 + 32 + 4,640 + 64 + 18,496 + 128 + 32,770
    x = np.zeros((2, 3, 128, 128), np.float32)
    with nn.no_grad():
        assert m.forward(x).shape == (2, 2)
    with pytest.raises(KeyError, match="unknown architecture"):
        create_model("no-such-net")


@pytest.mark.parametrize("arch", ["seed-cnn", "df-cnn"])
def test_save_load_gives_identical_outputs(tmp_path, arch):
    m = create_model(arch, seed=3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, m.input_size, m.input_size, 3), dtype=np.uint8)
    m.forward(m.normalize(images), training=True)  # move BN running statistics off their init
    m.meta.update(threshold=0.42, version="test")
    path = tmp_path / "m.npz"
    save_model(m, path, extra_meta={"trained_on": "nothing"})
    m2 = load_model(path)
    assert (m2.arch, m2.config, m2.preprocess, m2.class_names) == (m.arch, m.config, m.preprocess, m.class_names)
    assert m2.threshold == 0.42 and m2.meta["trained_on"] == "nothing"
    np.testing.assert_array_equal(m.predict_proba(images), m2.predict_proba(images))


def test_a_file_saved_on_the_test_device_loads_on_the_cpu(tmp_path):
    m = create_model("seed-cnn", seed=5).to(DEVICE)
    images = np.random.default_rng(1).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    m.forward(m.normalize(images), training=True)  # running statistics off their init, on the device
    save_model(m, tmp_path / "m.npz")
    cpu = load_model(tmp_path / "m.npz")
    assert all(type(a) is np.ndarray for a in cpu.net.named_parameters().values())
    np.testing.assert_allclose(cpu.predict_proba(images), m.predict_proba(images), rtol=1e-4, atol=1e-6)
    back = load_model(tmp_path / "m.npz", device=DEVICE)
    np.testing.assert_array_equal(back.predict_proba(images), m.predict_proba(images))


def test_pickles_are_refused(tmp_path):
    evil = tmp_path / "evil.npz"
    evil.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="arbitrary code"):
        load_model(evil)
    obj = tmp_path / "obj.npz"  # a real zip, but holding an object (pickled) array
    np.savez(obj, __meta__=np.frombuffer(b"{}", np.uint8), **{"param/x": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="pickled"):
        load_model(obj)


def test_small_network_overfits_64_random_images(kernels):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 2, 64)
    net = nn.Sequential(
        nn.Conv2D(3, 8, 3, padding=1, rng=rng), nn.BatchNorm2D(8), nn.ReLU(), nn.MaxPool2D(2),
        nn.Conv2D(8, 16, 3, padding=1, rng=rng), nn.BatchNorm2D(16), nn.ReLU(), nn.MaxPool2D(2),
        nn.Flatten(), nn.Dense(16 * 4 * 4, 2, rng=rng)).to(DEVICE)
    x, y = dev(x), dev(y)
    opt = nn.Adam(net.named_parameters(), lr=3e-3)
    for _ in range(150):
        net.zero_grad()
        _, dz = nn.softmax_cross_entropy(net.forward(x, training=True), y)
        net.backward(dz, need_input_grad=False)
        opt.step(net.named_grads())
    with nn.no_grad():
        acc = float((net.forward(x, training=False).argmax(1) == y).mean())
    assert acc == 1.0


def test_flat_layers_walks_a_nested_sequential_in_execution_order():
    conv, bn, relu = nn.Conv2D(2, 3, 3, padding=1), nn.BatchNorm2D(3), nn.ReLU()
    pool, flat, drop, dense = nn.MaxPool2D(2), nn.Flatten(), nn.Dropout(0.5), nn.Dense(12, 2)
    inner = nn.Sequential(bn, nn.Sequential(relu, pool, names=["act", "pool"]))  # names "0", "1"
    net = nn.Sequential(conv, inner, flat, nn.Sequential(drop, dense, names=["drop", "fc"]),
                        names=["stem", "block", "flatten", "head"])
    expected = [("stem", conv), ("block.0", bn), ("block.1.act", relu), ("block.1.pool", pool),
                ("flatten", flat), ("head.drop", drop), ("head.fc", dense)]
    got = list(nn.flat_layers(net))
    assert [n for n, _ in got] == [n for n, _ in expected]
    assert all(a is b for (_, a), (_, b) in zip(got, expected, strict=True))
    assert [n for n, _ in nn.flat_layers(inner, "block.")] == ["block.0", "block.1.act", "block.1.pool"]
    # the names are the prefixes of the parameter names
    assert {k.rsplit(".", 1)[0] for k in net.named_parameters()} == {"stem", "block.0", "head.fc"}
    assert list(nn.flat_layers(nn.Sequential())) == []


def test_float64_end_to_end():
    m = create_model("seed-cnn").to(DEVICE)
    m.net.astype(np.float64)
    x = m.normalize(np.zeros((1, 128, 128, 3), np.uint8), dtype=np.float64)
    assert m.forward(x).dtype == np.float64


def test_gpu_request_without_cupy_is_a_clear_error():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here; the error path is for machines without it")
    except ImportError:
        pass
    with pytest.raises(nn.DeviceError, match="CuPy"):
        create_model("seed-cnn").to("gpu")


def test_engine_imports_neither_torch_nor_cupy():
    code = ("import sys, deepfake_detector.nn, deepfake_detector.models; "
            "print(any(m.split('.')[0] in ('torch', 'cupy') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_reuse_freed_memory_keeps_a_freed_large_buffer_for_the_next_one():
    code = """
import os, sys, numpy as np
from deepfake_detector import nn
on = nn.reuse_freed_memory(sys.argv[1] == '1')
rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
a = np.ones(64 * 2**20 // 8)  # 64 MB, over glibc's largest mmap threshold
held = rss()
del a
print(on, round(held - rss()))  # MB handed back to the kernel by the free
"""
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the heap setting is glibc's")
    runs = {}
    for flag in ("1", "0"):
        out = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, check=True)
        on, mb = out.stdout.split()
        runs[flag] = (on, int(mb))
    assert runs["1"][0] == "True" and runs["0"][0] == "False"
    assert runs["0"][1] >= 60  # glibc's default: the buffer's pages go back, the next one faults them in again
    assert runs["1"][1] <= 4  # kept: the next step's buffer reuses them
