"""Images, folders and videos in; one result per input out.

The library functions behind ``deepfake-detector predict``, the web app and the scanner.
A file that cannot be read gets a row with ``error`` set; the others go on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

import numpy as np

from .data import IMAGE_EXTENSIONS, ImageDecodeError, eval_transform, load_image
from .models import Model, load_model
from .video.analyze import confidence_level

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
DEFAULT_MODEL = "default.npz"  # inside deepfake_detector/assets


def default_model_path() -> Path:
    return Path(str(resources.files("deepfake_detector") / "assets" / DEFAULT_MODEL))


def get_model(path=None, device: str = "cpu") -> Model:
    """The model at ``path``, or the default one shipped inside the package."""
    path = Path(path) if path else default_model_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: model file not found"
                                + ("" if path != default_model_path() else
                                   " (the package ships without its default model; pass --model)"))
    return load_model(path, device)


def kind_of(path) -> str | None:
    ext = os.path.splitext(str(path))[1].lower()
    return "image" if ext in IMAGE_EXTENSIONS else "video" if ext in VIDEO_EXTENSIONS else None


def expand_inputs(inputs: Iterable) -> Iterator[str]:
    """Files as given; folders walked recursively for images and videos, in sorted order."""
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    if kind_of(name):
                        yield os.path.join(root, name)
        else:
            yield str(p)


def image_row(path, p_fake: float | None, model: Model, error: str | None = None, **extra) -> dict:
    label = None if p_fake is None else ("Fake" if p_fake >= model.threshold else "Real")
    row = {"path": str(path), "kind": "image", "p_fake": None if p_fake is None else round(float(p_fake), 6),
           "label": label, "confidence": confidence_level(p_fake), "threshold": round(model.threshold, 6),
           "error": error}
    row.update(extra)
    return row


def predict_arrays(model: Model, images: list[np.ndarray], faces: bool = False, detector=None,
                   whole_if_no_face: bool = False, margin: float | None = None) -> list[dict]:
    """Classify decoded RGB images (any size): one dict per image with ``p_fake`` and,
    with ``faces``, the face ``box`` used (or ``error`` 'no face found')."""
    S = model.input_size
    margin = model.face_margin if margin is None else margin  # frame faces as the training crops were
    crops, rows = [], []
    for img in images:
        box = None
        if faces:
            from .faces import crop_faces, get_detector

            found = crop_faces(img, detector or get_detector(), S, margin=margin)
            if found:
                face, crop = found[0]
                box = [round(float(v), 1) for v in face.box]
            elif whole_if_no_face:
                crop = eval_transform(img, S)
            else:
                rows.append({"p_fake": None, "error": "no face found", "face": None})
                continue
        else:
            crop = eval_transform(img, S)
        crops.append(crop)
        rows.append({"p_fake": None, "error": None, "face": box})
    if crops:
        p = model.predict_proba(np.stack(crops))
        it = iter(p)
        for r in rows:
            if r["error"] is None:
                r["p_fake"] = float(next(it))
    return rows


def predict_paths(inputs: Iterable, model: Model, faces: bool = False, whole_if_no_face: bool = False,
                  batch_size: int = 32, n_frames: int = 32, every: int | None = None,
                  detector=None) -> Iterator[dict]:
    """One result dict per file, in input order; videos get a per-video verdict."""
    pending: list[tuple[str, np.ndarray]] = []

    def flush():
        rows = predict_arrays(model, [img for _, img in pending], faces, detector, whole_if_no_face)
        for (path, _), r in zip(pending, rows):
            extra = {"face": r["face"]} if faces else {}
            yield image_row(path, r["p_fake"], model, r["error"], **extra)
        pending.clear()

    for path in expand_inputs(inputs):
        kind = kind_of(path)
        if kind == "video":
            yield from flush()
            from .video.analyze import analyze_video

            yield analyze_video(path, model, detector=detector, n_frames=n_frames, every=every,
                                margin=model.face_margin)
            continue
        try:
            if not os.path.isfile(path):
                raise ImageDecodeError(path, "no such file")
            pending.append((path, load_image(path)))
        except ImageDecodeError as e:
            yield from flush()
            yield image_row(path, None, model, str(e))
            continue
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()
