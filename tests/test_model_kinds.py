"""A new model kind through the interface alone: a toy kind defined in this file only, loaded
by the one loader and run through predict, evaluate, scan and the web API. Also the loader's
refusals, its clean-up after an on-the-fly export, and the one error label."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_detector.cli import main
from deepfake_detector.models import (
    KINDS,
    Abilities,
    ModelKind,
    Predictor,
    Preprocess,
    create_model,
    load,
    register_kind,
    save_model,
)
from deepfake_detector.predict import predict_paths
from deepfake_detector.results import ERROR

from .synthetic import make_dataset


class ToyModel(Predictor):
    """P(fake) = the crop's mean brightness: a model kind in a dozen lines, no engine at all."""

    kind = "toy"
    runtime = "toy"

    def __init__(self, path):
        spec = json.loads(Path(path).read_text())
        self.arch, self.config, self.class_names = "brightness", {}, ("Real", "Fake")
        self.preprocess = Preprocess(int(spec["input_size"]))
        self.meta = {"threshold": float(spec["threshold"]), "version": "toy-1", "framing": "as-is"}  # whole images
        self.calls = 0

    @property
    def abilities(self) -> Abilities:
        return Abilities(thread_safe=True)

    def logits(self, images, batch_size: int = 64) -> np.ndarray:
        self.calls += 1
        p = np.clip(np.asarray(images, np.float64).reshape(len(images), -1).mean(1) / 255, 1e-6, 1 - 1e-6)
        return np.stack([np.zeros_like(p), np.log(p / (1 - p))], 1)  # softmax(z)[1] == p

    def num_parameters(self) -> int:
        return 0


if "toy" not in KINDS:
    register_kind(ModelKind("toy", "toy", lambda p: p.suffix == ".toy",
                            lambda path, device="cpu", threads=None: ToyModel(path)))


@pytest.fixture
def toy(tmp_path) -> Path:
    path = tmp_path / "m.toy"
    path.write_text(json.dumps({"input_size": 16, "threshold": 0.5}))
    return path


def grey(path, level, size=20):
    Image.fromarray(np.full((size, size, 3), level, np.uint8)).save(path)
    return path


