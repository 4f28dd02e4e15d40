"""Open videos and sample frames from them with OpenCV's FFmpeg backend (mp4, avi, mov, mkv,
webm...: whatever it decodes): :func:`open_video` / :class:`Video`, :func:`sample_frames`,
:func:`video_info`, :func:`prefetch` (decode ahead in a thread). A file that is not a video or whose
first frame does not decode raises :class:`VideoError` with a clear message.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from ..data.limits import InputRefused, Limits, check_pixels, regular_file_size
from ..data.media import VIDEO_EXTENSIONS, kind_of  # noqa: F401  the one extension table, re-exported
from ..options import DEFAULT_N_FRAMES

MAX_SAMPLED_FRAMES = 2048  # per video: each sampled frame's face crop is held until the video is classified
FALLBACK_FPS = 25.0


class VideoError(Exception):
    """A file that cannot be opened or decoded as a video."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    frame_count: int  # from the container; may be an estimate for some formats
    fps: float
    width: int
    height: int
    duration: float  # seconds, frame_count / fps
    codec: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def is_video_path(path) -> bool:
    """Whether ``path``'s extension (any case) is one of VIDEO_EXTENSIONS."""
    return kind_of(path) == "video"


def _fourcc(cap) -> str:
    code = int(cap.get(cv2.CAP_PROP_FOURCC) or 0)
    s = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return s if s.isprintable() else ""


