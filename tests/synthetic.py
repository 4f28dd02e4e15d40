"""An easy synthetic real/fake task the tests write to disk, in the usual layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from deepfake_detector.models import Predictor


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


def make_source_dataset(root: Path, sources: dict[str, str], n_per_source=(16, 8, 8), size=32, seed=1,
                        tint=(30, -20, 10)) -> Path:
    """A root laid out like faces-wild: every source one class (``sources``: name -> "Real" or
    "Fake"), ``n`` images per source per split, and a ``metadata.csv`` with its ``source``
    column (``file`` relative to the root). ``tint`` shifts the colours: another pipeline."""
    import csv

    rng = np.random.default_rng(seed)
    rows = []
    for split, n in zip(("Train", "Validation", "Test"), n_per_source):
        for name, label in sources.items():
            d = root / split / label
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(face_like(rng, size, label == "Fake").astype(int) + tint, 0, 255).astype(np.uint8)
                rel = f"{split}/{label}/{name}_{split[0]}{i:03d}.png"
                Image.fromarray(img).save(root / rel)
                rows.append((rel, label, name))
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "source"])
        w.writerows(rows)
    return root


def write_photo_splits(root: Path, frames, n: int) -> Path:
    """root/{Train,Validation}/{Real,Fake}/<label><i>.png from the first ``n`` frames."""
    for split in ("Train", "Validation"):
        for label in ("Real", "Fake"):
            d = root / split / label
            d.mkdir(parents=True)
            for i, f in enumerate(frames[:n]):
                Image.fromarray(f).save(d / f"{label}{i}.png")
    return root


class MeanModel(Predictor):
    """A stand-in whose score is a known function of the pixels: P(fake) = mean / 255."""

    input_size, threshold, arch = 32, 0.45, "mean"
    meta = {"framing": "as-is"}  # a whole-image stand-in: it declares so, as a model file would

    def predict_proba(self, images, batch_size=64):
        return images.reshape(len(images), -1).mean(1) / 255

    def describe(self):
        return {"arch": self.arch}
