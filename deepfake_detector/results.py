"""One typed result per input, and everything that reads one: the verdict and confidence
rules, the colours a verdict is drawn in, the result types (:class:`ImageResult`,
:class:`VideoResult`, :class:`FaceScore`) whose fields are the only list of the columns, and
the table / CSV / JSON writers derived from them (a scan's schema and the web table are too).

``predict``, video analysis, ``watch``, ``scan``, the web app and the CLI all make and print
their results here, so a label means the same everywhere.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TextIO

import numpy as np

from .data.datasets import CLASS_NAMES
from .data.media import kind_of
from .text import printable, unsurrogate  # noqa: F401  (printable: re-exported for the writers' callers)

REAL, FAKE = CLASS_NAMES
NO_FACE = "NoFace"  # faces were asked for and none was found: no verdict, not a failure
ERROR = "Error"  # the input could not be read or analysed: ``error`` says why
FORMATS = ("table", "json", "csv")
# how a verdict is drawn, everywhere (web app, annotated videos): RGB
VERDICT_COLOURS = {FAKE: (220, 38, 38), REAL: (22, 163, 74)}
NO_VERDICT_COLOUR = (107, 114, 128)  # NoFace, Error


def verdict_colour(label: str | None, order: str = "rgb") -> tuple[int, int, int]:
    """The colour of a verdict, as RGB (or ``order="bgr"`` for OpenCV frames)."""
    rgb = VERDICT_COLOURS.get(label, NO_VERDICT_COLOUR)
    return rgb[::-1] if order == "bgr" else rgb


def verdict_hex(label: str | None) -> str:
    return "#" + "".join(f"{c:02x}" for c in verdict_colour(label))


def verdict(p: float | None, threshold: float) -> str:
    """Fake when P(fake) >= threshold, else Real; NoFace when there is no score."""
    if p is None:
        return NO_FACE
    return FAKE if p >= threshold else REAL


def confidence_level(p: float | None, threshold: float | None = 0.5) -> str | None:
    """How far P(fake) ``p`` lies from the threshold t, as a share of the room on its
    verdict's side: m = (p - t) / (1 - t) for a Fake verdict, (t - p) / t for a Real one.
    HIGH when m > 0.6, MEDIUM when m > 0.2, else LOW (None for no score). It reads with the
    label: a Real verdict just under the threshold is LOW however far ``p`` is from 0.5. At a
    threshold of 0.5 this is max(p, 1 - p) > 0.8 / > 0.6."""
    if p is None or not math.isfinite(p):
        return None
    t = 0.5 if threshold is None else float(threshold)
    # the margins as cut points on P(fake) (so that at t = 0.5 they are 0.8 / 0.6 exactly)
    if p >= t:
        return "HIGH" if p > t + 0.6 * (1 - t) else "MEDIUM" if p > t + 0.2 * (1 - t) else "LOW"
    return "HIGH" if p < 0.4 * t else "MEDIUM" if p < 0.8 * t else "LOW"


# A video verdict needs one sampled frame with a face. When fewer than this share of the
# requested frames could be decoded (a truncated or damaged file), the verdict stands on what
# was read, but its confidence is LOW and the row's ``warning`` says how many frames it saw.
VIDEO_MIN_DECODED_SHARE = 0.5


def video_confidence(p: float | None, n_decoded: int, n_requested: int | None,
                     threshold: float | None = 0.5) -> tuple[str | None, str | None]:
    """(confidence, warning) of a video verdict from ``n_decoded`` of ``n_requested`` frames."""
    level = confidence_level(p, threshold)
    if not n_requested or n_decoded >= VIDEO_MIN_DECODED_SHARE * n_requested:
        return level, None
    warning = (f"only {n_decoded} of the {n_requested} requested frames could be decoded (the file may be "
               f"truncated or damaged): the verdict rests on those alone")
    return ("LOW" if level is not None else None), warning


def rounded(x, nd: int = 6):
    """``x`` rounded to ``nd`` places; None for None and for NaN or infinity (JSON has neither)."""
    if x is None or not math.isfinite(float(x)):
        return None
    return round(float(x), nd)


# --- the result types -----------------------------------------------------------------------
def column(default=None, *, arrow: str | None = None, csv: bool = False, web: str | None = None,
           factory=None):
    """A result field that is a column: ``arrow`` its type in a scan's RESULTS (None: not
    stored), ``csv`` whether ``predict --format csv`` writes it, ``web`` its header in the web
    app's table (None: not shown)."""
    meta = {"arrow": arrow, "csv": csv, "web": web}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def pixels():
    """A field that holds pixels for the caller (the web app draws from it): never a column,
    never written out."""
    return field(default=None, repr=False, compare=False, metadata={"pixels": True})


