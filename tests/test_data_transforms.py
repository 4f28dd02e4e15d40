"""Decoding (deepfake_detector.data.decode) and augmentation (deepfake_detector.data.transforms)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from deepfake_detector.data import (
    AugmentConfig,
    ImageDecodeError,
    augment,
    decode_bytes,
    eval_transform,
    load_image,
)
from deepfake_detector.data.decode import resize
from deepfake_detector.data.transforms import color_jitter, jpeg_roundtrip, random_resized_crop_box

RED = (255, 0, 0)


def noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def jpeg_bytes(arr, orientation=None, quality=95):
    buf = io.BytesIO()
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    Image.fromarray(arr).save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


# --- decoding --------------------------------------------------------------------------------
def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    g = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.shape == (12, 20, 3) and img.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(img[:, :, c], g)


def test_16bit_grayscale_png_keeps_the_top_byte(tmp_path):
    v = np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    img = load_image(tmp_path / "g16.png")
    assert img.dtype == np.uint8 and img.shape == (1, 4, 3)
    np.testing.assert_allclose(img[0, :, 0], np.round(v[0] / 257), atol=1)


def test_rgba_png_is_composited_on_black(tmp_path):
    a = np.zeros((2, 3, 4), np.uint8)
    a[0, 0] = (200, 100, 50, 255)  # opaque: unchanged
    a[0, 1] = (200, 100, 50, 0)  # transparent: black
    a[0, 2] = (200, 100, 50, 128)  # half: about half
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.shape == (2, 3, 3)
    np.testing.assert_array_equal(img[0, 0], (200, 100, 50))
    np.testing.assert_array_equal(img[0, 1], (0, 0, 0))
    np.testing.assert_allclose(img[0, 2], (100, 50, 25), atol=1)


def test_palette_png_with_transparency(tmp_path):
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    img = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(img[0, 0], (0, 0, 0))
    np.testing.assert_array_equal(img[3, 3], (10, 200, 30))


# (EXIF orientation, how the stored pixels must be turned to stand upright)
ORIENTATIONS = [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
                (8, lambda a: np.rot90(a, 1))]


@pytest.mark.parametrize("orientation,upright", ORIENTATIONS)
@pytest.mark.parametrize("path", ["opencv", "pillow"])
def test_exif_orientation_is_applied(orientation, upright, path):
    stored = np.zeros((24, 40, 3), np.uint8)  # 40 wide, 24 high
    stored[:8, :8] = RED  # a red block in the stored top-left corner
    data = jpeg_bytes(stored, orientation)
    if path == "pillow":
        data += b"trailing bytes"  # no end-of-image marker at the end: the Pillow path
    img = decode_bytes(data)
    expected = upright(stored)
    assert img.shape == expected.shape
    assert np.abs(img.astype(int) - expected).mean() < 6  # JPEG is lossy at the block's edges
    red, want = img[:, :, 0] > 128, expected[:, :, 0] > 128
    assert (red == want).mean() > 0.98
    if orientation == 6:  # turned clockwise: the block ends up top-right
        assert img[2, -3, 0] > 200 and img[2, 2, 0] < 50


def test_large_jpeg_with_size_hint_decodes_reduced_but_same_picture():
    big = np.kron(noise(25, 30, 1), np.ones((40, 40, 1), np.uint8))  # 1000 x 1200 of 40-px blocks
    data = jpeg_bytes(big)
    full, small = decode_bytes(data), decode_bytes(data, size_hint=128)
    assert full.shape == (1000, 1200, 3)
    assert 128 <= min(small.shape[:2]) < 1000
    diff = np.abs(resize(full, 128).astype(int) - resize(small, 128).astype(int))
    assert diff.mean() < 4


def test_decode_bytes_equals_load_image(tmp_path):
    data = jpeg_bytes(noise(30, 50))
    (tmp_path / "x.jpg").write_bytes(data)
    np.testing.assert_array_equal(load_image(tmp_path / "x.jpg"), decode_bytes(data))


@pytest.mark.parametrize("content", ["truncated", "text", "empty", "missing", "garbage-jpeg-header"])
def test_unreadable_files_raise_image_decode_error_naming_the_file(tmp_path, content):
    path = tmp_path / f"bad_{content}.jpg"
    if content == "truncated":
        path.write_bytes(jpeg_bytes(noise(64, 64))[:1500])
    elif content == "text":
        path.write_text("this is not an image\n")
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "garbage-jpeg-header":
        path.write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4 + b"\xff\xd9")
    with pytest.raises(ImageDecodeError) as e:
        load_image(path)
    assert isinstance(e.value, ValueError)
    assert path.name in str(e.value)


def test_resize_shapes_and_antialiasing():
    stripes = np.zeros((224, 224, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-pixel stripes: a shrink without area averaging aliases badly
    out = resize(stripes, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert abs(out.mean() - 127.5) < 3 and out.std() < 20
    assert resize(noise(30, 90), 64).shape == (64, 64, 3)  # non-square: stretched to square
    up = resize(np.full((10, 20, 3), 77, np.uint8), 50)
    assert up.shape == (50, 50, 3) and (up == 77).all()


# --- augmentation ----------------------------------------------------------------------------
def test_augment_shape_dtype_and_determinism():
    img = noise(150, 120)
    for seed in range(10):
        out = augment(img, 64, np.random.default_rng(seed), AugmentConfig())
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
        again = augment(img, 64, np.random.default_rng(seed), AugmentConfig())
        np.testing.assert_array_equal(out, again)
    outs = [augment(img, 64, np.random.default_rng(s), AugmentConfig()) for s in range(6)]
    assert len({o.tobytes() for o in outs}) > 1


def test_everything_off_equals_eval_transform():
    img = noise(100, 80)
    for seed in range(5):
        np.testing.assert_array_equal(augment(img, 48, np.random.default_rng(seed), AugmentConfig.none()),
                                      eval_transform(img, 48))


def test_flip_with_p1_is_fliplr():
    img = noise(70, 70)
    cfg = AugmentConfig(flip_p=1.0, crop_p=0.0, jitter_p=0.0, blur_p=0.0, jpeg_p=0.0)
    out = augment(img, 32, np.random.default_rng(0), cfg)
    np.testing.assert_array_equal(out, np.fliplr(eval_transform(img, 32)))


def test_blur_and_jpeg_change_the_image_moderately():
    img = noise(64, 64)
    off = AugmentConfig.none()
    blur = augment(img, 64, np.random.default_rng(0), replace(off, blur_p=1.0, blur_sigma=(1.5, 2.0)))
    assert blur.std() < img.std() * 0.5  # noise is mostly high frequency
    smooth = resize(noise(8, 8), 64)  # bilinear upsampling: a smooth picture
    err = {q: np.abs(jpeg_roundtrip(smooth, q).astype(int) - smooth).mean() for q in (60, 95)}
    assert 0 < err[95] < err[60] < 8


def test_random_resized_crop_box_stays_inside_and_in_range():
    rng = np.random.default_rng(0)
    for h, w in [(100, 100), (148, 148), (60, 200)]:
        for _ in range(200):
            y, x, ch, cw = random_resized_crop_box(h, w, rng, (0.6, 1.0), (3 / 4, 4 / 3))
            assert 0 <= y and 0 <= x and y + ch <= h and x + cw <= w and ch > 0 and cw > 0
            if (h, w) != (60, 200):  # the fallback box may be smaller on extreme aspects
                assert 0.55 <= ch * cw / (h * w) <= 1.0


def test_hue_jitter_leaves_grey_alone_and_brightness_scales():
    grey = np.full((8, 8, 3), 100, np.uint8)
    out = color_jitter(grey, np.random.default_rng(1), brightness=0, contrast=0, saturation=0, hue=0.5)
    np.testing.assert_array_equal(out, grey)
    bright = color_jitter(grey, np.random.default_rng(2), brightness=0.5, contrast=0, saturation=0, hue=0)
    f = np.random.default_rng(2).uniform(0.5, 1.5)
    np.testing.assert_allclose(bright, np.round(100 * f), atol=1)


def test_augment_config_validation():
    with pytest.raises(ValueError):
        AugmentConfig(flip_p=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(jpeg_quality=(90, 60))
    with pytest.raises(TypeError):
        AugmentConfig.from_dict({"no_such_option": 1})
    assert AugmentConfig.from_dict({"crop_scale": [0.5, 0.9]}).crop_scale == (0.5, 0.9)


def test_rescale_keeps_the_size_and_removes_fine_detail():
    import cv2

    from deepfake_detector.data.transforms import rescale

    img = np.random.default_rng(0).integers(0, 256, (64, 48, 3), np.uint8)
    assert np.array_equal(rescale(img, 1.0), img)  # same size down and up: nothing changes
    small = rescale(img, 0.25)
    assert small.shape == img.shape and small.dtype == np.uint8
    detail = lambda a: cv2.Laplacian(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()  # noqa: E731
    assert detail(small) < 0.2 * detail(img)


def test_rescale_is_off_by_default_and_draws_nothing_then():
    img = np.random.default_rng(1).integers(0, 256, (80, 80, 3), np.uint8)
    a = augment(img, 64, np.random.default_rng(3), AugmentConfig())
    b = augment(img, 64, np.random.default_rng(3), AugmentConfig(rescale_p=0.0))
    assert AugmentConfig().rescale_p == 0.0 and np.array_equal(a, b)
    only_rescale = AugmentConfig(flip_p=0, crop_p=0, jitter_p=0, blur_p=0, jpeg_p=0, rescale_p=1.0,
                                 rescale_range=(0.3, 0.3))
    c = augment(img, 64, np.random.default_rng(3), only_rescale)
    assert c.shape == (64, 64, 3) and not np.array_equal(c, augment(img, 64, np.random.default_rng(3),
                                                                     AugmentConfig.none()))
