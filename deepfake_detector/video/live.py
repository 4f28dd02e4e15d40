"""Watch a camera, a stream or a file and keep a rolling verdict, :func:`watch`: a reader thread
keeps only the newest frame (older unanalysed ones are dropped and counted), so the analysis never
lags behind the stream; the largest face of each analysed frame is classified, and the mean of the
last ``window`` face scores is the rolling P(fake). Also :func:`parse_source`, :func:`format_update`
and :func:`format_summary`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable

import cv2
import numpy as np

from ..data.limits import InputRefused, regular_file_size
from ..faces.crop import frame, model_margin
from ..faces.detect import get_detector
from ..predict import score_framed
from ..results import confidence_level, verdict
from .read import FALLBACK_FPS, VideoError


def parse_source(source) -> tuple[object, str]:
    """``(what to give cv2.VideoCapture, kind)`` with kind ``"camera"``, ``"file"`` or ``"stream"``."""
    if isinstance(source, (int, np.integer)):
        return int(source), "camera"
    s = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    if s.strip().isdigit():
        return int(s.strip()), "camera"
    if "://" in s:
        return s, "stream"
    if os.path.lexists(s):  # a file: the decoding gate (in watch) says what is wrong with it
        return s, "file"
    raise VideoError(f"{s!r} is neither a camera index, an existing file nor a URL")


class _LatestFrame(threading.Thread):
    """Reader thread: always holds the newest frame; counts frames read and dropped."""

    def __init__(self, cap, pace_fps: float | None):
        super().__init__(name="deepfake-detector-reader", daemon=True)
        self.cap = cap
        self.pace_fps = pace_fps
        self.cond = threading.Condition()
        self.frame = None
        self.index = -1
        self.frames_read = 0
        self.frames_dropped = 0
        self.done = False
        self.error: str | None = None
        self._halt = threading.Event()

    def run(self):
        t0 = time.monotonic()
        try:
            while not self._halt.is_set():
                ok, frame = self.cap.read()
                if not ok or frame is None:
                    break
                with self.cond:
                    if self.frame is not None:
                        self.frames_dropped += 1  # the previous one was never analysed
                    self.frame = frame
                    self.index = self.frames_read
                    self.frames_read += 1
                    self.cond.notify_all()
                if self.pace_fps:
                    delay = t0 + self.frames_read / self.pace_fps - time.monotonic()
                    if delay > 0:
                        self._halt.wait(delay)
        except Exception as e:  # noqa: BLE001 - reported in the summary
            self.error = f"{type(e).__name__}: {e}"
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def take(self, timeout: float):
        """The newest unanalysed ``(index, bgr)``, or None if none came within ``timeout``."""
        with self.cond:
            if self.frame is None and not self.done:
                self.cond.wait(timeout)
            if self.frame is None:
                return None
            frame, self.frame = self.frame, None
            return self.index, frame

    def stop(self):
        self._halt.set()
        with self.cond:
            self.cond.notify_all()


def watch(source, model, detector=None, *, max_seconds: float | None = None, window: int = 30,
          on_update: Callable[[dict], None] | None = None, stop_event: threading.Event | None = None,
          margin: float | None = None, realtime: bool | None = None,
          blas_threads: int | None = 1) -> dict:
    """Analyse a live source until it ends or is stopped; returns a summary dict.

    The analysis runs in the calling thread and stops at the end of the stream, after
    ``max_seconds``, when ``stop_event`` is set, or on Ctrl-C (KeyboardInterrupt), returning
    the summary in every case. A file is read at its own frame rate, like a stream.

    ``source``: a camera index (``0`` or ``"0"``), a video file or a URL (rtsp/http...).
    ``realtime``: pace a file to its own fps (default True for files; cameras and streams
    are paced by the source itself). ``blas_threads``: BLAS threads while watching (None:
    leave as is). One image at a time gains nothing from several BLAS threads, and their
    busy-waiting starves the reader and the detector: measured on 2 loaded cores, one
    128-px crop took 16 ms with 1 OpenBLAS thread and 120 ms with 2.

    ``on_update(update)`` is called after every analysed frame with ``{"frame_index",
    "time", "face", "frame_score", "p_fake", "label", "n_scores", "fps", "frames_read",
    "frames_analysed", "frames_dropped"}`` where ``p_fake`` and ``label`` are the rolling
    verdict over the last ``window`` face scores (None / "NoFace" before the first face)
    and ``fps`` the analysed frames per second so far.

    Summary: ``{"source", "kind", "frames_read", "frames_analysed", "frames_with_face",
    "frames_dropped", "seconds", "analysed_fps", "label", "p_fake" (rolling, final),
    "p_fake_mean" (all face scores), "confidence", "threshold", "window", "stopped_by"
    ("end" | "max_seconds" | "stop_event" | "interrupt"), "error"}``. Raises
    :class:`VideoError` when the source cannot be opened.
    """
    cap, kind, fps = _open_source(source)
    if realtime is None:
        realtime = kind == "file"
    detector = detector if detector is not None else get_detector()
    size = int(model.input_size)
    threshold = float(model.threshold)

    reader = _LatestFrame(cap, fps if realtime else None)
    scores: deque[float] = deque(maxlen=max(1, int(window)))
    all_scores: list[float] = []
    analysed = with_face = 0
    stopped_by = "end"
    start = time.monotonic()
    limits = _blas_limits(blas_threads)
    reader.start()
    try:
        while True:
            if stop_event is not None and stop_event.is_set():
                stopped_by = "stop_event"
                break
            if max_seconds is not None and time.monotonic() - start >= max_seconds:
                stopped_by = "max_seconds"
                break
            item = reader.take(timeout=0.05)
            if item is None:
                if reader.done and reader.frame is None:
                    stopped_by = "end"
                    break
                continue
            index, bgr = item
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            pairs, _ = frame(rgb, size, True, detector, model_margin(model, margin))  # as a photo is framed
            ((frame_score, faces),) = score_framed(model, [pairs], keep_crops=False)
            face = faces[0] if faces else None
            if face is not None:
                scores.append(frame_score)
                all_scores.append(frame_score)
                with_face += 1
            analysed += 1
            elapsed = time.monotonic() - start
            p = float(np.mean(scores)) if scores else None
            if on_update is not None:
                on_update({"frame_index": index, "time": round(index / fps, 3),
                           "face": None if face is None else face.box,
                           "frame_score": frame_score, "p_fake": p,
                           "label": verdict(p, threshold),
                           "n_scores": len(scores), "fps": analysed / elapsed if elapsed > 0 else 0.0,
                           "frames_read": reader.frames_read, "frames_analysed": analysed,
                           "frames_dropped": reader.frames_dropped})
    except KeyboardInterrupt:
        stopped_by = "interrupt"
    finally:
        seconds = time.monotonic() - start
        reader.stop()
        reader.join(timeout=5.0)
        cap.release()
        if limits is not None:
            limits.restore_original_limits()
    p = float(np.mean(scores)) if scores else None
    return {"source": str(source), "kind": kind, "frames_read": reader.frames_read,
            "frames_analysed": analysed, "frames_with_face": with_face,
            "frames_dropped": max(0, reader.frames_read - analysed), "seconds": round(seconds, 3),
            "analysed_fps": round(analysed / seconds, 2) if seconds > 0 else 0.0,
            "label": verdict(p, threshold),
            "p_fake": None if p is None else round(p, 6),
            "p_fake_mean": round(float(np.mean(all_scores)), 6) if all_scores else None,
            "confidence": confidence_level(p, threshold), "threshold": threshold, "window": int(window),
            "stopped_by": stopped_by, "error": reader.error}


def _open_source(source) -> tuple[cv2.VideoCapture, str, float]:
    """(an opened capture, its kind: camera / file / stream, its fps); a file passes the
    decoding gate first (a regular file within the size limit, never a FIFO)."""
    target, kind = parse_source(source)
    if kind == "file":
        try:
            regular_file_size(target, "video")
        except InputRefused as e:
            raise VideoError(f"cannot read video {target}: {e.reason}") from e
    cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"could not open {kind} {source!r}")
    if kind == "camera":
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # ask drivers that honour it not to queue frames
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not np.isfinite(fps) or fps <= 0 or fps > 1000:
        fps = FALLBACK_FPS
    return cap, kind, fps


def _blas_limits(n: int | None):
    """Limit BLAS threads (process-wide, restored after) with threadpoolctl when available."""
    if n is None:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn
        return None
    return threadpool_limits(limits=int(n), user_api="blas")


def format_update(u: dict) -> str:
    """One line for a terminal, e.g. ``t=  3.20s  Fake  P(fake)=0.73 (last 30)  face=0.81  12.3 fps``."""
    p = "  -  " if u.get("p_fake") is None else f"{u['p_fake']:.2f}"
    fs = "none" if u.get("frame_score") is None else f"{u['frame_score']:.2f}"
    return (f"t={u.get('time', 0):7.2f}s  {u.get('label', '?'):<6}  P(fake)={p} (last {u.get('n_scores', 0)})"
            f"  face={fs}  {u.get('fps', 0):5.1f} fps  dropped={u.get('frames_dropped', 0)}")


def format_summary(s: dict) -> str:
    """One line summing up a :func:`watch` session."""
    p = "-" if s.get("p_fake") is None else f"{s['p_fake']:.3f}"
    pm = "-" if s.get("p_fake_mean") is None else f"{s['p_fake_mean']:.3f}"
    err = f"  error: {s['error']}" if s.get("error") else ""
    return (f"{s.get('label', '?')} (P(fake)={p} over the last {s.get('window', '?')} faces, "
            f"mean {pm}, {s.get('confidence') or '-'})  read={s.get('frames_read', 0)} "
            f"analysed={s.get('frames_analysed', 0)} with_face={s.get('frames_with_face', 0)} "
            f"dropped={s.get('frames_dropped', 0)}  {s.get('analysed_fps', 0):.1f} fps over "
            f"{s.get('seconds', 0):.1f}s  stopped by {s.get('stopped_by', '?')}{err}")
