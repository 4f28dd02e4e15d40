"""The part of a scan that touches the model: identifying the model file, and inference on a
handful of files through :func:`deepfake_detector.predict.predict_paths` (the function behind
``deepfake-detector predict``) as slim RESULTS rows."""

from __future__ import annotations

import logging
import os

from ..options import PredictOptions
from ..results import STORE_COLUMNS, error_row
from .sources import file_digest

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32  # files per inference task (the images of a task go through the model together)
DEFAULT_PART_ROWS = 1000  # rows per committed part ...
DEFAULT_PART_SECONDS = 30.0  # ... or whatever finished in this many seconds, whichever comes first
# what inference contributes to a row (the rest: path, hash, size, model, time)
RESULT_KEYS = tuple(name for name, _ in STORE_COLUMNS if name != "path")


def slim(row: dict) -> dict:
    """The columns of a ``predict_paths`` row that go into RESULTS (frames etc. dropped)."""
    return {k: row.get(k) for k in RESULT_KEYS}


def infer_files(model, paths: list[str], options: PredictOptions | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE, **changes) -> list[dict]:
    """One slim result per path, in order, from ``predict_paths`` (the CLI's function), framed
    and sampled as ``options`` say (or keyword changes to them).

    Should ``predict_paths`` raise on the batch, each file is retried alone
    (:func:`~deepfake_detector.predict.retry_alone`), so one bad file costs only its own row."""
    from ..predict import predict_paths, retry_alone

    opts = PredictOptions.of(options, **changes)
    paths = [os.fspath(p) for p in paths]
    rows = retry_alone(lambda ps: [slim(r) for r in predict_paths(ps, model, opts, batch_size=batch_size)],
                       paths, reraise=())
    return [slim(error_row(p, r)) if isinstance(r, str) else r for p, r in zip(paths, rows, strict=True)]


def worker_died(path, where: str = "worker process") -> dict:
    """The row of a file whose worker died again when it was analysed alone.

    The retry policy has two halves. In a process, :func:`infer_files` retries each file of a
    failed batch alone (:func:`~deepfake_detector.predict.retry_alone`). A file that kills the
    process (a decoder crash) takes its whole task with it; the scan runners (the local pool,
    Ray) then run each file of the lost tasks alone in a fresh worker, and a file that kills
    that one too gets this row."""
    return slim(error_row(os.fspath(path), f"the {where} died analysing this file"))


def model_identity(model, model_path) -> dict:
    """What RESULTS record about the model: arch, version and the SHA-256 of its file."""
    d = model.describe()
    digest, _ = file_digest(model_path)
    return {"arch": d.get("arch"), "version": str(d.get("version")), "sha256": digest.hex(),
            "input_size": d.get("input_size"), "file": os.fspath(model_path)}
