"""ONNX export and the onnxruntime model: same logits as the NumPy engine, metadata round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from deepfake_detector import nn  # noqa: E402
from deepfake_detector.export import ExportError, UnsupportedLayerError, export_onnx  # noqa: E402
from deepfake_detector.models import (  # noqa: E402
    Model,
    Preprocess,
    create_model,
    load,  # noqa: E402
    save_model,
)
from deepfake_detector.models.onnx_model import OnnxModel, OnnxModelError  # noqa: E402

TOL = {"atol": 1e-4, "rtol": 1e-4}


def _randomise(model: Model, seed: int = 0) -> Model:
    """Non-trivial BN statistics (one training-mode forward), BN affine and biases."""
    rng = np.random.default_rng(seed)
    S = model.input_size
    x = model.normalize(rng.integers(0, 256, (6, S, S, 3), dtype=np.uint8))
    model.net.forward(x, training=True)
    for layer in model.net.layers:
        if isinstance(layer, (nn.BatchNorm2D, nn.BatchNorm1D)):
            n = layer.num_features
            layer.params["weight"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
            layer.params["bias"] = (0.2 * rng.standard_normal(n)).astype(np.float32)
        elif isinstance(layer, (nn.Conv2D, nn.Dense)) and "bias" in layer.params:
            layer.params["bias"] = (0.1 * rng.standard_normal(layer.params["bias"].shape)).astype(np.float32)
    return model


CASES = {"seed-cnn": 32, "df-cnn": 64}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    arch = request.param
    model = _randomise(create_model(arch, input_size=CASES[arch]))
    model.meta.update(threshold=0.37, temperature=1.7, face_margin=0.15, version="test-1")
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / f"{arch}.onnx")
    return model, OnnxModel(path, threads=1)


def _images(n, S, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, S, S, 3), dtype=np.uint8)


@pytest.mark.parametrize("batch", [1, 5])
def test_logits_match_numpy_engine(exported, batch):
    model, om = exported
    images = _images(batch, model.input_size)
    ours, theirs = model.logits(images), om.logits(images)
    assert theirs.shape == (batch, 2) and theirs.dtype == np.float32
    np.testing.assert_allclose(theirs, ours, **TOL)
    assert np.abs(ours).max() > 1e-2  # the comparison is not between two near-zero outputs


def test_predict_proba_agrees(exported):
    model, om = exported
    images = _images(7, model.input_size, seed=2)
    np.testing.assert_allclose(om.predict_proba(images, batch_size=3), model.predict_proba(images), atol=1e-5)
    np.testing.assert_allclose(om.normalize(images), model.normalize(images))


def test_metadata_round_trip(exported):
    model, om = exported
    assert (om.arch, om.config, om.class_names) == (model.arch, model.config, model.class_names)
    assert om.preprocess == model.preprocess and om.input_size == model.input_size
    assert om.threshold == pytest.approx(0.37) and om.temperature == pytest.approx(1.7)
    assert om.face_margin == pytest.approx(0.15) and om.meta == model.meta
    d = om.describe()
    assert d["kind"] == "onnx" and d["runtime"] == "onnx" and d["version"] == "test-1"
    assert d["parameters"] == model.num_parameters() and d["input_size"] == model.input_size
    assert om.logits(_images(0, model.input_size)).shape == (0, 2)


def test_every_layer_rule_unfolded_and_folded(tmp_path):
    """All supported layers (padded pools, strides, BN1D, LeakyReLU, no-bias Dense), both BN modes."""
    rng = np.random.default_rng(3)
    layers = [nn.Conv2D(3, 8, 3, stride=2, padding=1, bias=True, rng=rng), nn.BatchNorm2D(8),
              nn.LeakyReLU(0.1), nn.MaxPool2D(3, 2, 1), nn.BatchNorm2D(8), nn.ReLU(),
              nn.Conv2D(8, 6, (3, 1), padding=1, bias=False, rng=rng), nn.AvgPool2D(3, 2, 1),
              nn.Dropout(0.5), nn.Flatten(), nn.Dense(6 * 2 * 3, 10, rng=rng), nn.BatchNorm1D(10),
              nn.ReLU(), nn.BatchNorm1D(10), nn.Dense(10, 2, bias=False, rng=rng)]
    model = _randomise(Model(nn.Sequential(*layers), "custom", {}, Preprocess(16, (0.5,) * 3, (0.25,) * 3)))
    images = _images(4, 16)
    for fold in (True, False):
        om = OnnxModel(export_onnx(model, tmp_path / f"m{fold}.onnx", fold_bn=fold))
        assert om.metadata["bn_folded"] == str(int(fold))
        np.testing.assert_allclose(om.logits(images), model.logits(images), **TOL)


def test_fixed_batch_graph_runs_any_batch(tmp_path):
    model = _randomise(create_model("seed-cnn", input_size=32))
    om = OnnxModel(export_onnx(model, tmp_path / "b1.onnx", dynamic_batch=False))
    assert om.session.get_inputs()[0].shape[0] == 1
    images = _images(3, 32)
    np.testing.assert_allclose(om.logits(images), model.logits(images), **TOL)


def test_unsupported_layer_is_a_clear_error(tmp_path):
    class Mystery(nn.Layer):
        def forward(self, x, training=False):
            return x

    net = nn.Sequential(nn.Flatten(), Mystery(), nn.Dense(3 * 8 * 8, 2), names=["flat", "odd", "fc"])
    model = Model(net, "custom", {}, Preprocess(8))
    with pytest.raises(UnsupportedLayerError, match=r"'odd' \(Mystery\).*supported layers: .*Conv2D"):
        export_onnx(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()

    class JaxModel(Model):  # a model of another engine: it does not export itself
        kind = "jax"

        @property
        def abilities(self):
            return dataclasses.replace(super().abilities, exportable=False)

    with pytest.raises(ExportError, match=r"a jax model .* cannot be exported"):
        export_onnx(JaxModel(net, "custom", {}, Preprocess(8)), tmp_path / "x.onnx")


def test_load_dispatches_on_the_file_kind(tmp_path, exported):
    model, om = exported
    save_model(model, tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert isinstance(loaded, Model) and loaded.kind == "numpy"
    assert isinstance(load(om.path), OnnxModel)
    upper = tmp_path / "M.ONNX"
    upper.write_bytes(om.path.read_bytes())
    assert isinstance(load(upper, threads=1), OnnxModel)


def test_onnx_without_our_metadata_is_refused(tmp_path):
    import onnx

    model = _randomise(create_model("seed-cnn", input_size=16))
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(OnnxModelError, match="without deepfake_detector metadata"):
        OnnxModel(tmp_path / "bare.onnx")
    with pytest.raises(FileNotFoundError):
        OnnxModel(tmp_path / "missing.onnx")


def test_cli_export_and_predict_on_onnxruntime(tmp_path, capsys):
    import json

    from PIL import Image

    from deepfake_detector.cli import main
    from deepfake_detector.models import create_model, save_model

    m = create_model("df-cnn", input_size=64, seed=4)
    ckpt = tmp_path / "m.npz"
    save_model(m, ckpt)
    assert main(["export", "--model", str(ckpt), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_logit_diff"] < 1e-4
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 80, 3), np.uint8)).save(img)
    rows = {}
    onnx_path = str(tmp_path / "m.onnx")
    for args in (["--model", str(ckpt)], ["--model", onnx_path], ["--model", str(ckpt), "--runtime", "onnx"]):
        assert main(["predict", str(img), "--format", "json", "--whole-image", *args]) == 0
        rows[" ".join(args)] = json.loads(capsys.readouterr().out)[0]["p_fake"]
    values = list(rows.values())
    assert max(values) - min(values) < 1e-4


@pytest.mark.parametrize("arch", ["mobilenet-v2", "vit-tiny"])
def test_torch_models_export_and_match(tmp_path, arch):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    config = {"input_size": 64, "pretrained": False}
    if arch == "vit-tiny":
        config["patch_size"] = 16
    m = create_model(arch, **config)
    m.meta.update(threshold=0.3)
    path = export_onnx(m, tmp_path / "t.onnx")
    om = OnnxModel(path)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), np.uint8)
    np.testing.assert_allclose(om.logits(images), m.logits(images), rtol=1e-4, atol=1e-4)
    assert om.arch == arch and om.threshold == 0.3


def test_half_weights_halve_the_file_and_keep_the_logits_close(tmp_path):
    import onnx

    model = _randomise(create_model("df-cnn", input_size=64, seed=5))
    full = export_onnx(model, tmp_path / "full.onnx")
    half = export_onnx(model, tmp_path / "half.onnx", half=True)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    stored = {i.name: i.data_type for i in onnx.load(str(half)).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in stored.values()
    x = _images(8, 64)
    want = model.logits(x)
    got = OnnxModel(half, threads=1).logits(x)
    # float16 keeps 11 significant bits: weights within 2^-11 relative; the logits follow
    assert np.abs(got - want).max() < 1e-2 * max(1.0, np.abs(want).max())
    assert not np.allclose(got, want, atol=1e-6)  # they really are rounded
    assert OnnxModel(half).meta == model.meta


def test_release_to_onnx_measures_test_on_the_shipped_file(tmp_path):
    from deepfake_detector.evaluate import evaluate
    from deepfake_detector.release import release
    from deepfake_detector.train import TrainConfig, train

    from .synthetic import make_dataset

    data = make_dataset(tmp_path / "data")
    train(TrainConfig(data=str(data), out=str(tmp_path / "run"), arch="df-cnn", epochs=1, batch_size=16,
                      model_config={"input_size": 32, "widths": [8, 8, 16, 16, 16], "depths": [1, 1, 1, 1, 1]},
                      augment=None, workers=1, early_stopping=None), progress=False)
    with pytest.raises(ValueError, match="ONNX export option"):
        release(tmp_path / "run", tmp_path / "ship.npz", half=True)
    meta = release(tmp_path / "run", tmp_path / "ship" / "m.onnx", test_data=data, half=True,
                   calibrate_on=data / "Validation")
    shipped = OnnxModel(tmp_path / "ship" / "m.onnx")
    again = evaluate(shipped, data)
    assert shipped.meta["test"]["roc_auc"] == pytest.approx(again["roc_auc"], abs=1e-12)
    assert shipped.meta["test"]["accuracy"] == pytest.approx(again["accuracy"], abs=1e-12)
    assert shipped.meta["test"] == meta["test"] and shipped.meta["calibrated_on"]["split"] == "Validation"
    assert "float16 weights" in (tmp_path / "ship" / "MODEL_CARD.md").read_text()
