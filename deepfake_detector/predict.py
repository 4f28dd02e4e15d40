"""Images, folders and videos in; one result row per input out (rows: :mod:`.results`).

The library functions behind ``deepfake-detector predict``, the web app and the scanner.
A file that cannot be read gets an Error row; the others go on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator

import numpy as np

from .data import ImageDecodeError, eval_transform, load_image
from .data.deadline import check_cancelled
from .data.media import MediaWalk, sniffed_kind, walk_media
from .models import Predictor
from .results import error_row, image_row

log = logging.getLogger(__name__)


def predict_arrays(model: Predictor, images: list[np.ndarray], faces: bool = False, detector=None,
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


def resolve_faces(model: Predictor, faces: bool | None) -> bool:
    """``faces`` as asked (True: crop the largest face, False: the whole image), or None: the
    model's own framing (:attr:`~deepfake_detector.models.Predictor.framing`)."""
    return model.framing == "face" if faces is None else bool(faces)


BATCH_BUDGET = 256 << 20  # bytes of model input per batch: 32 crops at 224 px, 4 at 1024 px, 1 at 2048 px
PENDING_BUDGET = 128 << 20  # decoded images held before a batch runs: four 4096 x 2731 (the most a photo is decoded to)


def predict_paths(inputs: Iterable, model: Predictor, faces: bool | None = None, whole_if_no_face: bool = False,
                  batch_size: int = 32, n_frames: int = 32, every: int | None = None,
                  detector=None, all_faces: bool = False) -> Iterator[dict]:
    """One row per file, in input order; folders are walked recursively (pass a
    :class:`~deepfake_detector.data.media.MediaWalk` to read what the walk ignored);
    videos get a per-video verdict. ``faces``: None frames each image as the model does
    (:func:`resolve_faces`: the default crops the largest face, and an image without one
    gets ``NoFace`` unless ``whole_if_no_face``); True crops the face; False scores the whole
    image."""
    faces = resolve_faces(model, faces)
    files = inputs if isinstance(inputs, MediaWalk) else walk_media(inputs)
    pending: list[tuple[str, np.ndarray]] = []
    held = [0]  # bytes of the decoded images in pending
    s = int(model.input_size)
    batch_size = max(1, min(batch_size, BATCH_BUDGET // (s * s * 3 * 4 * 2)))  # float32 input and a copy

    def rows_of(batch) -> list[dict | str]:
        """The batch's rows; should it fail, each image alone, so that an image that breaks the
        detector or the model costs only its own row (the error message in its place)."""
        try:
            return predict_arrays(model, [img for _, img in batch], faces, detector, whole_if_no_face,
                                  all_faces=all_faces)
        except (ImportError, FileNotFoundError):  # a set-up error (no detector, no encoder): not the file's
            raise
        except Exception as e:  # noqa: BLE001 - reported in the file's row
            if len(batch) == 1:
                log.warning("analysis of %s failed", batch[0][0], exc_info=True)
                return [f"analysis failed: {type(e).__name__}: {e}"]
            return [r for item in batch for r in rows_of([item])]

    def flush():
        rows = rows_of(pending) if pending else []
        for (path, _), r in zip(pending, rows):
            if isinstance(r, str):
                yield error_row(path, r, "image", model.threshold)
                continue
            extra = {k: r[k] for k in ("face", "faces") if k in r}
            if r["p_fake"] is not None and not math.isfinite(r["p_fake"]):
                yield error_row(path, f"the model gave a non-finite score ({r['p_fake']}) for {path}", "image",
                                model.threshold)
                continue
            yield image_row(path, r["p_fake"], model.threshold, message=r["message"], **extra)
        pending.clear()
        held[0] = 0

    for path, named in files.items():
        check_cancelled()  # a web request whose client left stops here
        # a JPEG named .mp4 is decoded as the JPEG it is, never by FFmpeg (an image name needs no
        # sniff: the image decoder reads the format from the bytes itself)
        kind = sniffed_kind(path, named) if named != "image" else named
        if kind == "video":
            yield from flush()
            from .video.analyze import analyze_video

            yield analyze_video(path, model, detector=detector, n_frames=n_frames, every=every,
                                all_faces=all_faces)
            continue
        try:
            pending.append((path, load_image(path)))  # the decoding gate: one bad file is one Error row
            held[0] += pending[-1][1].nbytes
        except ImageDecodeError as e:
            yield from flush()
            yield error_row(path, str(e), "image", model.threshold)
            continue
        if len(pending) >= batch_size or held[0] > PENDING_BUDGET:
            yield from flush()
    yield from flush()
