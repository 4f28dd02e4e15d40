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
DEFAULT_MODELS = ("default.onnx", "default.npz")  # inside deepfake_detector/assets, first found wins


def default_model_path() -> Path:
    """The model shipped inside the package: an ONNX export or a from-scratch checkpoint."""
    assets = Path(str(resources.files("deepfake_detector") / "assets"))
    for name in DEFAULT_MODELS:
        if (assets / name).exists():
            return assets / name
    return assets / DEFAULT_MODELS[-1]


def get_model(path=None, device: str = "cpu", runtime: str = "numpy", threads: int | None = None):
    """The model at ``path`` (.npz or .onnx), or the default one shipped inside the package.

    ``runtime="onnx"`` runs a .npz checkpoint on onnxruntime (exported to a temporary file);
    an .onnx file always runs there.
    """
    path = Path(path) if path else default_model_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: model file not found"
                                + ("" if path != default_model_path() else
                                   " (the package ships without its default model; pass --model)"))
    from .runtime import load_any

    if runtime == "onnx" and path.suffix.lower() != ".onnx":
        import tempfile

        from .export import export_onnx

        onnx_path = Path(tempfile.mkdtemp(prefix="dfd-onnx-")) / f"{path.stem}.onnx"
        path = export_onnx(load_model(path), onnx_path)
    return load_any(path, device, threads=threads)


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
    """The result row of one image; ``label`` is Real/Fake, ``NoFace`` or None on error."""
    if p_fake is not None:
        label = "Fake" if p_fake >= model.threshold else "Real"
    else:
        label = "NoFace" if error is None else None
    row = {"path": str(path), "kind": "image", "p_fake": None if p_fake is None else round(float(p_fake), 6),
           "label": label, "confidence": confidence_level(p_fake), "threshold": round(model.threshold, 6),
           "error": error}
    row.update(extra)
    return row


def predict_arrays(model: Model, images: list[np.ndarray], faces: bool = False, detector=None,
                   whole_if_no_face: bool = False, margin: float | None = None,
                   all_faces: bool = False) -> list[dict]:
    """Classify decoded RGB images (any size) in one batch.

    Returns one dict per image: ``p_fake`` (None when no face was found), ``message`` and,
    with ``faces``, ``face`` (the largest face's box) and ``faces`` (each face's box,
    detector score and P(fake)); with ``all_faces`` the image's score is the maximum over
    its faces (a photo is fake if any face in it is).
    """
    S = model.input_size
    margin = model.face_margin if margin is None else margin  # frame faces as the training crops were
    crops, owners, rows = [], [], []
    for i, img in enumerate(images):
        row = {"p_fake": None, "message": None}
        rows.append(row)
        if not faces:
            crops.append(eval_transform(img, S))
            owners.append((i, None))
            continue
        from .faces import crop_faces, get_detector

        found = crop_faces(img, detector or get_detector(), S, margin=margin, all_faces=all_faces)
        row.update(face=None, faces=[])
        for face, crop in found:
            row["faces"].append({"box": [round(float(v), 1) for v in face.box], "det_score": round(face.score, 4)})
            crops.append(crop)
            owners.append((i, len(row["faces"]) - 1))
        if found:
            row["face"] = row["faces"][0]["box"]
        elif whole_if_no_face:
            crops.append(eval_transform(img, S))
            owners.append((i, None))
            row["message"] = "no face found; the whole image was classified"
        else:
            row["message"] = "no face found"
    if crops:
        for (i, f), p in zip(owners, model.predict_proba(np.stack(crops))):
            rows[i]["p_fake"] = max(rows[i]["p_fake"] or 0.0, float(p))
            if f is not None:
                rows[i]["faces"][f]["score"] = round(float(p), 6)
    return rows


def predict_paths(inputs: Iterable, model: Model, faces: bool = False, whole_if_no_face: bool = False,
                  batch_size: int = 32, n_frames: int = 32, every: int | None = None,
                  detector=None, all_faces: bool = False) -> Iterator[dict]:
    """One result dict per file, in input order; videos get a per-video verdict."""
    pending: list[tuple[str, np.ndarray]] = []

    def flush():
        rows = predict_arrays(model, [img for _, img in pending], faces, detector, whole_if_no_face,
                              all_faces=all_faces)
        for (path, _), r in zip(pending, rows):
            extra = {k: r[k] for k in ("face", "faces") if k in r}
            yield image_row(path, r["p_fake"], model, None, message=r["message"], **extra)
        pending.clear()

    for path in expand_inputs(inputs):
        kind = kind_of(path)
        if kind == "video":
            yield from flush()
            from .video.analyze import analyze_video

            yield analyze_video(path, model, detector=detector, n_frames=n_frames, every=every,
                                all_faces=all_faces)
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