class Video:
    """An opened video: ``info``, the capture, and the first frame (already decoded, BGR).

    Use as a context manager or call :meth:`close`. :meth:`frames` iterates over the frames
    in order from the start, as ``(index, bgr)``.
    """

    def __init__(self, cap: cv2.VideoCapture, info: VideoInfo, first_bgr: np.ndarray):
        self.cap = cap
        self.info = info
        self._first = first_bgr
        self._pos = 1  # index of the next frame the capture will give
        self.n_requested: int | None = None  # frames :func:`iter_sampled` asked for (set when it starts)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def _take_first(self) -> np.ndarray | None:
        first, self._first = self._first, None
        return first

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """All frames from the start, (index, BGR)."""
        first = self._take_first()
        if first is None:
            raise VideoError("frames() can only be iterated once per open_video()")
        yield 0, first
        i = 1
        while True:
            ok, frame = self.cap.read()
            if not ok or frame is None:
                return
            yield i, frame
            i += 1

    def grab_retrieve(self, wanted: set[int]) -> Iterator[tuple[int, np.ndarray]]:
        """The wanted frame indices in order, decoding through the others without converting."""
        first = self._take_first()
        if first is None:
            raise VideoError("the video can only be read once per open_video()")
        last = max(wanted) if wanted else -1
        if 0 in wanted:
            yield 0, first
        i = 1
        while i <= last:
            if not self.cap.grab():
                return
            if i in wanted:
                ok, frame = self.cap.retrieve()
                if ok and frame is not None:
                    yield i, frame
            i += 1

    def seek_read(self, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """The wanted frame indices by seeking to each (cost depends on the keyframe interval)."""
        first = self._take_first()
        for i in sorted(wanted):
            if i == 0 and first is not None:
                yield 0, first
                continue
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, frame = self.cap.read()
            if ok and frame is not None:
                yield i, frame


def open_video(path, limits: Limits | None = None) -> Video:
    """Open ``path`` and decode its first frame; :class:`VideoError` if either fails.

    The decoding gate first (:mod:`~deepfake_detector.data.limits`): a regular file within
    ``max_video_mb``, whose frame size (from the container, before any frame is decoded) is
    within ``max_pixels``.
    """
    name = os.fspath(path)
    try:
        regular_file_size(name, "video", limits)
    except InputRefused as e:
        raise VideoError(f"cannot read video {name}: {e.reason}") from e
    try:
        cap = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            cap = cv2.VideoCapture(name)  # any other backend OpenCV has
        if not cap.isOpened():
            cap.release()
            raise VideoError(f"{name} could not be opened as a video (not a video, or a format "
                             f"OpenCV's FFmpeg backend cannot read)")
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        try:
            check_pixels(name, w, h, "video frame", limits)
        except InputRefused as e:
            cap.release()
            raise VideoError(f"cannot read video {name}: {e.reason}") from e
        ok, first = cap.read()
    except cv2.error as e:  # a decoder assertion on a crafted file
        raise VideoError(f"cannot read video {name}: the decoder failed ({_first_line(e)})") from e
    if not ok or first is None or first.size == 0:
        cap.release()
        raise VideoError(f"{name} opened but no frame could be decoded (corrupt or unsupported codec)")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not np.isfinite(fps) or fps <= 0 or fps > 1000:
        fps = FALLBACK_FPS
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    count = max(count, 0)
    h, w = first.shape[:2]
    info = VideoInfo(name, count, fps, int(w), int(h), count / fps if count else 0.0, _fourcc(cap))
    return Video(cap, info, first)


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def video_info(path) -> VideoInfo:
    """Frame count, fps, size and duration of a video (opens it and decodes one frame)."""
    with open_video(path) as v:
        return v.info


def count_frames(path) -> int:
    """Count the frames by decoding through them (exact, slow: one full decode pass)."""
    with open_video(path) as v:
        n = 1
        while v.cap.grab():
            n += 1
        return n


def sample_indices(frame_count: int, n_frames: int | None = DEFAULT_N_FRAMES,
                   every: int | None = None) -> list[int]:
    """Frame indices to sample: ``every`` k-th frame (0, k, 2k...) if given, else ``n_frames``
    spread evenly from the first to the last frame (all frames when the video has fewer).

    At most :data:`MAX_SAMPLED_FRAMES`: a container can claim billions of frames, and each
    sampled frame's face crop is kept until the video is classified, so a request for more is
    a ValueError (the video's error row) instead of unbounded memory."""
    if frame_count <= 0:
        return []
    if every is not None and int(every) < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if every is None and n_frames is not None and n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    n = -(-frame_count // int(every)) if every is not None else min(frame_count, n_frames or frame_count)
    if n > MAX_SAMPLED_FRAMES:
        raise ValueError(f"sampling {n} of the video's {frame_count} frames is over the limit of "
                         f"{MAX_SAMPLED_FRAMES} sampled frames per video; sample fewer (--frames, or a larger --every)")
    if every is not None:
        return list(range(0, frame_count, int(every)))
    if n_frames is None or n_frames >= frame_count:
        return list(range(frame_count))
    if n_frames == 1:
        return [frame_count // 2]
    return sorted(set(np.linspace(0, frame_count - 1, n_frames).round().astype(int).tolist()))


def iter_sampled(video: Video, n_frames: int | None = DEFAULT_N_FRAMES, every: int | None = None,
                 method: str = "grab", rgb: bool = True) -> Iterator[tuple[int, float, np.ndarray]]:
    """Like :func:`sample_frames` on an already opened :class:`Video`."""
    if method not in ("grab", "seek"):
        raise ValueError(f"method must be 'grab' or 'seek', got {method!r}")
    count = video.info.frame_count
    if count <= 0:  # the container does not say: count by decoding, then reopen
        count = count_frames(video.info.path)
        video.close()
        fresh = open_video(video.info.path)
        video.cap, video._first, video._pos = fresh.cap, fresh._first, 1
    wanted = sample_indices(count, n_frames, every)
    video.n_requested = len(wanted)
    frames = video.grab_retrieve(set(wanted)) if method == "grab" else video.seek_read(wanted)
    fps = video.info.fps
    for i, bgr in frames:
        yield i, i / fps, (cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if rgb else bgr)


def prefetch(iterator: Iterator, depth: int = 3) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead of the consumer.

    Decoding (OpenCV) and face detection (onnxruntime) both release the GIL, so decoding the
    next frames while the current one is analysed overlaps the two. Exceptions raised by the
    iterator are re-raised in the consumer; closing the consumer stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in iterator:
                if not put((None, item)):
                    return
            put((None, done))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((e, None))

    t = threading.Thread(target=work, name="deepfake-detector-decode", daemon=True)
    t.start()
    try:
        while True:
            err, item = q.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        t.join(timeout=5.0)


def sample_frames(path, n_frames: int | None = DEFAULT_N_FRAMES, every: int | None = None,
                  method: str = "grab", rgb: bool = True) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(index, time_s, frame)`` for frames sampled over the whole video.

    ``n_frames`` evenly spaced frames (default 32, first and last included), or, when
    ``every`` is given, every ``every``-th frame (``n_frames`` is then ignored). Frames are
    RGB ``uint8 (H, W, 3)`` (BGR with ``rgb=False``). Raises :class:`VideoError` when the
    file cannot be opened or decoded (a generator: on the first ``next()``). If the
    container over-reports its frame count, the frames past the real end are missing.

    ``method="grab"`` (sequential, the default) ``grab()``s every frame and ``retrieve()``s
    (converts to an image) only the wanted ones. H.264 must decode every frame from the last
    keyframe anyway, and DFDC clips have one keyframe for the whole clip, so a seek to frame k
    decodes k frames again: on a 10-s 1080p DFDC clip, 32 evenly spaced frames took 1.5 s by
    grab/retrieve and 16 s by seeking (``benchmarks/video.py``). ``method="seek"`` is kept for
    long videos with short keyframe intervals, where it can win.
    """
    with open_video(path) as video:
        yield from iter_sampled(video, n_frames, every, method, rgb)
