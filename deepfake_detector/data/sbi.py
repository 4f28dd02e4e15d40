"""Self-Blended Images (Shiohara & Yamasaki, CVPR 2022): pseudo-fakes made by blending a real face
with a slightly altered copy of itself, so a detector learns what every face swap leaves (a blending
boundary, a colour / sharpness mismatch, a small misalignment) instead of one generator's fingerprints.
Main names: :func:`self_blend`, :func:`maybe_sbi` (for the loader), :class:`SBIConfig` (the ranges),
:func:`ellipse_mask`. Every random draw comes from the ``rng`` passed in; images are uint8 RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import cv2
import numpy as np

__all__ = ["SBIConfig", "SYNTHESIZERS", "ellipse_mask", "maybe_sbi", "self_blend"]

SYNTHESIZERS = ("sbi",)  # values of TrainConfig.synthesize_fakes (None: off)


@dataclass(frozen=True)
class SBIConfig:
    """How often and how strongly real faces become pseudo-fakes (SBI's ranges by default)."""

    probability: float = 0.5  # chance that a real training sample becomes a pseudo-fake (label 1)
    rgb_shift_p: float = 0.3  # chance of a per-channel RGB shift (SBI: RGBShift(20), p = 0.3)
    rgb_shift: float = 20.0  # per-channel shift in [-v, v], 0..255 scale
    hue: float = 0.01  # hue shift in [-h, h] of the hue circle (3.6 degrees)
    saturation: float = 0.1  # factor in [1 - s, 1 + s]
    brightness: float = 0.1  # factor in [1 - b, 1 + b]
    contrast: float = 0.1  # factor in [1 - c, 1 + c] around the mean grey
    degrade_p: float = 1.0  # chance of a quality change of the source (SBI: always one of the two)
    downscale: tuple[float, float] = (0.25, 0.5)  # down-and-up factor (else: sharpening)
    sharpen: tuple[float, float] = (0.2, 0.5)  # sharpening strength (unsharp mask amount)
    scale: tuple[float, float] = (0.95, 1.05)  # source scale, per axis
    translate: float = 0.03  # source shift in [-t, t] of the side, per axis
    mask_scale: tuple[float, float] = (0.85, 1.1)  # ellipse / given-mask size factor
    mask_shift: float = 0.04  # mask centre shift in [-m, m] of the side
    mask_rotate: float = 10.0  # degrees, in [-r, r]
    mask_deform: float = 0.06  # amplitude of each radial harmonic (orders 2..4) of the mask outline
    blur: tuple[float, float] = (0.01, 0.04)  # edge blur sigma, as a fraction of the face side
    blend_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)

    def __post_init__(self):
        for name in ("probability", "rgb_shift_p", "degrade_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple) and f.name != "blend_ratios" and not (len(v) == 2 and 0 <= v[0] <= v[1]):
                raise ValueError(f"{f.name} must be a (low, high) pair with 0 <= low <= high, got {v}")
        if not self.blend_ratios or not all(0 < r <= 1 for r in self.blend_ratios):
            raise ValueError(f"blend_ratios must be in (0, 1], got {self.blend_ratios}")

    @classmethod
    def from_dict(cls, d: dict | None) -> SBIConfig:
        """From a config mapping (lists become tuples); unknown keys raise TypeError."""
        return replace(cls(), **{k: tuple(v) if isinstance(v, list) else v for k, v in (d or {}).items()})


# --- the source: colour, quality, geometry ------------------------------------------------------
def _color(img: np.ndarray, rng: np.random.Generator, cfg: SBIConfig) -> np.ndarray:
    x = img.astype(np.float32)
    if cfg.rgb_shift_p and rng.random() < cfg.rgb_shift_p:
        x += rng.uniform(-cfg.rgb_shift, cfg.rgb_shift, size=3).astype(np.float32)
        np.clip(x, 0, 255, out=x)
    hsv = cv2.cvtColor(x / 255, cv2.COLOR_RGB2HSV)  # float: H in [0, 360), S and V in [0, 1]
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-cfg.hue, cfg.hue) * 360) % 360
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation), 0, 1)
    x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255
    x *= rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    x = (x - x.mean()) * c + x.mean()
    return np.clip(x, 0, 255)


