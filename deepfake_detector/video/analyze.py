"""One verdict per video, :func:`analyze_video`: sample frames, find the largest face of each,
classify all crops in one batch, frame score = max over the frame's faces (a video is fake if any
face in it is), video score by :func:`aggregate` (:func:`confident_strategy` or the mean). A bad
file gives a result with ``error`` set, not an exception, so a batch of files goes on.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..data.deadline import check_cancelled
from ..faces.crop import frame
from ..options import PredictOptions
from ..predict import score_framed
from ..results import NO_FACE, VideoResult, rounded, video_confidence, video_row
from .read import VideoError, iter_sampled, open_video, prefetch

log = logging.getLogger(__name__)

AGGREGATIONS = ("confident", "mean")
DEFAULT_AGGREGATION = "confident"


def confident_strategy(scores, t: float = 0.8, low: float = 0.2, min_fakes: int = 11) -> float:
    """The DFDC winner's (Selim Seferbekov) video aggregation, as published.

    With n scores: if more than ``n // 2.5`` of them exceed ``t`` *and* more than
    ``min_fakes`` (11) do, return the mean of those confident-fake scores; elif more than
    ``0.9 n`` are below ``low`` (0.2), the mean of those confident-real scores; else the plain
    mean. Why: a fake video is often fake in only some frames (the swap fails or the face
    turns away elsewhere); a plain mean lets many uncertain frames average a few confidently
    fake ones back towards 0.5, while this rule trusts a sizeable block of confident frames.
    The ``> 11`` condition means that with the default 32 sampled frames at least 13 frames
    must be confidently fake; with fewer than 12 scores the first branch never fires.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("confident_strategy needs at least one score")
    n = s.size
    fakes = int(np.count_nonzero(s > t))
    if fakes > n // 2.5 and fakes > min_fakes:
        return float(np.mean(s[s > t]))
    if np.count_nonzero(s < low) > 0.9 * n:
        return float(np.mean(s[s < low]))
    return float(np.mean(s))


def aggregate(scores, how: str = DEFAULT_AGGREGATION) -> float:
    """Video P(fake) from frame scores: ``"confident"`` (:func:`confident_strategy`) or ``"mean"``."""
    if how == "confident":
        return confident_strategy(scores)
    if how == "mean":
        s = np.asarray(scores, dtype=np.float64)
        if s.size == 0:
            raise ValueError("no scores to aggregate")
        return float(s.mean())
    raise ValueError(f"unknown aggregation {how!r}; known: {', '.join(AGGREGATIONS)}")


def smooth(scores, window: int = 5, how: str = "median") -> list[float]:
    """Centred moving median (or mean) over ``window`` consecutive scores; the window shrinks
    at the ends so the output has the input's length."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    window = max(1, int(window))
    if how not in ("median", "mean"):
        raise ValueError(f"how must be 'median' or 'mean', got {how!r}")
    fn = np.median if how == "median" else np.mean
    half_lo, half_hi = (window - 1) // 2, window // 2
    return [float(fn(s[max(0, i - half_lo): i + half_hi + 1])) for i in range(s.size)]


def flicker(scores) -> float | None:
    """Mean absolute difference of consecutive scores: how much the verdict jumps from one
    sampled frame to the next (None with fewer than two scores)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return float(np.mean(np.abs(np.diff(s)))) if s.size >= 2 else None


