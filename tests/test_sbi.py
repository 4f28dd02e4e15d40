"""Self-blended images: changes only inside the mask, valid outputs, seeded determinism."""

from __future__ import annotations

import numpy as np
import pytest

from deepfake_detector.data import load_image
from deepfake_detector.data.sbi import SBIConfig, ellipse_mask, maybe_sbi, self_blend


def _face(seed=0, size=96) -> np.ndarray:
    """A synthetic 'face': smooth gradients plus texture, so every transform shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([120 + 80 * xx, 90 + 60 * yy, 70 + 40 * xx * yy], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_pixels_outside_the_mask_are_exactly_unchanged(seed):
    face = _face(seed)
    out, mask = self_blend(face, np.random.default_rng(seed))
    outside = mask == 0
    assert outside.any() and (~outside).any()
    assert np.array_equal(out[outside], face[outside])
    changed = np.abs(out.astype(int) - face).max(axis=2) > 0
    assert changed[~outside].sum() > 0.05 * (~outside).sum()  # the blend did something inside
    assert not changed[outside].any()


def test_outputs_are_valid():
    face = _face(1, size=64)
    out, mask = self_blend(face, np.random.default_rng(1))
    assert out.dtype == np.uint8 and out.shape == face.shape and out.flags.c_contiguous
    assert mask.dtype == np.float32 and mask.shape == face.shape[:2]
    assert 0.0 <= mask.min() and mask.max() <= 1.0 and mask.max() >= 0.25  # the smallest blend ratio
    assert mask[32, 32] > 0 and mask[0, 0] == 0  # covers the centred face, not the corners


def test_seeded_rng_is_deterministic():
    face = _face(2)
    a = self_blend(face, np.random.default_rng(7))
    b = self_blend(face, np.random.default_rng(7))
    c = self_blend(face, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_given_mask_limits_the_blend():
    face = _face(3)
    region = np.zeros(face.shape[:2], bool)
    region[30:60, 20:50] = True
    out, mask = self_blend(face, np.random.default_rng(3), mask=region)
    ys, xs = np.nonzero(mask)
    assert 15 <= ys.min() and ys.max() <= 75 and 5 <= xs.min() and xs.max() <= 65  # near the region
    assert np.array_equal(out[mask == 0], face[mask == 0])
    with pytest.raises(ValueError):
        self_blend(face, np.random.default_rng(0), mask=np.ones((5, 5)))


def test_ellipse_mask_without_rng_is_the_plain_ellipse():
    m = ellipse_mask(100, 80)
    assert set(np.unique(m)) == {0.0, 1.0} and m[54, 40] == 1 and m[0, 0] == 0
    assert 0.3 < m.mean() < 0.65


def test_maybe_sbi_labels_and_probability():
    face = _face(4, size=48)
    rng = np.random.default_rng(0)
    labels = [maybe_sbi(face, rng, SBIConfig(probability=0.5))[1] for _ in range(200)]
    assert 60 < sum(labels) < 140
    img, label = maybe_sbi(face, rng, SBIConfig(probability=0.0))
    assert label == 0 and img is face
    img, label = maybe_sbi(face, rng, SBIConfig(probability=1.0))
    assert label == 1 and not np.array_equal(img, face)


def test_config_validation_and_from_dict():
    assert SBIConfig.from_dict({"scale": [0.9, 1.1], "probability": 0.3}).scale == (0.9, 1.1)
    with pytest.raises(ValueError):
        SBIConfig(probability=1.5)
    with pytest.raises(ValueError):
        SBIConfig(scale=(1.1, 0.9))
    with pytest.raises(TypeError):
        SBIConfig.from_dict({"nope": 1})


def test_on_real_face_crops(dfdc_faces):
    files = sorted((dfdc_faces / "Train" / "Real").glob("*.jpg"))[:4]
    for i, path in enumerate(files):
        face = load_image(path)
        out, mask = self_blend(face, np.random.default_rng(i))
        assert out.shape == face.shape and np.array_equal(out[mask == 0], face[mask == 0])
        assert 0.15 < (mask > 0).mean() < 0.9  # a face-sized region of a tight crop