def _degrade(x: np.ndarray, rng: np.random.Generator, cfg: SBIConfig) -> np.ndarray:
    if not (cfg.degrade_p and rng.random() < cfg.degrade_p):
        return x
    h, w = x.shape[:2]
    if rng.random() < 0.5:  # blur the source's high frequencies away: down, then up again
        f = rng.uniform(*cfg.downscale)
        small = cv2.resize(x, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    amount = rng.uniform(*cfg.sharpen)  # or sharpen them: unsharp mask
    return np.clip(x + amount * (x - cv2.GaussianBlur(x, (0, 0), 1.0)), 0, 255)


def _geometry(x: np.ndarray, rng: np.random.Generator, cfg: SBIConfig) -> np.ndarray:
    h, w = x.shape[:2]
    sx, sy = rng.uniform(*cfg.scale, size=2)
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, size=2) * (w, h)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    m = np.array([[sx, 0, cx - sx * cx + tx], [0, sy, cy - sy * cy + ty]], np.float32)
    return cv2.warpAffine(x, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


# --- the mask -----------------------------------------------------------------------------------
def ellipse_mask(h: int, w: int, rng: np.random.Generator | None = None, cfg: SBIConfig | None = None) -> np.ndarray:
    """A binary float32 (h, w) face region for a tight, centred face crop: an ellipse over the
    inner face (eyebrows to chin). With ``rng``: randomly scaled, shifted, rotated and deformed."""
    cfg = cfg or SBIConfig()
    cx, cy, ax, ay, angle = 0.5 * w, 0.54 * h, 0.36 * w, 0.44 * h, 0.0
    harmonics = []
    if rng is not None:
        s = rng.uniform(*cfg.mask_scale, size=2)
        ax, ay = ax * s[0], ay * s[1]
        cx += rng.uniform(-cfg.mask_shift, cfg.mask_shift) * w
        cy += rng.uniform(-cfg.mask_shift, cfg.mask_shift) * h
        angle = math.radians(rng.uniform(-cfg.mask_rotate, cfg.mask_rotate))
        harmonics = [(k, rng.uniform(-cfg.mask_deform, cfg.mask_deform), rng.uniform(0, 2 * math.pi))
                     for k in (2, 3, 4)]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = (ca * dx + sa * dy) / ax, (-sa * dx + ca * dy) / ay
    radius = np.ones_like(u)
    theta = np.arctan2(v, u)
    for k, a, phase in harmonics:
        radius += a * np.cos(k * theta + phase)
    return (u * u + v * v <= radius * radius).astype(np.float32)


def _deform_given(mask: np.ndarray, rng: np.random.Generator, cfg: SBIConfig) -> np.ndarray:
    """A given face region, randomly scaled about its centre, shifted and rotated."""
    h, w = mask.shape
    m = (mask > 0.5).astype(np.float32)
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return m
    c = (float(xs.mean()), float(ys.mean()))
    rot = cv2.getRotationMatrix2D(c, rng.uniform(-cfg.mask_rotate, cfg.mask_rotate), 1.0)
    s = rng.uniform(*cfg.mask_scale, size=2)
    rot[0, :2] *= s[0]
    rot[1, :2] *= s[1]
    rot[0, 2] = c[0] - rot[0, 0] * c[0] - rot[0, 1] * c[1] + rng.uniform(-cfg.mask_shift, cfg.mask_shift) * w
    rot[1, 2] = c[1] - rot[1, 0] * c[0] - rot[1, 1] * c[1] + rng.uniform(-cfg.mask_shift, cfg.mask_shift) * h
    return (cv2.warpAffine(m, rot, (w, h), flags=cv2.INTER_LINEAR) > 0.5).astype(np.float32)


def _soft(region: np.ndarray, rng: np.random.Generator, cfg: SBIConfig) -> np.ndarray:
    side = min(region.shape)
    sigma = max(0.5, rng.uniform(*cfg.blur) * side)
    soft = cv2.GaussianBlur(region, (0, 0), sigma)
    peak = float(soft.max())
    if peak <= 0:
        return soft
    soft = soft / peak  # a blurred small region still reaches 1 inside
    soft[soft < 1e-3] = 0.0  # a clean support: the blur's far tails would change nothing anyway
    return np.clip(soft * float(rng.choice(cfg.blend_ratios)), 0.0, 1.0).astype(np.float32)


# --- the blend ----------------------------------------------------------------------------------
def self_blend(face: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None = None,
               cfg: SBIConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``face`` with an altered copy of itself.

    The paper's source-target generator and mask generator:

    1. source = a copy of the face with colour jitter (sometimes a per-channel RGB shift; hue,
       saturation, brightness, contrast), then a quality change (down-and-up scaling or
       sharpening), then a geometry jitter (independent x/y scale and a translation of a few
       per cent); the target is the face itself, untouched;
    2. mask = a face region (``mask``; else :func:`ellipse_mask`), randomly scaled, shifted,
       rotated and deformed (random low-order harmonics of its radius), its edge
       Gaussian-blurred, times a blend ratio drawn from {0.25, 0.5, 0.75, 1, 1, 1};
    3. blended = mask * source + (1 - mask) * target.

    A seeded ``rng`` reproduces the output.

    Parameters
    ----------
    face : uint8 (H, W, 3) RGB, a face crop (tight and centred when no ``mask`` is given)
    rng : the only source of randomness
    mask : optional face region (H, W) (bool, uint8 or float; > 0.5 is inside), e.g. the
        convex hull of landmarks; randomly deformed and blurred like the default ellipse
    cfg : jitter ranges; ``SBIConfig()`` by default

    Returns
    -------
    blended : uint8 (H, W, 3); exactly ``face`` wherever the mask is 0
    mask : float32 (H, W) in [0, 1], the blending weight of the altered source
    """
    cfg = cfg or SBIConfig()
    face = np.asarray(face)
    if face.ndim != 3 or face.shape[2] != 3 or face.dtype != np.uint8:
        raise ValueError(f"face must be uint8 (H, W, 3), got {face.dtype} {face.shape}")
    h, w = face.shape[:2]
    if mask is not None and np.shape(mask) != (h, w):
        raise ValueError(f"mask must be ({h}, {w}), got {np.shape(mask)}")
    target = face.astype(np.float32)
    for _ in range(4):  # a draw that happens to change (almost) nothing is drawn again
        source = _geometry(_degrade(_color(face, rng, cfg), rng, cfg), rng, cfg)
        region = ellipse_mask(h, w, rng, cfg) if mask is None else _deform_given(np.asarray(mask, np.float32),
                                                                                  rng, cfg)
        soft = _soft(region, rng, cfg)
        m = soft[..., None]
        out = np.clip(np.rint(m * source + (1 - m) * target), 0, 255).astype(np.uint8)
        out = np.where(m > 0, out, face)  # outside the support: the input's own bytes
        if int(np.abs(out.astype(np.int16) - face).max(initial=0)) >= 3:
            break
    return np.ascontiguousarray(out), soft


def maybe_sbi(img: np.ndarray, rng: np.random.Generator, cfg: SBIConfig | None = None) -> tuple[np.ndarray, int]:
    """For the loader: a real sample stays real (``(img, 0)``) or, with probability
    ``cfg.probability``, becomes a self-blended pseudo-fake (``(blended, 1)``)."""
    cfg = cfg or SBIConfig()
    if cfg.probability and rng.random() < cfg.probability:
        return self_blend(img, rng, cfg=cfg)[0], 1
    return img, 0
