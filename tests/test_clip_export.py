"""Exporting Hugging Face CLIP weights to the encoder file, on a tiny random model saved
locally (no network): float32 and int8 exports against the torch model, and the CLI path."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exporting CLIP weights needs torch")
transformers = pytest.importorskip("transformers", reason="exporting CLIP weights needs transformers "
                                                          "(pip install 'deepfake-detector[clip-export]')")
pytest.importorskip("onnx", reason="torch.onnx.export needs onnx")

from deepfake_detector.models.clip.encoder import (  # noqa: E402
    CLIP_MEAN,
    CLIP_STD,
    EMBED_DIM,
    INPUT_NAME,
    INPUT_SIZE,
    OUTPUT_NAME,
    ClipEncoder,
)
from deepfake_detector.models.clip.export import export_hf_clip  # noqa: E402


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP vision tower with a 512-d projection, saved with save_pretrained."""
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=37, image_size=INPUT_SIZE, patch_size=32,
                                        projection_dim=EMBED_DIM)
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    folder = tmp_path_factory.mktemp("tiny-clip")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    mean = np.asarray(CLIP_MEAN, np.float32)[:, None, None]
    std = np.asarray(CLIP_STD, np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


def _reference(model, x):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(x)).image_embeds.numpy()


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_float32_export_matches_torch(tiny_clip, images, tmp_path):
    folder, model = tiny_clip
    out = export_hf_clip(folder, tmp_path / "sub" / "clip.fp32.onnx", quantize=False)
    assert out.is_file() and not list(out.parent.glob(".*part"))
    enc = ClipEncoder(out)
    assert [i.name for i in enc.session.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in enc.session.get_outputs()] == [OUTPUT_NAME]
    got = enc.embed(images)
    assert got.shape == (2, EMBED_DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(model, images), atol=1e-4, rtol=1e-4)
    # the batch axis is dynamic: a batch of 2 in one session call gives the same
    both = enc.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    np.testing.assert_allclose(both, got, atol=1e-4, rtol=1e-4)


def test_int8_export_close_to_torch(tiny_clip, images, tmp_path):
    folder, model = tiny_clip
    out = export_hf_clip(folder, tmp_path / "clip.int8.onnx")  # quantize=True is the default
    fp32 = export_hf_clip(folder, tmp_path / "clip.fp32.onnx", quantize=False)
    assert out.stat().st_size < fp32.stat().st_size
    got = ClipEncoder(out).embed(images)
    assert got.shape == (2, EMBED_DIM)
    assert (_cosine(got, _reference(model, images)) > 0.9).all()


def test_cli_from_hf(tiny_clip, tmp_path, capsys):
    from deepfake_detector.cli import main

    folder, _ = tiny_clip
    out = tmp_path / "cli" / "clip.onnx"
    assert main(["fetch-encoder", "--from-hf", str(folder), "--dest", str(out), "--no-quantize"]) == 0
    assert out.is_file() and out.stat().st_size > 0
    assert str(out) in capsys.readouterr().out


def test_rejects_wrong_projection(tmp_path):
    cfg = transformers.CLIPVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=37, image_size=INPUT_SIZE, patch_size=32,
                                        projection_dim=64)
    transformers.CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="projection_dim 64"):
        export_hf_clip(tmp_path / "m", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