class _Row(Mapping):
    """A result read as the row it is written as: ``r["p_fake"]``, ``r.get("face")``, ``dict(r)``.
    Its keys are its fields, less the pixels (and less what :meth:`_omitted` leaves out)."""

    def _omitted(self) -> tuple[str, ...]:
        return ()

    def _keys(self) -> list[str]:
        skip = self._omitted()
        return [name for name in _row_fields(type(self)) if name not in skip]

    def __getitem__(self, key):
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._keys())

    def __len__(self):
        return len(self._keys())

    def to_dict(self) -> dict:
        """Plain JSON-ready values: nested results as dicts."""
        return {k: _plain(getattr(self, k)) for k in self._keys()}


@functools.cache
def _row_fields(cls) -> tuple[str, ...]:
    """The fields of a result type that are row keys (all but the pixels), once per type."""
    return tuple(f.name for f in fields(cls) if not f.metadata.get("pixels"))


def _plain(v):
    if isinstance(v, _Row):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


@dataclass(eq=False)
class FaceScore(_Row):
    """One face: its box (x1, y1, x2, y2 in the image's pixels), the detector's score and the
    model's P(fake) for it; ``crop`` is the model's input for it (kept for the caller only)."""

    box: list[float]
    det_score: float
    score: float | None = None
    crop: np.ndarray | None = pixels()

    @classmethod
    def of(cls, face, crop=None, score: float | None = None) -> FaceScore:
        """From a detector's :class:`~deepfake_detector.faces.detect.Face`."""
        return cls([round(float(v), 1) for v in face.box], round(float(face.score), 4), score, crop)


@dataclass(eq=False)
class Result(_Row):
    """What every result has, in the order the writers print it."""

    path: str = column(arrow="string", csv=True, web="file")
    kind: str = column("image", arrow="string", csv=True)
    p_fake: float | None = column(arrow="float64", csv=True, web="p_fake")
    label: str | None = column(arrow="string", csv=True, web="label")
    confidence: str | None = column(arrow="string", csv=True, web="confidence")
    threshold: float | None = column(arrow="float64")
    error: str | None = column(arrow="string", csv=True, web="error")
    message: str | None = column(arrow="string", web="message")

    def __post_init__(self):
        self.path = os.fspath(self.path)

    @property
    def failed(self) -> bool:
        return self.label == ERROR

    def fail(self, error: str, message: str | None = None) -> Result:
        """This result turned into a failure: no score, ``label`` Error, ``error`` (and ``message``) set."""
        self.p_fake, self.label, self.confidence, self.error, self.message = None, ERROR, None, error, message
        return self

    def judge(self, p: float | None, threshold: float | None) -> Result:
        """Score, label and confidence from P(fake) ``p`` at ``threshold``."""
        self.p_fake = rounded(p)
        self.label = verdict(p, threshold)  # from the score itself, not its rounding
        self.confidence = confidence_level(p, threshold)
        return self


@dataclass(eq=False)
class ImageResult(Result):
    """One image. ``faces`` is None when the whole image was scored, else one
    :class:`FaceScore` per face used (the largest first; empty: ``NoFace``). ``image`` is the
    decoded picture (kept only when the caller asked: the web app draws on it)."""

    face: list[float] | None = column(web="face")
    faces: list[FaceScore] | None = None
    crop: np.ndarray | None = pixels()
    image: np.ndarray | None = pixels()

    def _omitted(self):
        return ("face", "faces") if self.faces is None else ()

    def __post_init__(self):
        super().__post_init__()
        if self.faces is not None and self.face is None and self.faces:
            self.face = self.faces[0].box


@dataclass(eq=False)
class VideoResult(Result):
    """One video: the verdict over its sampled frames (video analysis fills it as far as it
    gets). ``frames``: one ``{"index", "time", "faces": [FaceScore], "score"}`` per sampled frame."""

    kind: str = column("video", arrow="string", csv=True)
    aggregation: str | None = None
    p_fake_mean: float | None = column(arrow="float64")
    p_fake_confident: float | None = column(arrow="float64")
    n_frames_requested: int | None = column(arrow="int32")
    n_frames: int = column(0, arrow="int32")
    n_frames_with_faces: int = column(0, arrow="int32")
    n_faces: int = column(0, arrow="int32")
    fps: float | None = column(arrow="float64")
    duration: float | None = column(arrow="float64")
    width: int | None = column(arrow="int32")
    height: int | None = column(arrow="int32")
    frame_count: int | None = None
    flicker: float | None = column(arrow="float64")
    timeline_smoothed: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    model: dict | None = None
    detector: str | None = None
    timings: dict = field(default_factory=dict)
    warning: str | None = column(arrow="string")


