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
    engine = "toy"

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
    assert r["n"] == 12 and r["model"]["engine"] == "toy" and 0.0 <= r["roc_auc"] <= 1.0


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
        assert requests.get(f"{srv.url}/api/health", timeout=60).json()["model"]["engine"] == "toy"


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
