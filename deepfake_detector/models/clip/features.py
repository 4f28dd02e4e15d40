"""Files -> CLIP embeddings, through the on-disk cache: how each file is framed and
resized for the encoder (its preprocessing id), and one extraction pass over many files.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ...faces.crop import FRAMINGS
from .cache import EmbeddingCache, bytes_digest, content_key
from .encoder import CLIP_MEAN, CLIP_STD, FEATURE_SHAPES, INPUT_SIZE, TOKEN_FEATURES, ClipEncoder, check_feature

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


def feature_identity(encoder: ClipEncoder, feature: str) -> str:
    """The encoder part of a cache key: its identity, and the feature where it is not the pooled one."""
    return encoder.identity if check_feature(feature) == "pooled" else f"{encoder.identity}:{feature}"


def embed_files(paths: list[str], encoder: ClipEncoder, cache: EmbeddingCache | None, framing: str = "as-is",
                workers: int = 2, detector=None, progress: bool = False,
                commit_every: int = 256, feature: str = "pooled") -> tuple[np.ndarray, dict[str, str]]:
    """(N, *shape) ``feature`` arrays of ``paths`` (zeros for a file that failed) and ``{path: error}``.

    Cached vectors are read, the others computed ``workers`` at a time and written back every
    ``commit_every`` files, so an interrupted pass resumes where it stopped. A computed file's
    every vector feature goes into the cache (they come from the same encoder pass); its patch
    tokens (:data:`~.encoder.TOKEN_FEATURES`, 300 kB an image as float16) only where they are
    the feature asked for, and they come back as float16.
    """
    from ...data import ImageDecodeError, load_image
    from ...data.limits import InputRefused

    pid = preprocess_id(framing)
    if check_feature(feature) not in encoder.feature_names:
        raise ValueError(f"{encoder.path} gives no {feature!r} feature (it outputs {', '.join(encoder.feature_names)})")
    tokens = feature in TOKEN_FEATURES
    out = np.zeros((len(paths), *FEATURE_SHAPES[feature]), np.float16 if tokens else np.float32)
    errors: dict[str, str] = {}
    keys: list[str | None] = []
    digests: list[str | None] = []
    for p in paths:
        try:
            digests.append(bytes_digest(p))
            keys.append(content_key(digests[-1], pid, feature_identity(encoder, feature)))
        except InputRefused as e:
            keys.append(None)
            digests.append(None)
            errors[p] = f"cannot read {p}: {e.reason}"
        except OSError as e:
            keys.append(None)
            digests.append(None)
            errors[p] = f"cannot read {p}: {e.strerror or e}"
    hits = cache.get_many([k for k in keys if k]) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k and k not in hits]
    for i, k in enumerate(keys):
        if k in hits:
            out[i] = hits[k].reshape(out.shape[1:])
    log.info("%d of %d embeddings cached; computing %d", len(paths) - len(todo) - len(errors), len(paths), len(todo))

    def one(i):
        try:
            x = encoder_input(load_image(paths[i]), framing, detector)
        except ImageDecodeError as e:
            return i, None, str(e)
        return i, {k: v[0] for k, v in encoder.features(normalize(x[None])).items()}, None

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="img", desc=f"embed ({framing})", dynamic_ncols=True)
    pending: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:  # decoding and onnxruntime both release the GIL
        for i, feats, err in pool.map(one, todo):
            if err is not None:
                errors[paths[i]] = err
            else:
                out[i] = feats[feature]
                for k, v in feats.items():
                    if k not in TOKEN_FEATURES or k == feature:
                        v = v.astype(np.float16).ravel() if k in TOKEN_FEATURES else v
                        pending[content_key(digests[i], pid, feature_identity(encoder, k))] = v
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