def analyze_video(path, model, options: PredictOptions | None = None, *, smooth_window: int = 5,
                  aggregation: str = DEFAULT_AGGREGATION, method: str = "grab", batch_size: int = 64,
                  prefetch_frames: int = 3, **changes) -> VideoResult:
    """Analyse one video file; never raises for a bad file (see ``error`` in the result).

    Set-up errors still raise: an unknown ``aggregation`` (ValueError) or, with
    ``detector=None``, a missing RetinaFace package (``DetectorUnavailable``).

    ``options`` (:class:`~deepfake_detector.options.PredictOptions`, or keyword changes to
    it): ``detector`` (default: the cached RetinaFace), ``n_frames`` / ``every`` (see
    :func:`~deepfake_detector.video.read.sample_frames`), ``margin`` (by default the model's
    ``face_margin``, the framing of the crops it was trained on) and ``all_faces`` (classify
    every face of a frame, not just the largest). A frame is framed and scored as a photo is
    (:func:`~deepfake_detector.faces.crop.frame`, :func:`~deepfake_detector.predict.score_framed`).

    Returns a :class:`~deepfake_detector.results.VideoResult`: ``{"path", "kind": "video",
    "p_fake", "label" ("Real" | "Fake" | "NoFace" | "Error"), "confidence", "aggregation",
    "threshold", "p_fake_mean", "p_fake_confident",
    "n_frames_requested", "n_frames" (decoded), "n_frames_with_faces", "n_faces", "fps",
    "duration", "width", "height", "frame_count", "flicker", "timeline_smoothed", "frames",
    "model", "detector", "timings", "message", "warning", "error"}``. ``warning`` is set when
    fewer than half of the requested frames decoded; the confidence is then LOW
    (:func:`~deepfake_detector.results.video_confidence`). ``frames`` is one entry per
    sampled frame: ``{"index", "time",
    "faces": [FaceScore], "score"}`` where ``score`` is the frame's
    P(fake) (max over its faces) or None without a face. ``timeline_smoothed`` is aligned with
    ``frames``: the moving median of the frame scores over ``smooth_window`` frames that have
    a face, None where the frame has none. ``flicker`` is the mean absolute change of the
    score between consecutive frames with a face. ``timings`` (seconds): ``decode_s`` (the
    decoding thread's time; frames are decoded in the background while faces are detected, so
    only ``decode_wait_s`` of it delays the analysis), ``detect_s`` (detection and cropping),
    ``classify_s`` and ``total_s`` (wall clock).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; known: {', '.join(AGGREGATIONS)}")
    opts = PredictOptions.of(options, **changes)
    detector = opts.face_detector()  # a missing detector package is a set-up error: raise it, once
    t_start = time.perf_counter()
    res = video_row(path)
    res.aggregation = aggregation
    timings = {"decode_s": 0.0, "decode_wait_s": 0.0, "detect_s": 0.0, "classify_s": 0.0}
    try:
        threshold = float(model.threshold)
        res.threshold = threshold
        res.model = model.describe()
        res.detector = getattr(detector, "name", type(detector).__name__)
        size, margin = int(model.input_size), opts.margin_for(model)

        t = time.perf_counter()
        with open_video(path, opts.limits) as video:
            info = video.info
            res.fps, res.duration = rounded(info.fps, 4), rounded(info.duration, 4)
            res.width, res.height, res.frame_count = info.width, info.height, info.frame_count
            timings["decode_s"] += time.perf_counter() - t
            frames, framed = _sample_and_frame(video, opts, detector, size, margin, timings, method, prefetch_frames)
        res.n_frames, res.n_frames_requested, res.frames = len(frames), video.n_requested, frames
        if not frames:
            raise VideoError(f"{path}: no frame could be decoded")

        check_cancelled()
        t = time.perf_counter()
        for fr, (p, faces) in zip(frames, score_framed(model, framed, batch_size, keep_crops=False), strict=True):
            fr["faces"], fr["score"] = faces, rounded(p)
        timings["classify_s"] += time.perf_counter() - t
        res.n_faces = sum(len(pairs) for pairs in framed)
        _judge_video(res, aggregation, smooth_window)
    except Exception as e:  # noqa: BLE001 - a batch of files must go on; the error is reported
        msg = str(e) if isinstance(e, VideoError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, VideoError):
            log.warning("analysis of %s failed: %s", path, msg, exc_info=True)
        res.fail(msg, msg)
    finally:
        timings["total_s"] = time.perf_counter() - t_start
        res.timings = {k: round(v, 4) for k, v in timings.items()}
    return res


def _sample_and_frame(video, opts: PredictOptions, detector, size: int, margin: float, timings: dict,
                      method: str, prefetch_frames: int) -> tuple[list[dict], list[list]]:
    """The sampled frames (``{"index", "time", "faces", "score"}``, not scored yet) and each
    one's ``(face, crop)`` pairs, framed as a photo is; decoded in a background thread a few
    frames ahead of detection."""
    frames, framed = [], []
    it = _timed(iter_sampled(video, opts.n_frames, opts.every, method), timings, "decode_s")
    if prefetch_frames > 0:
        it = prefetch(it, prefetch_frames)
    try:
        while True:
            t = time.perf_counter()
            item = next(it, None)  # noqa: B034
            timings["decode_wait_s"] += time.perf_counter() - t
            if item is None:
                return frames, framed
            index, t_s, rgb = item
            check_cancelled()  # a web request whose client left stops between frames
            t = time.perf_counter()
            framed.append(frame(rgb, size, True, detector, margin, opts.all_faces)[0])
            timings["detect_s"] += time.perf_counter() - t
            frames.append({"index": int(index), "time": rounded(t_s, 4), "faces": [], "score": None})
    finally:
        it.close()  # stop the decoding thread before the capture is released


def _judge_video(res: VideoResult, aggregation: str, smooth_window: int) -> None:
    """The verdict of scored frames: NoFace without a face, else the aggregated P(fake), its
    confidence (LOW where too few frames decoded), the flicker and the smoothed timeline."""
    frames = res.frames
    res.warning = video_confidence(None, len(frames), res.n_frames_requested)[1]
    face_frames = [fr for fr in frames if fr["score"] is not None]
    res.n_frames_with_faces = len(face_frames)
    if not face_frames:
        res.label = NO_FACE
        res.message = (f"no face found in any of the {len(frames)} sampled frames; "
                       f"no verdict (try more frames, or a video where a face is visible)")
        res.timeline_smoothed = [None] * len(frames)
        return
    scores = [fr["score"] for fr in face_frames]
    p_mean, p_conf = aggregate(scores, "mean"), aggregate(scores, "confident")
    p = p_conf if aggregation == "confident" else p_mean
    res.judge(p, res.threshold)
    res.confidence, res.warning = video_confidence(p, len(frames), res.n_frames_requested, res.threshold)
    res.p_fake_mean, res.p_fake_confident, res.flicker = rounded(p_mean), rounded(p_conf), rounded(flicker(scores))
    sm = iter(smooth(scores, smooth_window, "median"))
    res.timeline_smoothed = [rounded(next(sm)) if fr["score"] is not None else None for fr in frames]


def _timed(iterator, timings: dict, key: str):
    """Yield from ``iterator``, adding the time spent producing each item to ``timings[key]``."""
    while True:
        t = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            timings[key] += time.perf_counter() - t
            return
        timings[key] += time.perf_counter() - t
        yield item
