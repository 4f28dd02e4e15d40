"""Training augmentation and the evaluation transform: uint8 (H, W, 3) RGB in, uint8 out.

Order (as in CNNDetection, Wang et al. 2020): blur and JPEG re-compression on the image
as loaded, so the artefacts they add go through the same resize a real upload would; then
random resized crop / resize to the model's size, horizontal flip, colour jitter. Every
random draw comes from the ``rng`` passed in, so a seeded generator reproduces the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import cv2
import numpy as np

from .decode import resize

__all__ = ["AugmentConfig", "augment", "color_jitter", "eval_transform", "jpeg_roundtrip",
           "random_resized_crop_box"]


@dataclass(frozen=True)
class AugmentConfig:
    """One probability per augmentation, and its ranges. ``AugmentConfig.none()``: all off."""

    flip_p: float = 0.5  # faces are near-symmetric; manipulation artefacts are not side-specific
    crop_p: float = 0.5  # face detectors frame faces differently; teaches framing invariance
    crop_scale: tuple[float, float] = (0.6, 1.0)  # area kept; >= 0.6 keeps the face-boundary blend
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect of the crop before the square resize
    jitter_p: float = 0.5  # cameras, codecs and lighting shift colours; fakes are not "the warm ones"
    brightness: float = 0.2  # factor drawn in [1 - b, 1 + b]
    contrast: float = 0.2  # factor in [1 - c, 1 + c] around the mean grey
    saturation: float = 0.2  # factor in [1 - s, 1 + s] towards/away from grey
    hue: float = 0.02  # shift in [-h, h] of the hue circle; small: skin tone stays plausible
    blur_p: float = 0.1  # CNNDetection: blur + JPEG make detectors robust to re-uploads
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # Gaussian sigma in pixels of the loaded image
    jpeg_p: float = 0.2  # CNNDetection's recipe; social media re-compresses everything
    jpeg_quality: tuple[int, int] = (60, 100)  # inclusive; below ~60 the faces themselves degrade
    rescale_p: float = 0.0  # down- then up-scale: every source's resolution, so size is no shortcut
    rescale_range: tuple[float, float] = (0.4, 1.0)  # side factor of the down-scaled copy

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_p") and not 0 <= v <= 1:
                raise ValueError(f"{f.name} must be a probability in [0, 1], got {v}")
            if isinstance(v, tuple) and not (len(v) == 2 and v[0] <= v[1]):
                raise ValueError(f"{f.name} must be a (low, high) pair, got {v}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1 or self.crop_ratio[0] <= 0:
            raise ValueError(f"bad crop_scale {self.crop_scale} or crop_ratio {self.crop_ratio}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every augmentation off: :func:`augment` then equals :func:`eval_transform`."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name.endswith("_p")})

    @classmethod
    def from_dict(cls, d: dict) -> AugmentConfig:
        """From a config mapping (lists become tuples); unknown keys raise TypeError."""
        return replace(cls(), **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def margin(self) -> float:
        """How much larger than the model input a cached copy should be (crop headroom)."""
        return 1.15 if self.crop_p > 0 else 1.0


def eval_transform(img: np.ndarray, size: int) -> np.ndarray:
    """Evaluation / prediction: (H, W, 3) uint8 -> (size, size, 3) uint8, a plain resize."""
    return resize(img, size)


def augment(img: np.ndarray, size: int, rng: np.random.Generator,
            cfg: AugmentConfig | None = None) -> np.ndarray:
    """Randomly augment one training image.

    Parameters
    ----------
    img : uint8 (H, W, 3) RGB
    size : side of the output square
    rng : the only source of randomness
    cfg : defaults to ``AugmentConfig()``

    Returns
    -------
    uint8 (size, size, 3), C-contiguous.
    """
    cfg = cfg or AugmentConfig()
    if cfg.rescale_p and rng.random() < cfg.rescale_p:
        img = rescale(img, float(rng.uniform(*cfg.rescale_range)), up_linear=bool(rng.random() < 0.5))
    if cfg.blur_p and rng.random() < cfg.blur_p:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=float(rng.uniform(*cfg.blur_sigma)))
    if cfg.jpeg_p and rng.random() < cfg.jpeg_p:
        img = jpeg_roundtrip(img, int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
    if cfg.crop_p and rng.random() < cfg.crop_p:
        y, x, h, w = random_resized_crop_box(img.shape[0], img.shape[1], rng, cfg.crop_scale, cfg.crop_ratio)
        img = img[y:y + h, x:x + w]
    img = resize(img, size)
    if cfg.flip_p and rng.random() < cfg.flip_p:
        img = cv2.flip(img, 1)
    if cfg.jitter_p and rng.random() < cfg.jitter_p:
        img = color_jitter(img, rng, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    return np.ascontiguousarray(img)


def random_resized_crop_box(h: int, w: int, rng: np.random.Generator, scale=(0.6, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box: (top, left, height, width) inside an h x w image.

    Area fraction uniform in ``scale``, aspect (w / h) log-uniform in ``ratio``; after 10
    misses, the largest centred box with the aspect clamped to ``ratio``.
    """
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(*log_r))
        cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    r = w / h
    if r < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif r > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def rescale(img: np.ndarray, factor: float, up_linear: bool = True) -> np.ndarray:
    """Down-scale (H, W, 3) by ``factor`` (area) and back up to (H, W) (linear or cubic)."""
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(4, round(w * factor)), max(4, round(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR if up_linear else cv2.INTER_CUBIC)


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode (H, W, 3) RGB uint8 as a JPEG of ``quality`` (1-100) and decode it again."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def color_jitter(img: np.ndarray, rng: np.random.Generator, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.2, hue: float = 0.02) -> np.ndarray:
    """Brightness, contrast, saturation then hue, each factor drawn from ``rng``; uint8 saturating."""
    out = img
    if brightness:
        out = cv2.convertScaleAbs(out, alpha=float(rng.uniform(1 - brightness, 1 + brightness)))
    if contrast:
        c = float(rng.uniform(1 - contrast, 1 + contrast))
        mean = float(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).mean())
        out = cv2.addWeighted(out, c, out, 0.0, (1 - c) * mean)
    if saturation:
        s = float(rng.uniform(1 - saturation, 1 + saturation))
        grey = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        out = cv2.addWeighted(out, s, grey, 1 - s, 0.0)
    if hue:
        shift = round(float(rng.uniform(-hue, hue)) * 180)  # OpenCV's 8-bit hue runs 0..179
        if shift:
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int16) + shift) % 180
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out
