"""evaluate and predict as library functions and through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, roc_auc_score

from deepfake_detector.cli import main
from deepfake_detector.evaluate import evaluate, resolve_eval_dir
from deepfake_detector.models import create_model, save_model
from deepfake_detector.predict import predict_paths
from deepfake_detector.results import confidence_level

from .synthetic import MeanModel, make_dataset


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("eval"), n_per_class=(4, 4, 20))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    m = create_model("seed-cnn", input_size=32, seed=1)
    m.meta.update(threshold=0.5, version="test")
    path = tmp_path_factory.mktemp("ckpt") / "m.npz"
    save_model(m, path)
    return path


def test_evaluate_metrics_equal_sklearn_on_known_scores(synthetic, tmp_path):
    r = evaluate(MeanModel(), synthetic, report_dir=tmp_path / "report")  # a root: its Test split
    assert r["split"].endswith("Test") and r["n"] == 40
    paths = sorted((synthetic / "Test" / "Real").iterdir()) + sorted((synthetic / "Test" / "Fake").iterdir())
    y = np.array([0] * 20 + [1] * 20)
    p = np.array([np.asarray(Image.open(f).convert("RGB")).mean() / 255 for f in paths])  # 32 px: no resize
    assert r["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert r["average_precision"] == pytest.approx(average_precision_score(y, p))
    assert r["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.45))
    assert r["confusion_matrix"] == confusion_matrix(y, p >= 0.45).tolist()
    assert r["at_0.5"]["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert (tmp_path / "report" / "index.html").exists() and (tmp_path / "report" / "roc.png").exists()


def test_evaluate_skips_and_counts_a_corrupt_file(synthetic, tmp_path):
    split = tmp_path / "split"
    for label in ("Real", "Fake"):
        (split / label).mkdir(parents=True)
        for f in sorted((synthetic / "Validation" / label).iterdir()):
            (split / label / f.name).write_bytes(f.read_bytes())
    (split / "Fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    r = evaluate(MeanModel(), split)
    assert r["n"] == 8 and r["skipped"] == 1
    assert resolve_eval_dir(split)[0] == split


def test_predict_rows_errors_and_folders(synthetic, tmp_path, checkpoint):
    from deepfake_detector.models import load_model

    bad = tmp_path / "bad.png"
    bad.write_text("this is text")
    inputs = [synthetic / "Test" / "Real", str(bad), str(tmp_path / "missing.jpg")]
    rows = list(predict_paths(inputs, load_model(checkpoint), faces=False))  # synthetic images: no real face
    assert len(rows) == 20 + 2
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 20 and all(0 <= r["p_fake"] <= 1 and r["label"] in ("Real", "Fake") for r in good)
    assert {r["path"] for r in rows if r["error"]} == {str(bad), str(tmp_path / "missing.jpg")}


def test_confidence_levels():
    assert [confidence_level(p) for p in (0.95, 0.1, 0.7, 0.35, 0.5)] == ["HIGH", "HIGH", "MEDIUM", "MEDIUM", "LOW"]


def test_cli_predict_json_and_exit_status(synthetic, checkpoint, capsys, tmp_path):
    files = sorted((synthetic / "Test" / "Fake").iterdir())[:3]
    assert main(["predict", *map(str, files), "--model", str(checkpoint), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == list(map(str, files))
    assert set(rows[0]) >= {"path", "p_fake", "label", "confidence"}
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"")
    assert main(["predict", str(files[0]), str(bad), "--model", str(checkpoint), "--format", "csv"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("path,") and len(out) == 3


def test_cli_evaluate_json(synthetic, checkpoint, capsys):
    assert main(["evaluate", "--data", str(synthetic), "--model", str(checkpoint), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {"n", "accuracy", "roc_auc", "average_precision", "eer", "confusion_matrix"} <= set(r)
    assert r["n"] == 40
    assert main(["evaluate", "--data", str(synthetic / "Test"), "--data", str(synthetic / "Validation"),
                 "--model", str(checkpoint), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_predict_faces_no_face_and_every_face(checkpoint, tmp_path):
    from deepfake_detector.models import load_model

    from .test_video import face_frames

    frames, boxes = face_frames(1, two=True)
    Image.fromarray(frames[0]).save(tmp_path / "two.png")
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(tmp_path / "plain.png")
    model = load_model(checkpoint)
    two, plain = predict_paths([tmp_path / "two.png", tmp_path / "plain.png"], model, faces=True, all_faces=True)
    assert len(two["faces"]) == 2 and two["p_fake"] == max(f["score"] for f in two["faces"])
    x1, y1, x2, y2 = two["face"]  # the largest face comes first
    assert abs(x1 - boxes[0][0]) < 20 and abs(y2 - boxes[0][3]) < 30
    assert plain["label"] == "NoFace" and plain["p_fake"] is None and plain["error"] is None
    whole = next(predict_paths([tmp_path / "plain.png"], model, faces=True, whole_if_no_face=True))
    assert whole["label"] in ("Real", "Fake") and "whole image" in whole["message"]


def test_cli_gpu_without_cupy_is_a_clear_error(checkpoint, synthetic, capsys):
    pytest.importorskip("numpy")
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    img = sorted((synthetic / "Test" / "Real").iterdir())[0]
    assert main(["predict", str(img), "--model", str(checkpoint), "--device", "gpu"]) == 2
    assert "CuPy" in capsys.readouterr().err


def test_the_shipped_default_model_loads_and_predicts(dfdc_faces):
    from deepfake_detector.models import default_model_path, load

    path = default_model_path()
    if not path.exists():
        pytest.skip(f"no default model shipped at {path}")
    import json
    import zipfile

    with zipfile.ZipFile(path) as z:  # the fused default's manifest: tested once on every Test at release
        tested = {r["source"]: r["n"] for r in json.loads(z.read("bundle.json"))["meta"]["test_sources"]}
    assert tested["dfdc-faces"] == 3250 and tested["ffhq"] == 156
    model = load()  # without the CLIP encoder: its fast part alone, saying so
    assert model.kind == "fused" or "fetch-encoder" in model.meta["note"]
    real = sorted((dfdc_faces / "Test" / "Real").iterdir())[:8]
    fake = sorted((dfdc_faces / "Test" / "Fake").iterdir())[:8]
    rows = list(predict_paths(real + fake, model))
    assert all(r["error"] is None and 0 <= r["p_fake"] <= 1 for r in rows)
    p = np.array([r["p_fake"] for r in rows])
    assert p[8:].mean() > p[:8].mean()  # fakes score higher than reals on average


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror():
    model = create_model("df-cnn", input_size=32, widths=[4, 4, 8, 8, 8], depths=[1, 1, 1, 1, 1], seed=3)
    model.meta["temperature"] = 1.7
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    model.meta["tta"] = "flip"
    z = (model.logits(images) + model.logits(images[:, :, ::-1].copy())).astype(np.float64) / 2 / 1.7
    expected = np.exp(z[:, 1]) / np.exp(z).sum(1)
    # float32 logits carry ~1e-6 absolute error; P(fake) = sigmoid(z_f - z_r) inherits it as relative
    # error where P is small (dP/P = d(z_f - z_r) for P << 1), so compare to 1e-5 relative
    assert model.predict_proba(images) == pytest.approx(expected, rel=1e-5)
    assert model.describe()["tta"] == "flip"
    assert not np.allclose(model.decision_logits(images), model.logits(images), atol=1e-3)  # mirroring mattered
    symmetric = np.concatenate([images[:, :, :16], images[:, :, :16][:, :, ::-1]], axis=2)
    model.meta["tta"] = None
    alone = model.predict_proba(symmetric)
    model.meta["tta"] = "flip"
    assert model.predict_proba(symmetric) == pytest.approx(alone, rel=1e-5)  # its own mirror image
    model.meta["tta"] = "rotate"
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        model.predict_proba(images)