RESULT_TYPES = (ImageResult, VideoResult)
# every column's field, by name, in the order the writers print them (an image's, then a video's own)
_FIELDS = {f.name: f for cls in reversed(RESULT_TYPES) for f in fields(cls)}
_FIELDS = {name: _FIELDS[name] for cls in RESULT_TYPES for name in (f.name for f in fields(cls))}
COLUMNS = tuple(n for n, f in _FIELDS.items() if f.metadata.get("csv"))  # every row has them; the CSV's
STORE_COLUMNS = tuple((n, f.metadata["arrow"]) for n, f in _FIELDS.items() if f.metadata.get("arrow"))
WEB_COLUMNS = tuple((n, f.metadata["web"]) for n, f in _FIELDS.items() if f.metadata.get("web"))
# the CLI's table: (column, width, alignment); the path last, as long as it is
TABLE_COLUMNS = (("label", 7, "<"), ("p_fake", 7, ">"), ("confidence", 10, "<"), ("path", 0, "<"))


def image_row(path, p_fake: float | None, threshold: float | None, error: str | None = None,
              message: str | None = None, faces: list[FaceScore] | None = None, **pixels_) -> ImageResult:
    """The result of one image: ``label`` Real / Fake, NoFace (no score, no error) or Error."""
    r = ImageResult(path, threshold=rounded(threshold), faces=faces, **pixels_).judge(p_fake, threshold)
    r.message = message
    return r.fail(error) if error is not None else r


def video_row(path, error: str | None = None) -> VideoResult:
    """The skeleton of one video's result (video analysis fills it as far as it gets)."""
    r = VideoResult(path)
    return r.fail(error, error) if error else r


def error_row(path, error: str, kind: str | None = None, threshold: float | None = None) -> Result:
    """The result of an input that could not be used: ``label`` Error, ``error`` why."""
    kind = kind or kind_of(path) or "image"
    if kind == "video":
        return video_row(path, error)
    r = ImageResult(path, threshold=rounded(threshold))
    return r.fail(error)


def is_error(row) -> bool:
    return row.get("label") == ERROR


# --- writers ------------------------------------------------------------------------------
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting so as a formula


def csv_cell(value):
    """A CSV cell: text escaped as :func:`unsurrogate` does, and a cell that a spreadsheet
    would run as a formula (``=HYPERLINK(...)``) prefixed with ``'``; numbers as they are."""
    if not isinstance(value, str):
        return value
    value = unsurrogate(value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def json_safe(obj):
    """``obj`` with every NaN or infinite float replaced by None (strict JSON has neither) and
    every string made writable (:func:`unsurrogate`)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        return unsurrogate(obj)
    if isinstance(obj, Mapping):  # a dict, or a result
        return {unsurrogate(str(k)): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _cells(values) -> str:
    return " ".join(f"{v:{align}{width}}" if width else v for v, (_, width, align) in zip(values, TABLE_COLUMNS))


def table_header() -> str:
    """The first line of the CLI's table: the names of :data:`TABLE_COLUMNS`."""
    return _cells([name for name, _, _ in TABLE_COLUMNS])


def table_line(row) -> str:
    """One row as the CLI's table prints it (:data:`TABLE_COLUMNS`: label, P(fake),
    confidence, path, then any note in brackets); file names and messages escaped by
    :func:`printable`."""
    p = "-" if row.get("p_fake") is None else f"{row['p_fake']:.4f}"
    notes = [row["error"]] if row.get("error") else [n for n in (row.get("warning"), row.get("message")) if n]
    extra = f"  ({printable('; '.join(notes))})" if notes else ""
    return _cells([row.get("label") or "-", p, row.get("confidence") or "-", printable(row["path"])]) + extra


class RowWriter:
    """Rows to ``out`` as they come (``table``, ``csv``), or as one JSON list at :meth:`close`."""

    def __init__(self, fmt: str = "table", out: TextIO | None = None, columns=COLUMNS):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        self.fmt, self.out, self.columns = fmt, out or sys.stdout, tuple(columns)
        self.rows: list[dict] = []
        self._csv = None
        self._header_done = False

    def write(self, row: dict) -> None:
        if self.fmt == "json":
            self.rows.append(row)
        elif self.fmt == "csv":
            if self._csv is None:
                self._csv = csv.DictWriter(self.out, fieldnames=list(self.columns), extrasaction="ignore")
                self._csv.writeheader()
            self._csv.writerow({k: csv_cell(row.get(k)) for k in self.columns})
        else:
            if not self._header_done:
                print(table_header(), file=self.out)
                self._header_done = True
            print(table_line(row), file=self.out)

    def close(self) -> None:
        if self.fmt == "json":
            print(json.dumps(json_safe(self.rows), indent=2, allow_nan=False), file=self.out)
        self.out.flush()


def write_csv(rows, path, columns=COLUMNS) -> str:
    """``rows`` as a CSV file at ``path`` (the columns of ``predict --format csv``)."""
    with open(path, "w", newline="") as f:
        w = RowWriter("csv", f, columns)
        for r in rows:
            w.write(r)
    return os.fspath(path)
