"""Files -> CLIP embeddings, through the on-disk cache: how each file is framed and
resized for the encoder (its preprocessing id), and one extraction pass over many files.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ...faces.crop import FRAMINGS
from .cache import EmbeddingCache, bytes_digest, content_key
from .encoder import CLIP_MEAN, CLIP_STD, EMBED_DIM, INPUT_SIZE, ClipEncoder

log = logging.getLogger(__name__)

FACE_MARGIN = 0.0  # "face": the square around the detector's box, as tight as the dfdc-faces crops


def preprocess_id(framing: str, margin: float = FACE_MARGIN, detector: str = "retinaface") -> str:
    """Names everything between a file's bytes and the encoder's input; part of the cache key."""
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; choose from {', '.join(FRAMINGS)}")
    face = f"-{detector}-m{margin:g}" if framing == "face" else ""
    return f"{framing}{face}-resize{INPUT_SIZE}-clipnorm-v1"


def encoder_input(image: np.ndarray, framing: str, detector=None, margin: float = FACE_MARGIN) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (224, 224, 3), framed as ``framing`` says."""
    from ...faces.crop import frame_image

    return frame_image(image, framing, INPUT_SIZE, detector, margin)


def normalize(images) -> np.ndarray:
    """uint8 (N, 224, 224, 3) -> float32 (N, 3, 224, 224) with CLIP's mean and std."""
    x = np.asarray(images, np.float32).transpose(0, 3, 1, 2) / 255.0  # (N, 3, S, S)
    mean = np.asarray(CLIP_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CLIP_STD, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)


def embed_files(paths: list[str], encoder: ClipEncoder, cache: EmbeddingCache | None, framing: str = "as-is",
                workers: int = 2, detector=None, progress: bool = False,
                commit_every: int = 256) -> tuple[np.ndarray, dict[str, str]]:
    """(N, 512) embeddings of ``paths`` (zeros for a file that failed) and ``{path: error}``.

    Cached embeddings are read, the others computed ``workers`` at a time and written back
    every ``commit_every`` files, so an interrupted pass resumes where it stopped.
    """
    from ...data import ImageDecodeError, load_image
    from ...data.limits import InputRefused

    pid = preprocess_id(framing)
    out = np.zeros((len(paths), EMBED_DIM), np.float32)
    errors: dict[str, str] = {}
    keys: list[str | None] = []
    for p in paths:
        try:
            keys.append(content_key(bytes_digest(p), pid, encoder.identity))
        except InputRefused as e:
            keys.append(None)
            errors[p] = f"cannot read {p}: {e.reason}"
        except OSError as e:
            keys.append(None)
            errors[p] = f"cannot read {p}: {e.strerror or e}"
    hits = cache.get_many([k for k in keys if k]) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k and k not in hits]
    for i, k in enumerate(keys):
        if k in hits:
            out[i] = hits[k]
    log.info("%d of %d embeddings cached; computing %d", len(paths) - len(todo) - len(errors), len(paths), len(todo))

    def one(i):
        try:
            x = encoder_input(load_image(paths[i]), framing, detector)
        except ImageDecodeError as e:
            return i, None, str(e)
        return i, encoder.embed(normalize(x[None]))[0], None

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="img", desc=f"embed ({framing})", dynamic_ncols=True)
    pending: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:  # decoding and onnxruntime both release the GIL
        for i, emb, err in pool.map(one, todo):
            if err is not None:
                errors[paths[i]] = err
            else:
                out[i] = emb
                pending[keys[i]] = emb
            if bar is not None:
                bar.update(1)
            if cache is not None and len(pending) >= commit_every:
                cache.put_many(pending)
                pending = {}
    if cache is not None and pending:
        cache.put_many(pending)
    if bar is not None:
        bar.close()
    return out, errors
