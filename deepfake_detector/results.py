"""One result per input: the verdict and confidence rules, the image, video and error rows,
the columns every row has, and the table / CSV / JSON writers.

``predict``, video analysis, ``watch``, ``scan``, the web app and the CLI all make and print
their rows here, so a label means the same everywhere.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from typing import TextIO

from .data.datasets import CLASS_NAMES
from .data.media import kind_of
from .text import printable, unsurrogate  # noqa: F401  (printable: re-exported for the writers' callers)

REAL, FAKE = CLASS_NAMES
NO_FACE = "NoFace"  # faces were asked for and none was found: no verdict, not a failure
ERROR = "Error"  # the input could not be read or analysed: ``error`` says why
LABELS = (REAL, FAKE, NO_FACE, ERROR)
COLUMNS = ("path", "kind", "p_fake", "label", "confidence", "error")  # what every row has; the CSV columns
# a video row's summary, beside COLUMNS
VIDEO_COLUMNS = ("n_frames_requested", "n_frames", "n_frames_with_faces", "n_faces", "p_fake_mean",
                 "p_fake_confident", "flicker", "fps", "duration", "width", "height")
FORMATS = ("table", "json", "csv")


def verdict(p: float | None, threshold: float) -> str:
    """Fake when P(fake) >= threshold, else Real; NoFace when there is no score."""
    if p is None:
        return NO_FACE
    return FAKE if p >= threshold else REAL


def confidence_level(p: float | None) -> str | None:
    """HIGH if max(p, 1 - p) > 0.8, MEDIUM if > 0.6, else LOW (None for no score)."""
    if p is None or not math.isfinite(p):
        return None
    c = max(p, 1.0 - p)
    return "HIGH" if c > 0.8 else "MEDIUM" if c > 0.6 else "LOW"


# A video verdict needs one sampled frame with a face. When fewer than this share of the
# requested frames could be decoded (a truncated or damaged file), the verdict stands on what
# was read, but its confidence is LOW and the row's ``warning`` says how many frames it saw.
VIDEO_MIN_DECODED_SHARE = 0.5


def video_confidence(p: float | None, n_decoded: int, n_requested: int | None) -> tuple[str | None, str | None]:
    """(confidence, warning) of a video verdict from ``n_decoded`` of ``n_requested`` frames."""
    level = confidence_level(p)
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


def image_row(path, p_fake: float | None, threshold: float | None, error: str | None = None,
              message: str | None = None, **extra) -> dict:
    """The row of one image: ``label`` Real / Fake, NoFace (no score, no error) or Error."""
    row = {"path": os.fspath(path), "kind": "image", "p_fake": rounded(p_fake),
           "label": ERROR if error is not None else verdict(p_fake, threshold),
           "confidence": None if error is not None else confidence_level(p_fake),
           "threshold": rounded(threshold), "error": error, "message": message}
    row.update(extra)
    return row


def video_row(path, error: str | None = None) -> dict:
    """The row skeleton of one video (video analysis fills it as far as it gets)."""
    return {"path": os.fspath(path), "kind": "video", "p_fake": None, "label": ERROR if error else None,
            "confidence": None, "aggregation": None, "threshold": None, "p_fake_mean": None,
            "p_fake_confident": None, "n_frames_requested": None, "n_frames": 0, "n_frames_with_faces": 0, "n_faces": 0,
            "fps": None, "duration": None, "width": None, "height": None, "frame_count": None,
            "flicker": None, "timeline_smoothed": [], "frames": [], "model": None, "detector": None,
            "timings": {}, "message": error, "warning": None, "error": error}


def error_row(path, error: str, kind: str | None = None, threshold: float | None = None) -> dict:
    """The row of an input that could not be used: ``label`` Error, ``error`` why."""
    kind = kind or kind_of(path) or "image"
    if kind == "video":
        return video_row(path, error)
    return image_row(path, None, threshold, error)


def mark_error(row: dict, error: str) -> dict:
    """``row`` turned into a failure: no score, ``label`` Error, ``error`` (and ``message``) set."""
    row.update(p_fake=None, label=ERROR, confidence=None, error=error, message=error)
    return row


def is_error(row: dict) -> bool:
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
    if isinstance(obj, dict):
        return {unsurrogate(str(k)): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def table_line(row: dict) -> str:
    """One row as the CLI's table prints it: label, P(fake), confidence, path (note); file
    names and messages escaped by :func:`printable`."""
    p = "-" if row.get("p_fake") is None else f"{row['p_fake']:.4f}"
    notes = [row["error"]] if row.get("error") else [n for n in (row.get("warning"), row.get("message")) if n]
    extra = f"  ({printable('; '.join(notes))})" if notes else ""
    return f"{row.get('label') or '-':7} {p:>7} {row.get('confidence') or '-':7} {printable(row['path'])}{extra}"


class RowWriter:
    """Rows to ``out`` as they come (``table``, ``csv``), or as one JSON list at :meth:`close`."""

    def __init__(self, fmt: str = "table", out: TextIO | None = None, columns=COLUMNS):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        self.fmt, self.out, self.columns = fmt, out or sys.stdout, tuple(columns)
        self.rows: list[dict] = []
        self._csv = None

    def write(self, row: dict) -> None:
        if self.fmt == "json":
            self.rows.append(row)
        elif self.fmt == "csv":
            if self._csv is None:
                self._csv = csv.DictWriter(self.out, fieldnames=list(self.columns), extrasaction="ignore")
                self._csv.writeheader()
            self._csv.writerow({k: csv_cell(row.get(k)) for k in self.columns})
        else:
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
