"""Heatmaps: Grad-CAM and saliency where the answer is known, occlusion on a gradient-free stub."""

from __future__ import annotations

import numpy as np
import pytest

from deepfake_detector import nn
from deepfake_detector.explain import explain, gradcam, occlusion, overlay
from deepfake_detector.models import Model, Predictor, Preprocess, create_model

S = 32


def left_half_model(seed: int = 0) -> Model:
    """Conv3x3 -> ReLU -> MaxPool -> Flatten -> Dense whose Fake logit reads only the left
    half of the feature map (and the Real logit nothing): the evidence is on the left."""
    rng = np.random.default_rng(seed)
    conv = nn.Conv2D(3, 4, 3, padding=1, rng=rng)
    conv.params["weight"] = np.abs(conv.params["weight"])  # positive features of positive pixels
    dense = nn.Dense(4 * (S // 2) * (S // 2), 2, rng=rng)
    w = np.zeros((2, 4, S // 2, S // 2), np.float32)
    w[1, :, :, : S // 4] = rng.uniform(0.5, 1.0, (4, S // 2, S // 4))  # Fake row: left columns only
    dense.params["weight"] = w.reshape(2, -1)
    dense.params["bias"] = np.zeros(2, np.float32)
    net = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2D(2), nn.Flatten(), dense)
    return Model(net, "left-half", {}, Preprocess(S))


def noise(size=S, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def left_share(heat: np.ndarray) -> float:
    return float(heat[:, : heat.shape[1] // 2].sum() / max(heat.sum(), 1e-12))


class RegionStub(Predictor):
    """No network, no gradients: P(fake) is the brightness of one square region."""

    input_size = S
    threshold = 0.5

    def __init__(self, y0=4, x0=20, side=8):
        self.region = (slice(y0, y0 + side), slice(x0, x0 + side))
        self.calls = 0

    def predict_proba(self, images, batch_size=64):
        self.calls += 1
        images = np.asarray(images)
        return images[:, self.region[0], self.region[1]].mean(axis=(1, 2, 3)) / 255.0


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_gradient_methods_find_the_left_half(method):
    heat = explain(left_half_model(), noise(), method=method)
    assert heat.shape == (S, S) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    assert left_share(heat) > 0.9, left_share(heat)


def test_gradcam_resizes_to_the_crop_size():
    heat = gradcam(left_half_model(), noise(size=48))  # model runs at 32, map comes back at 48
    assert heat.shape == (48, 48)
    assert left_share(heat) > 0.9


def test_occlusion_peaks_on_the_region_that_drives_p_fake():
    stub = RegionStub()
    crop = np.full((S, S, 3), 255, np.uint8)
    heat = explain(stub, crop)  # auto: no net -> occlusion
    assert heat.shape == (S, S) and 0.0 <= heat.min() and heat.max() == pytest.approx(1.0)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 4 <= y < 12 and 20 <= x < 28
    inside = heat[stub.region].mean()
    outside = (heat.sum() - heat[stub.region].sum()) / (heat.size - 64)
    assert inside > 3 * outside
    assert stub.calls <= 1 + -(-121 // 32)  # baseline + batched patches


def test_occlusion_parameters_and_batches():
    stub = RegionStub()
    crop = np.full((S, S, 3), 255, np.uint8)
    heat = occlusion(stub, crop, patch=8, stride=8, batch_size=5)  # 4 x 4 positions -> 1 + 4 calls
    assert stub.calls == 5
    assert heat[stub.region].min() == pytest.approx(1.0)  # the patch that covers it exactly
    assert heat[:, :16].max() == 0.0


def test_gradient_methods_refused_without_gradients():
    with pytest.raises(ValueError, match="occlusion"):
        explain(RegionStub(), noise(), method="gradcam")
    with pytest.raises(ValueError, match="unknown method"):
        explain(RegionStub(), noise(), method="lime")
    with pytest.raises(ValueError, match="square"):
        explain(RegionStub(), np.zeros((10, 12, 3), np.uint8))


@pytest.mark.parametrize("method", ["auto", "gradcam", "saliency", "occlusion"])
def test_real_architecture_shapes_ranges_and_no_side_effects(method):
    model = create_model("seed-cnn", input_size=64)
    crop = noise(size=64, seed=3)
    before = model.predict_proba(crop[None])
    grads_before = {k: v.copy() for k, v in model.grads().items()}
    with nn.no_grad():  # must work inside a no_grad block as well
        heat = explain(model, crop, method=method)
    assert heat.shape == (64, 64) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    assert model.predict_proba(crop[None]) == pytest.approx(before)
    after = model.grads()
    assert after.keys() == grads_before.keys()
    for k, v in grads_before.items():
        np.testing.assert_array_equal(after[k], v)
    assert nn.layers.grad_enabled()  # the flag is restored


def test_df_cnn_gradcam():
    model = create_model("df-cnn", input_size=32, widths=(4, 8), depths=(1, 1))
    heat = explain(model, noise(), method="auto")
    assert heat.shape == (S, S) and 0.0 <= heat.min() <= heat.max() <= 1.0


def test_overlay():
    img = np.zeros((40, 60, 3), np.uint8)
    heat = np.zeros((10, 10), np.float32)
    heat[:, 5:] = 1.0
    out = overlay(img, heat, alpha=0.5)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert out[20, 55, 0] > out[20, 5, 0]  # hot = red on the right
    assert out[20, 5, 2] > out[20, 55, 2]  # cold = blue on the left
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.0), img)
    with pytest.raises(ValueError):
        overlay(img, heat, alpha=2)
