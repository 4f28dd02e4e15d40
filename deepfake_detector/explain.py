"""Where the model looks: heatmaps over a face crop, and a coloured overlay to show them.

``gradcam`` (Grad-CAM, HiResCAM form, on the last convolution block), ``saliency`` (the
input gradient of the log-odds of Fake) and ``occlusion`` (the drop of P(fake) under a
sliding grey patch: needs only ``predict_proba``). ``auto`` picks the first the model's
``abilities`` allow. Maps are float32 (S, S) in [0, 1], 1 = the strongest evidence for Fake.
Not thread-safe for one model: serialise calls (the web app holds a lock).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["METHODS", "explain", "gradcam", "occlusion", "overlay", "saliency"]

METHODS = ("auto", "gradcam", "saliency", "occlusion")
GREY = 128  # the occluding patch, in uint8 pixel values


def explain(model, face_crop: np.ndarray, method: str = "auto", **options) -> np.ndarray:
    """Heatmap of the evidence for Fake over ``face_crop`` (uint8 (S, S, 3) RGB).

    ``method``: one of :data:`METHODS`; ``options`` go to the method (occlusion: ``patch``,
    ``stride``, ``batch_size``). A crop of another size than ``model.input_size`` is resized
    for the model and the map resized back. Returns float32 (S, S) in [0, 1].
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    crop = _check_crop(face_crop)
    can = model.abilities
    if method == "auto":
        method = "gradcam" if can.conv_maps else "saliency" if can.input_gradients else "occlusion"
    if method == "gradcam" and not can.conv_maps or method == "saliency" and not can.input_gradients:
        raise ValueError(f"{method} needs a model with gradients (a from-scratch network); "
                         f"this {model.kind} model has none: use method='occlusion'")
    fn = {"gradcam": gradcam, "saliency": saliency, "occlusion": occlusion}[method]
    return fn(model, crop, **options)


def gradcam(model, face_crop: np.ndarray) -> np.ndarray:
    """Grad-CAM on the last convolution block's output; float32 (S, S) in [0, 1].

    The gradient multiplies the activations element-wise (HiResCAM) instead of being averaged
    to one weight per channel: behind a Flatten + Dense head the averaged form lights up
    regions the classifier ignores; behind global average pooling the two are the same."""
    crop = _check_crop(face_crop)
    acts, g = model.conv_maps(model.normalize(_at_model_size(model, crop)[None]))  # (C, h, w) each
    cam = np.maximum((g * acts).sum(axis=0), 0.0)  # (h, w)
    return _finish(cam, crop.shape[0])


def saliency(model, face_crop: np.ndarray, blur: float = 1.0) -> np.ndarray:
    """Input-gradient saliency ``max_c |d log-odds / d x_c|``; float32 (S, S) in [0, 1]."""
    crop = _check_crop(face_crop)
    grad = model.input_gradient(model.normalize(_at_model_size(model, crop)[None]))
    sal = np.abs(_np(grad)[0]).max(axis=0)  # (S, S)
    if blur > 0:
        sal = cv2.GaussianBlur(sal.astype(np.float32), (0, 0), blur)
    return _finish(sal, crop.shape[0], robust=True)


def occlusion(model, face_crop: np.ndarray, patch: int | None = None, stride: int | None = None,
              batch_size: int = 32) -> np.ndarray:
    """Occlusion sensitivity: the drop of P(fake) when a grey ``patch`` x ``patch`` square
    hides each region (positions every ``stride`` pixels, evaluated ``batch_size`` at a time).

    Defaults: ``patch`` = S/6 rounded up, ``stride`` = half the patch (about 11 x 11 = 121
    forward passes). Only increases of the evidence for Real count (drops of P(fake)).
    """
    crop = _at_model_size(model, _check_crop(face_crop))
    S = crop.shape[0]
    patch = int(patch or max(2, -(-S // 6)))
    stride = int(stride or max(1, patch // 2))
    if not 1 <= patch <= S or stride < 1:
        raise ValueError(f"need 1 <= patch <= {S} and stride >= 1, got patch={patch} stride={stride}")
    starts = list(range(0, S - patch + 1, stride))
    if starts[-1] != S - patch:
        starts.append(S - patch)  # cover the last rows and columns too
    positions = [(y, x) for y in starts for x in starts]
    base = float(np.asarray(model.predict_proba(crop[None])).reshape(-1)[0])
    drops = np.empty(len(positions), np.float64)
    for i in range(0, len(positions), batch_size):
        chunk = positions[i : i + batch_size]
        batch = np.repeat(crop[None], len(chunk), axis=0)
        for j, (y, x) in enumerate(chunk):
            batch[j, y : y + patch, x : x + patch] = GREY
        drops[i : i + len(chunk)] = base - np.asarray(model.predict_proba(batch), np.float64).reshape(-1)
    heat = np.zeros((S, S), np.float64)
    count = np.zeros((S, S), np.float64)
    for (y, x), d in zip(positions, drops):
        heat[y : y + patch, x : x + patch] += d
        count[y : y + patch, x : x + patch] += 1
    heat = np.maximum(heat / np.maximum(count, 1), 0.0)
    return _finish(heat, face_crop.shape[0])


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45,
            colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """``image`` (uint8 (H, W, 3) RGB) blended with ``heatmap`` ([0, 1], any size: resized to
    the image) through an OpenCV colormap (JET: blue = none, red = strong). uint8 RGB out."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = image.shape[:2]
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, np.float32)), 0.0, 1.0)
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    colored = cv2.cvtColor(cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), colormap),
                           cv2.COLOR_BGR2RGB)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * colored.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --- internals ---------------------------------------------------------------------------
def _check_crop(face_crop) -> np.ndarray:
    crop = np.asarray(face_crop)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1] or crop.shape[0] < 2:
        raise ValueError(f"face_crop must be a square (S, S, 3) RGB image, got shape {crop.shape}")
    if crop.dtype != np.uint8:
        raise ValueError(f"face_crop must be uint8, got {crop.dtype}")
    return np.ascontiguousarray(crop)


def _at_model_size(model, crop: np.ndarray) -> np.ndarray:
    S = int(model.input_size)
    if crop.shape[0] == S:
        return crop
    from .data import resize

    return np.ascontiguousarray(resize(crop, S))


def _np(a) -> np.ndarray:
    from .nn import to_numpy

    return np.asarray(to_numpy(a), dtype=np.float32)


def _finish(heat: np.ndarray, size: int, robust: bool = False) -> np.ndarray:
    """Resize to (size, size) and scale to [0, 1] by the maximum (the 99.5th percentile with
    ``robust``, so a few extreme gradients do not wash the rest out)."""
    heat = np.nan_to_num(np.asarray(heat, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if heat.shape != (size, size):
        interp = cv2.INTER_LINEAR if heat.shape[0] < size else cv2.INTER_AREA
        heat = cv2.resize(heat, (size, size), interpolation=interp)
    heat = np.maximum(heat, 0.0)
    top = float(heat.max(initial=0.0))
    if robust:
        top = float(np.percentile(heat, 99.5)) or top
    if top <= 1e-12:
        return np.zeros((size, size), np.float32)
    return np.clip(heat / top, 0.0, 1.0).astype(np.float32)
