"""Show a video analysis: an annotated copy of the video and a timeline plot."""

from __future__ import annotations

import bisect
import os
from pathlib import Path

import cv2
import numpy as np

from ..results import verdict_colour
from .read import FALLBACK_FPS, VideoError, open_video

WHITE = (255, 255, 255)


def _verdict_text(result: dict) -> str:
    label = result.get("label") or "?"
    p = result.get("p_fake")
    if p is None:
        return label.upper() if label else "?"
    conf = result.get("confidence")
    return f"{label.upper()}  P(fake)={p:.2f}" + (f" ({conf})" if conf else "")


def _verdict_color(result: dict):
    return verdict_colour(result.get("label"), "bgr")


def _draw_label(img, text, org, color, scale, thickness):
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    x, y = int(org[0]), int(org[1])
    y = max(y, th + base + 2)
    cv2.rectangle(img, (x, y - th - base - 2), (x + tw + 4, y + 2), color, -1)
    cv2.putText(img, text, (x + 2, y - base // 2), font, scale, WHITE, thickness, cv2.LINE_AA)


def draw_faces(bgr: np.ndarray, faces: list[dict], threshold: float = 0.5) -> np.ndarray:
    """Draw ``[{"box": [x1, y1, x2, y2], "score": P(fake) or None}]`` onto a BGR frame in place."""
    h = bgr.shape[0]
    scale = max(0.4, h / 900)
    thick = max(1, round(h / 400))
    for f in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in f["box"])
        s = f.get("score")
        color = verdict_colour(None if s is None else "Fake" if s >= threshold else "Real", "bgr")
        cv2.rectangle(bgr, (x1, y1), (x2, y2), color, thick)
        text = "face" if s is None else f"{'Fake' if s >= threshold else 'Real'} {s:.2f}"
        _draw_label(bgr, text, (x1, y1 - 2), color, scale, thick)
    return bgr


def draw_verdict(bgr: np.ndarray, text: str, color) -> np.ndarray:
    """The video's verdict in the top-left corner."""
    h = bgr.shape[0]
    scale = max(0.5, h / 700)
    thick = max(1, round(h / 350))
    _draw_label(bgr, text, (10, 10 + int(30 * scale)), color, scale, thick)
    return bgr


def annotate_video(path, result: dict | None, out_path, model=None, detector=None, **analyze_kw) -> dict:
    """Write ``out_path`` (mp4, 'mp4v') with every frame of ``path``: face boxes and scores on
    the sampled frames (carried forward to the frames in between) and the verdict in a corner.

    ``result`` is :func:`~deepfake_detector.video.analyze.analyze_video`'s dict for this file;
    with ``result=None`` the video is analysed first with ``model`` and ``detector``.
    Same frame count, size and fps as the input. Returns ``{"path", "frames_written",
    "width", "height", "fps"}``; raises :class:`VideoError` if the input cannot be read or the
    output cannot be written.
    """
    if result is None:
        if model is None:
            raise ValueError("annotate_video needs a result or a model to compute one")
        from .analyze import analyze_video

        result = analyze_video(path, model, detector=detector, **analyze_kw)
    if result.get("error"):
        raise VideoError(f"cannot annotate {path}: {result['error']}")
    threshold = float(result.get("threshold") or getattr(model, "threshold", 0.5) or 0.5)
    sampled = sorted((fr["index"], fr.get("faces") or []) for fr in result.get("frames", []))
    keys = [i for i, _ in sampled]
    verdict, vcolor = _verdict_text(result), _verdict_color(result)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open_video(path) as video:
        info = video.info
        fps = info.fps if info.fps > 0 else FALLBACK_FPS
        writer = cv2.VideoWriter(os.fspath(out_path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                 (info.width, info.height))
        if not writer.isOpened():
            raise VideoError(f"could not open {out_path} for writing (mp4v)")
        try:
            for i, bgr in video.frames():
                if bgr.shape[1] != info.width or bgr.shape[0] != info.height:
                    bgr = cv2.resize(bgr, (info.width, info.height))
                k = bisect.bisect_right(keys, i) - 1  # last sampled frame at or before i
                if k >= 0:
                    draw_faces(bgr, sampled[k][1], threshold)
                draw_verdict(bgr, verdict, vcolor)
                writer.write(bgr)
                written += 1
        finally:
            writer.release()
    return {"path": os.fspath(out_path), "frames_written": written, "width": info.width,
            "height": info.height, "fps": fps}


def plot_timeline(result: dict, out_png, title: str | None = None) -> str:
    """Frame P(fake) over time (points), the smoothed timeline (line), the decision threshold
    (dashed) and the verdict in the title; written as a PNG with matplotlib's Agg backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frames = result.get("frames") or []
    threshold = float(result.get("threshold") or 0.5)
    t = [fr["time"] for fr in frames if fr.get("score") is not None]
    s = [fr["score"] for fr in frames if fr.get("score") is not None]
    smoothed = result.get("timeline_smoothed") or []
    sm = [(fr["time"], v) for fr, v in zip(frames, smoothed, strict=False) if v is not None]
    no_face = [fr["time"] for fr in frames if fr.get("score") is None]

    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if s:
        ax.plot(t, s, "o", ms=4, alpha=0.6, color="tab:blue", label="frame P(fake)")
    if sm:
        ax.plot([a for a, _ in sm], [b for _, b in sm], "-", lw=2, color="tab:orange", label="smoothed")
    if no_face:
        ax.plot(no_face, [0.0] * len(no_face), "x", color="grey", label="no face")
    ax.axhline(threshold, ls="--", color="tab:red", lw=1, label=f"threshold {threshold:.2f}")
    ax.set_ylim(-0.03, 1.03)
    dur = result.get("duration")
    if dur:
        ax.set_xlim(0, dur)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("P(fake)")
    name = Path(str(result.get("path", ""))).name
    ax.set_title(title or f"{name}: {_verdict_text(result)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(os.fspath(out_png), format="png")
    return os.fspath(out_png)


def numbered(path: str, video: str, n: int) -> str:
    """The first video writes to ``path``; later ones to ``path`` with the video's name added."""
    if n == 0:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{Path(video).stem}{p.suffix}"))


def write_video_outputs(result: dict, annotate: str | None = None, timeline: str | None = None, n: int = 0) -> None:
    """``predict --annotate / --timeline`` for the ``n``-th video of a run: the annotated copy
    and the score plot, numbered after the first so that several videos do not collide."""
    if annotate:
        annotate_video(result["path"], result, numbered(annotate, result["path"], n))
    if timeline:
        plot_timeline(result, numbered(timeline, result["path"], n))
