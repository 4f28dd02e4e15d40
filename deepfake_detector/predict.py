"""Images, folders and videos in; one typed result per input out (:mod:`.results`).

The library functions behind ``deepfake-detector predict``, the web app and the scanner.
A file that cannot be read gets an Error result; the others go on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator

import numpy as np

from .data import ImageDecodeError, load_image
from .data.deadline import check_cancelled
from .data.media import MediaWalk, sniffed_kind, walk_media
from .faces.crop import frame
from .models import Predictor
from .options import PredictOptions
from .results import FaceScore, ImageResult, Result, error_row, image_row, rounded

log = logging.getLogger(__name__)

__all__ = ["PredictOptions", "predict_arrays", "predict_paths",
           "retry_alone", "score_framed"]


def score_framed(model: Predictor, framed: list[list[tuple]], batch_size: int = 64,
                 keep_crops: bool = True) -> list[tuple[float | None, list[FaceScore]]]:
    """Crop, score, take the max per owner: for photos and video frames alike.

    ``framed``: per owner (an image, a frame), its ``(face, crop)`` pairs (:func:`frame`; a
    face of None is the whole image). All crops go through the model in one call. Returns
    per owner (the highest P(fake) of its crops, or None without one; a :class:`FaceScore`
    per face, its crop kept with ``keep_crops``)."""
    crops = [crop for pairs in framed for _, crop in pairs]
    probs = (np.asarray(model.predict_proba(np.stack(crops), batch_size=batch_size), dtype=np.float64).reshape(-1)
             if crops else np.empty(0))
    if probs.shape[0] != len(crops):
        raise ValueError(f"the model returned {probs.shape[0]} scores for {len(crops)} crops")
    out, at = [], 0
    for pairs in framed:
        ps = [float(p) for p in probs[at:at + len(pairs)]]
        at += len(pairs)
        faces = [FaceScore.of(face, crop if keep_crops else None, rounded(p))
                 for (face, crop), p in zip(pairs, ps) if face is not None]
        out.append((max(ps) if ps else None, faces))
    return out


def predict_arrays(model: Predictor, images: list[np.ndarray], options: PredictOptions | None = None,
                   paths: list | None = None, batch_size: int = 64, **changes) -> list[ImageResult]:
    """Classify decoded RGB images (any size) in one batch: one :class:`ImageResult` each,
    framed as ``options`` say (or keyword changes to them: ``faces=True``...); ``paths``
    name them (default: empty). A non-finite score is an Error result."""
    opts = PredictOptions.of(options, **changes).framed_for(model)
    S = int(model.input_size)
    detector = opts.face_detector() if opts.faces else None
    paths = [""] * len(images) if paths is None else paths
    framed, messages = [], []
    for img in images:
        pairs, message = frame(img, S, opts.faces, detector, opts.margin_for(model), opts.all_faces,
                               opts.whole_if_no_face)
        framed.append(pairs)
        messages.append(message)
    out = []
    for path, img, pairs, m, (p, faces) in zip(paths, images, framed, messages,
                                                score_framed(model, framed, batch_size, opts.keep_pixels)):
        if p is not None and not math.isfinite(p):
            out.append(error_row(path, f"the model gave a non-finite score ({p}) for {path}", "image",
                                 model.threshold))
            continue
        r = image_row(path, p, model.threshold, message=m, faces=faces if opts.faces else None)
        if opts.keep_pixels:
            r.image, r.crop = img, (pairs[0][1] if pairs else None)
        out.append(r)
    return out


def retry_alone(run, items: list, describe=str, reraise: tuple = (ImportError, FileNotFoundError)) -> list:
    """The one retry policy: ``run(items)`` -> one result per item; should it raise, each item
    is run alone, so that an item that breaks the batch costs only its own result, which is
    then the error's message (a str). Set-up errors (``reraise``: no detector, no encoder) are
    not an item's fault and go up."""
    try:
        out = list(run(items))
        if len(out) != len(items):
            raise RuntimeError(f"{len(out)} results for {len(items)} inputs")
        return out
    except reraise:
        raise
    except Exception as e:  # noqa: BLE001 - reported in the item's result
        if len(items) == 1:
            log.warning("analysis of %s failed", describe(items[0]), exc_info=True)
            return [f"analysis failed: {type(e).__name__}: {e}"]
        return [r for item in items for r in retry_alone(run, [item], describe, reraise)]


BATCH_BUDGET = 256 << 20  # bytes of model input per batch: 32 crops at 224 px, 4 at 1024 px, 1 at 2048 px
PENDING_BUDGET = 128 << 20  # decoded images held before a batch runs: four 4096 x 2731 (the most a photo is decoded to)


def predict_paths(inputs: Iterable, model: Predictor, options: PredictOptions | None = None,
                  batch_size: int = 32, **changes) -> Iterator[Result]:
    """One result per file, in input order: an :class:`~deepfake_detector.results.ImageResult`
    or a :class:`~deepfake_detector.results.VideoResult`. Folders are walked recursively
    (pass a :class:`~deepfake_detector.data.media.MediaWalk` to read what the walk ignored).
    ``options`` (:class:`PredictOptions`, or keyword changes to it: ``faces=True``...) say
    how images are framed and videos sampled: by default as the model frames its input (the
    default crops the largest face, and an image without one gets ``NoFace``)."""
    opts = PredictOptions.of(options, **changes).framed_for(model)
    files = inputs if isinstance(inputs, MediaWalk) else walk_media(inputs)
    pending: list[tuple[str, np.ndarray]] = []
    held = [0]  # bytes of the decoded images in pending
    s = int(model.input_size)
    batch_size = max(1, min(batch_size, BATCH_BUDGET // (s * s * 3 * 4 * 2)))  # float32 input and a copy

    def flush():
        batch = list(pending)
        pending.clear()
        held[0] = 0
        if not batch:
            return
        rows = retry_alone(lambda items: predict_arrays(model, [img for _, img in items], opts,
                                                        paths=[path for path, _ in items]),
                           batch, describe=lambda item: item[0])
        for (path, _), r in zip(batch, rows):
            yield error_row(path, r, "image", model.threshold) if isinstance(r, str) else r

    for path, named in files.items():
        check_cancelled()  # a web request whose client left stops here
        # a JPEG named .mp4 is decoded as the JPEG it is, never by FFmpeg (an image name needs no
        # sniff: the image decoder reads the format from the bytes itself)
        kind = sniffed_kind(path, named) if named != "image" else named
        if kind == "video":
            yield from flush()
            from .video.analyze import analyze_video

            yield analyze_video(path, model, opts)
            continue
        try:
            pending.append((path, load_image(path, limits=opts.limits)))  # the decoding gate: one bad file is one row
            held[0] += pending[-1][1].nbytes
        except ImageDecodeError as e:
            yield from flush()
            yield error_row(path, str(e), "image", model.threshold)
            continue
        if len(pending) >= batch_size or held[0] > PENDING_BUDGET:
            yield from flush()
    yield from flush()
