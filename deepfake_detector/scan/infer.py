"""The part of a scan that touches the model: identifying the model file, and inference on a
handful of files through :func:`deepfake_detector.predict.predict_paths` (the function behind
``deepfake-detector predict``) as slim RESULTS rows."""

from __future__ import annotations

import logging
import os

from ..results import COLUMNS, VIDEO_COLUMNS, error_row
from .sources import file_digest

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32  # files per inference task (the images of a task go through the model together)
DEFAULT_PART_ROWS = 1000  # rows per committed part ...
DEFAULT_PART_SECONDS = 30.0  # ... or whatever finished in this many seconds, whichever comes first
# what inference contributes to a row (the rest: path, hash, size, model, time)
RESULT_KEYS = (*COLUMNS[1:], "threshold", "message", "warning", *VIDEO_COLUMNS)


def slim(row: dict) -> dict:
    """The columns of a ``predict_paths`` row that go into RESULTS (frames etc. dropped)."""
    return {k: row.get(k) for k in RESULT_KEYS}


def infer_files(model, paths: list[str], faces: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
                n_frames: int = 32, detector=None) -> list[dict]:
    """One slim result per path, in order, from ``predict_paths`` (the CLI's function).

    Should ``predict_paths`` raise on the batch, each file is retried alone, so one bad file
    costs only its own row (an error row)."""
    from ..predict import predict_paths

    paths = [os.fspath(p) for p in paths]
    try:
        rows = list(predict_paths(paths, model, faces=faces, batch_size=batch_size, n_frames=n_frames,
                                  detector=detector))
        if len(rows) == len(paths):
            return [slim(r) for r in rows]
        err = f"predict_paths returned {len(rows)} results for {len(paths)} files"
    except Exception as e:  # noqa: BLE001 - reported in the file's row
        err = f"{type(e).__name__}: {e}"
    if len(paths) == 1:
        log.warning("%s: %s", paths[0], err)
        return [slim(error_row(paths[0], err))]
    return [infer_files(model, [p], faces, batch_size, n_frames, detector)[0] for p in paths]


def model_identity(model, model_path) -> dict:
    """What RESULTS record about the model: arch, version and the SHA-256 of its file."""
    d = model.describe()
    digest, _ = file_digest(model_path)
    return {"arch": d.get("arch"), "version": str(d.get("version")), "sha256": digest.hex(),
            "input_size": d.get("input_size"), "file": os.fspath(model_path)}