def test_the_toy_kind_through_predict(tmp_path, toy, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    grey(d / "dark.png", 40)
    grey(d / "bright.png", 220)
    assert main(["predict", str(d), "--model", str(toy), "--format", "json"]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert rows["dark.png"]["label"] == "Real" and rows["dark.png"]["p_fake"] == pytest.approx(40 / 255, abs=1e-6)
    assert rows["bright.png"]["label"] == "Fake" and rows["bright.png"]["p_fake"] == pytest.approx(220 / 255, abs=1e-6)


def test_the_toy_kind_through_evaluate(tmp_path, toy, capsys):
    root = make_dataset(tmp_path / "ds", n_per_class=(2, 2, 6), size=16)
    assert main(["evaluate", "--data", str(root), "--model", str(toy), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 12 and r["model"]["kind"] == r["model"]["runtime"] == "toy" and 0.0 <= r["roc_auc"] <= 1.0


def test_the_toy_kind_through_scan(tmp_path, toy):
    pytest.importorskip("pyarrow")
    from deepfake_detector.scan import read_results, scan

    d = tmp_path / "imgs"
    d.mkdir()
    for i, level in enumerate((30, 90, 200)):
        grey(d / f"{i}.png", level)
    summary = scan(d, tmp_path / "out.csv", model_path=str(toy), workers=0, progress=False)
    df = read_results(tmp_path / "out.csv").sort_values("path")
    assert summary["scanned"] == 3
    assert list(df["label"]) == ["Real", "Real", "Fake"]
    assert df["p_fake"].tolist() == pytest.approx([30 / 255, 90 / 255, 200 / 255], abs=1e-6)


def test_the_toy_kind_through_the_web_api(tmp_path, toy):
    requests = pytest.importorskip("requests")
    pytest.importorskip("fastapi")
    from deepfake_detector.web.api import create_api

    from .web_server import BackgroundServer

    with BackgroundServer(create_api(load(toy), temp_dir=tmp_path)) as srv:
        png = grey(tmp_path / "x.png", 230)
        r = requests.post(f"{srv.url}/api/predict", files={"file": ("x.png", png.read_bytes())},
                          data={"faces": "false"}, timeout=60)
        assert r.status_code == 200
        assert r.json()["label"] == "Fake" and r.json()["p_fake"] == pytest.approx(230 / 255, abs=1e-6)
        assert requests.get(f"{srv.url}/api/health", timeout=60).json()["model"]["runtime"] == "toy"


def test_a_runtime_that_cannot_run_the_file_is_refused(tmp_path, toy):
    ckpt = tmp_path / "m.npz"
    save_model(create_model("seed-cnn", input_size=16), ckpt)
    with pytest.raises(ValueError, match=r"numpy model, which runs on numpy.*runtime 'torch' cannot run it"):
        load(ckpt, runtime="torch")
    with pytest.raises(ValueError, match="toy model, which runs on toy.*runtime 'onnx' cannot run it"):
        load(toy, runtime="onnx")  # not exportable: no silent fallback to its own runtime
    with pytest.raises(ValueError, match="unknown runtime"):
        load(ckpt, runtime="tensorflow")
    assert main(["predict", str(toy), "--model", str(ckpt), "--runtime", "torch"]) == 2


def test_an_on_the_fly_export_leaves_no_temporary_file(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    ckpt = tmp_path / "m.npz"
    model = create_model("seed-cnn", input_size=16, seed=1)
    save_model(model, ckpt)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    om = load(ckpt, runtime="onnx")
    assert om.kind == "onnx" and list(tmp.iterdir()) == []
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), np.uint8)
    assert om.logits(images) == pytest.approx(model.logits(images), abs=1e-4)  # the session outlives its file


def test_one_error_label_for_images_and_videos(tmp_path, toy):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    (d / "broken.mp4").write_bytes(b"not a video")
    rows = {Path(r["path"]).name: r for r in predict_paths([d, d / "missing.png"], load(toy))}
    assert {n: r["label"] for n, r in rows.items()} == {"broken.jpg": ERROR, "broken.mp4": ERROR, "missing.png": ERROR}
    assert all(r["error"] and r["p_fake"] is None for r in rows.values())


def test_a_gif_and_an_flv_in_a_folder_get_rows(tmp_path, toy, capsys):
    d = tmp_path / "mixed"
    d.mkdir()
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(d / "anim.gif")
    (d / "clip.flv").write_bytes(b"\x00" * 64)  # found by its extension; it does not decode
    (d / "notes.txt").write_text("neither")
    assert main(["predict", str(d), "--model", str(toy), "--format", "json"]) == 1  # the .flv failed
    captured = capsys.readouterr()
    rows = {Path(r["path"]).name: r for r in json.loads(captured.out)}
    assert set(rows) == {"anim.gif", "clip.flv"}
    assert rows["anim.gif"]["label"] == "Fake" and rows["clip.flv"]["label"] == ERROR
    assert "1 ignored" in captured.err and "notes.txt" in captured.err


# --- dispatch on the object: callers ask what a model can do, never its kind ---------------
def test_a_model_that_cannot_be_exported_or_bundled_says_so(tmp_path, toy):
    from deepfake_detector.export import ExportError, export_onnx

    model = load(toy)
    with pytest.raises(ExportError, match="a toy model"):
        export_onnx(model, tmp_path / "t.onnx")
    with pytest.raises(ValueError, match="cannot go into a bundle"):
        model.bundle_part("toy")


def test_export_asks_the_model_to_write_its_own_graph(tmp_path, monkeypatch):
    from deepfake_detector.export import export_onnx
    from deepfake_detector.models.scratch import Model

    model = create_model("seed-cnn", input_size=32)
    calls = []
    real = Model.export_onnx
    monkeypatch.setattr(Model, "export_onnx", lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
    path = export_onnx(model, tmp_path / "s.onnx")
    assert calls and path.exists() and load(path).kind == "onnx"
    part, data = load(path).bundle_part("cnn")
    assert part == {"name": "cnn", "kind": "onnx", "file": "cnn.onnx"} and data == path.read_bytes()


def test_one_registration_records_an_architecture_with_its_defaults():
    from deepfake_detector.models import list_models
    from deepfake_detector.models.registry import model_entry
    from deepfake_detector.models.torch.model import TorchArch, arch_spec

    for name in ("mobilenet-v2", "efficientnet-lite0", "vit-tiny"):
        e = model_entry(name)
        assert e.needs == "torch" and isinstance(e.spec, TorchArch) and arch_spec(name) is e.spec
        assert e.input_size == 224 and e.spec.heads and e.spec.mean
    assert model_entry("df-cnn").input_size == 128 and model_entry("df-cnn").needs is None
    assert arch_spec("df-cnn") == TorchArch()  # a name without torch defaults
    with pytest.raises(KeyError, match="known:"):
        model_entry("no-such-net")
    assert len(list_models()) == len(set(list_models()))


def test_models_says_which_architectures_need_the_torch_extra(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert main(["models"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "mobilenet-v2 (224 px, needs pip install 'deepfake-detector[torch]')" in line
    assert "df-cnn (128 px)" in line


def test_the_web_app_draws_from_the_result_without_decoding_again(tmp_path, monkeypatch):
    pytest.importorskip("cv2")
    import deepfake_detector.data.decode as decode
    from deepfake_detector.web.app import analyse_image

    model = create_model("seed-cnn", input_size=32)
    model.meta["framing"] = "as-is"  # scores whole images: no detector needed
    path = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)).save(path)
    decodes = []
    real = decode.load_image
    import deepfake_detector.data as data
    import deepfake_detector.predict as predict

    for module in (decode, data, predict):  # every name the image decoder goes by
        monkeypatch.setattr(module, "load_image", lambda *a, **k: decodes.append(a) or real(*a, **k))
    out = analyse_image(model, path)
    assert len(decodes) == 1  # the photo was decoded once, for the verdict and the drawing alike
    assert out["annotated"].shape == (40, 48, 3) and out["crop"].shape == (32, 32, 3)
    assert out["row"]["label"] in ("Real", "Fake") and out["heatmap"] is not None


def test_one_vocabulary_each_kinds_models_run_on_the_runtime_the_kind_names():
    """The registry's kind names are the models' ``kind``; a model's ``runtime`` is the one its
    kind is registered with, and one of the runtimes ``--runtime`` offers."""
    from deepfake_detector.models import RUNTIMES
    from deepfake_detector.models.clip.head import ClipHeadModel
    from deepfake_detector.models.fusion import FusedModel
    from deepfake_detector.models.onnx_model import OnnxModel
    from deepfake_detector.models.scratch import Model
    from deepfake_detector.models.torch.model import TorchModel

    classes = {cls.kind: cls for cls in (Model, TorchModel, ClipHeadModel, FusedModel, OnnxModel)}
    builtin = {name: k for name, k in KINDS.items() if name != "toy"}
    assert set(builtin) == set(classes)
    for name, k in builtin.items():
        assert classes[name].runtime == k.runtime and k.runtime in RUNTIMES, name
