"""An easy synthetic real/fake task the tests write to disk, in the usual layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def face_like(rng, size, fake: bool) -> np.ndarray:
    """A smooth random colour field; 'fakes' carry a high-frequency checker patch
    (a stand-in for blending and upsampling artefacts) at a random place."""
    base = rng.uniform(40, 200, 3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = base + 40 * np.stack([np.sin(3 * xx + rng.uniform(0, 6)), np.cos(2 * yy + rng.uniform(0, 6)),
                                np.sin(2 * (xx + yy))], -1)
    if fake:
        s = size // 2
        y, x = rng.integers(0, size - s, 2)
        checker = (((np.indices((s, s)) // 2).sum(0) % 2) * 2 - 1)[..., None] * 45  # 2-px squares
        img[y:y + s, x:x + s] += checker
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root: Path, n_per_class=(40, 16, 16), size=32, seed=0) -> Path:
    """root/{Train,Validation,Test}/{Fake,Real}/*.png with n images per class per split."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("Train", "Validation", "Test"), n_per_class):
        for label in ("Real", "Fake"):
            d = root / split / label
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(face_like(rng, size, label == "Fake")).save(d / f"{split[0]}{label[0]}{i:03d}.png")
    return root
