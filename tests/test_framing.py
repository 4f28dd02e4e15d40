"""A model frames its own input: the default crops the largest face (as its training crops were
framed), and an image with no face gets NoFace, never a confident verdict; ``--whole-image``
(``faces=False``) scores the whole image anyway; a model file may declare ``"as-is"``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from deepfake_detector.cli import main
from deepfake_detector.models import create_model, load, save_model
from deepfake_detector.predict import predict_paths

NOISE_SEED = 0


@pytest.fixture(scope="module")
def faceless(tmp_path_factory):
    """The two nonsense inputs of issue 20: a 1 x 1 black pixel and a 512-px noise image."""
    folder = tmp_path_factory.mktemp("faceless")
    cv2.imwrite(str(folder / "pixel.png"), np.zeros((1, 1, 3), np.uint8))
    noise = np.random.default_rng(NOISE_SEED).integers(0, 256, (512, 512, 3), np.uint8)
    cv2.imwrite(str(folder / "noise.png"), noise)
    return folder


@pytest.fixture(scope="module")
def fast_default():
    return load(fast=True)


def test_the_default_model_frames_faces(fast_default):
    assert load(fast=True).framing == "face" and fast_default.face_margin >= 0


def test_a_pixel_and_noise_get_noface_from_the_default(faceless, fast_default):
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in predict_paths([faceless], fast_default)}
    assert set(rows) == {"pixel.png", "noise.png"}
    for r in rows.values():
        assert r["label"] == "NoFace" and r["p_fake"] is None and r["error"] is None, r
        assert r["message"] == "no face found"


def test_the_cli_default_is_the_models_framing_and_whole_image_scores_anyway(faceless, capsys):
    assert main(["predict", "--fast", "--format", "json", str(faceless)]) == 0
    assert {r["label"] for r in json.loads(capsys.readouterr().out)} == {"NoFace"}
    assert main(["predict", "--fast", "--format", "json", "--whole-image", str(faceless)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["label"] in ("Real", "Fake") and 0 <= r["p_fake"] <= 1 for r in rows)
    with pytest.raises(SystemExit):  # one or the other
        main(["predict", "--fast", "--faces", "--whole-image", str(faceless)])


def test_a_model_file_that_declares_whole_images_scores_them(faceless, tmp_path):
    path = tmp_path / "whole.npz"
    save_model(create_model("seed-cnn", input_size=32), path, extra_meta={"framing": "as-is"})
    model = load(path)
    assert model.framing == "as-is"
    rows = list(predict_paths([faceless], model))
    assert all(r["label"] in ("Real", "Fake") for r in rows)
    assert all(r["label"] == "NoFace" for r in predict_paths([faceless], model, faces=True))


def test_the_api_answers_noface_for_noise_unless_asked_for_the_whole_image(faceless):
    pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'deepfake-detector[web]'")
    requests = pytest.importorskip("requests", reason="the tests need requests")
    from deepfake_detector.web.api import create_api

    from .web_server import BackgroundServer

    with BackgroundServer(create_api(load(fast=True))) as srv:
        data = (faceless / "noise.png").read_bytes()
        r = requests.post(srv.url + "/api/predict", files={"file": ("noise.png", data)}, timeout=60)
        assert r.status_code == 200 and r.json()["label"] == "NoFace", r.text
        r = requests.post(srv.url + "/api/predict", files={"file": ("noise.png", data)}, data={"faces": "false"},
                          timeout=60)
        assert r.status_code == 200 and r.json()["label"] in ("Real", "Fake"), r.text


def test_options_carry_their_own_input_limits(tmp_path):
    """PredictOptions.limits hold for that call alone; the environment's stand for the others."""
    from deepfake_detector.data.limits import Limits
    from deepfake_detector.models import create_model
    from deepfake_detector.predict import PredictOptions, predict_paths

    model = create_model("seed-cnn", input_size=32)
    model.meta["framing"] = "as-is"
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), np.zeros((64, 64, 3), np.uint8))
    (strict,) = predict_paths([path], model, PredictOptions(limits=Limits(max_pixels=1000)))
    (plain,) = predict_paths([path], model)
    assert strict.label == "Error" and "pixels" in strict.error
    assert plain.label in ("Real", "Fake")
