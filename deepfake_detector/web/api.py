"""The HTTP API, :func:`add_api_routes` / :func:`create_api`: ``POST /api/predict`` (one image or
video) answers with the object ``deepfake-detector predict --format json`` gives for that file, and
``GET /api/health`` with the model's description. Each upload lives in its own temporary folder,
removed when the answer is ready; :class:`SerialModel` serialises calls into a model that is not
thread-safe, while face detection and decoding run in parallel in the worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import threading
from pathlib import Path

from .. import __version__
from ..data.deadline import Cancelled, check_cancelled, run_cancellable
from ..options import DEFAULT_N_FRAMES, PredictOptions
from ..results import Result, is_error, json_safe, printable
from .guards import (
    DEFAULT_MAX_UPLOADS,
    DEFAULT_UPLOAD_DEADLINE,
    DEFAULT_UPLOAD_TIMEOUT,
    RETRY_AFTER_S,
    UploadSlots,
    check_positive,
)
from .uploads import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    UploadError,
    check_pixels,
    max_bytes,
    receive_file,
    safe_name,
    sniff,
)

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error; see the server log"
DISCONNECT_POLL_S = 0.25  # how often a request in progress looks whether its client is still there
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
# Files analysed at once by the web app and the API; the other requests wait with their upload
# on disk. Decoding runs one file at a time and the model is serialised anyway, so this costs no
# throughput, and it bounds the decoded pictures held at once (a 64-MP upload decodes to a
# 4096-px picture of 50 MB, held while its faces are found and scored).
ANALYSES_AT_ONCE = 4
_ANALYSES = threading.BoundedSemaphore(ANALYSES_AT_ONCE)


@contextlib.contextmanager
def analysis_slot():
    """Wait for one of :data:`ANALYSES_AT_ONCE` slots; a request cancelled while it waits stops."""
    while not _ANALYSES.acquire(timeout=DISCONNECT_POLL_S):
        check_cancelled()
    try:
        yield
    finally:
        _ANALYSES.release()


class SerialModel:
    """A model shared by threads: ``predict_proba`` and :meth:`explain` hold one lock unless
    the model declares itself thread-safe.

    Everything else (``input_size``, ``threshold``, ``describe()``...) is the wrapped model's.
    """

    def __init__(self, model):
        self.inner = model
        self.lock = contextlib.nullcontext() if model.abilities.thread_safe else threading.RLock()

    def __getattr__(self, name):  # only for names not defined here
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def predict_proba(self, images, batch_size: int = 64):
        with self.lock:
            return self.inner.predict_proba(images, batch_size=batch_size)

    def explain(self, face_crop, method: str = "auto"):
        from ..explain import explain

        with self.lock:
            return explain(self.inner, face_crop, method=method)


def serial(model) -> SerialModel:
    return model if isinstance(model, SerialModel) else SerialModel(model)


def predict_file(model, path, display_name: str, options: PredictOptions | None = None, **changes) -> Result:
    """The CLI's result for one file on disk, with ``path`` shown as ``display_name``; framed
    and sampled as ``options`` (or keyword changes to them) say, as
    :func:`~deepfake_detector.predict.predict_paths` takes them (by default the model's
    framing: ``NoFace`` for an image without a face)."""
    from ..predict import predict_paths

    with analysis_slot():
        row = next(iter(predict_paths([str(path)], model, options, **changes)))
    return rename_path(row, str(path), display_name)


def rename_path(row: Result, path: str, display_name: str) -> Result:
    """``path`` (and any mention of the temporary file in messages) -> ``display_name``."""
    row.path = display_name
    for key in ("error", "message"):
        if isinstance(getattr(row, key), str):
            setattr(row, key, getattr(row, key).replace(path, display_name))
    return row


def status_of(row: dict) -> int:
    """200, or 422 when the file could not be decoded (a face-less file is a result, not an error)."""
    return 422 if is_error(row) else 200


def parse_bool(value, default: bool | None = True) -> bool | None:
    if value is None or value == "":
        return default
    v = str(value).strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise UploadError(f"'faces' must be true or false, got {value!r}")


def health(model) -> dict:
    from ..cpu import cpu_line

    return {"status": "ok", "model": model.describe(), "version": __version__, "cpu": cpu_line()}


def add_api_routes(app, model, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, temp_dir=None,
                   n_frames: int = DEFAULT_N_FRAMES, prefix: str = "/api", max_pixels: int = DEFAULT_MAX_PIXELS,
                   detector=None, upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT,
                   upload_deadline: float = DEFAULT_UPLOAD_DEADLINE, max_uploads: int = DEFAULT_MAX_UPLOADS) -> None:
    """Add ``{prefix}/predict`` and ``{prefix}/health`` to a FastAPI ``app``.

    ``POST {prefix}/predict`` takes multipart/form-data with the file in the field ``file`` and
    an optional field ``faces`` (unset: the model's own framing, as ``predict`` does -- the
    default model classifies the largest face, and an image without one gets ``NoFace``;
    ``true``: the largest face; ``false``: the whole image). It answers with the object
    ``predict --format json`` gives for that file (the image row, or the video result), except
    that ``path`` is the client's file name.
    Status: 200; 413 for a file over the limit (``{"error": ...}``); 415 for an empty file or a
    type that is not a supported image or video, judged by content (``{"error": ...}``); 422
    when the file has a supported type but cannot be decoded (the result object, with
    ``error`` set); 400 for a request that is not a multipart upload; 408 for an upload that
    stalls or takes too long; 503 (with ``Retry-After``, the body not read) when
    ``max_uploads`` requests are already in progress; 500 ``{"error": "internal error; see
    the server log"}`` for anything unexpected (the traceback goes to the log, not the client).

    ``max_upload_mb``: the largest file accepted (413 above); ``max_pixels``: the largest image
    (by its header) accepted; ``temp_dir``: where each request's temporary folder is made
    (default: the system's); ``n_frames``: frames sampled per video (as ``predict --frames``);
    ``detector``: a face detector (default: the default one); ``upload_timeout``: seconds
    without a byte before an upload is cut off; ``upload_deadline``: seconds for a whole
    upload; ``max_uploads``: ``/api/predict`` requests in progress at a time (upload and
    prediction; health checks are not counted).
    """
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    model = serial(model)
    max_bytes(max_upload_mb)  # a bad limit fails here, not at the first request
    check_positive(upload_timeout=upload_timeout, upload_deadline=upload_deadline)
    slots = UploadSlots(max_uploads)

    def error(status: int, message: str, headers: dict | None = None):
        if status in (408, 413, 503):  # the rest of the body is not read
            headers = {**(headers or {}), "Connection": "close"}
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def predict(request: Request):
        if not slots.try_acquire():
            return error(503, f"busy: {slots.n} uploads in progress; retry later",
                         {"Retry-After": str(RETRY_AFTER_S)})
        try:
            return await predict_one(request)
        except Exception:  # noqa: BLE001  the details go to the log, not to the client
            log.exception("/api/predict failed")
            return error(500, INTERNAL_ERROR)
        finally:
            slots.release()

    async def predict_one(request):
        with tempfile.TemporaryDirectory(prefix="dfd-upload-", dir=temp_dir, ignore_cleanup_errors=True) as tmp:
            try:
                got = await receive_file(request, tmp, max_upload_mb, idle_timeout=upload_timeout,
                                         deadline=upload_deadline)
                ftype = sniff(got.head)
                faces = parse_bool(got.fields.get("faces"), None)  # None: the model's framing
                if ftype.kind == "image":
                    check_pixels(got.path, max_pixels)
            except UploadError as e:
                return error(e.status, e.message)
            name = safe_name(got.filename, default="upload" + ftype.ext)
            path = Path(tmp) / ("upload" + ftype.ext)  # the library reads by extension: use the sniffed one
            got.path.rename(path)
            cancel = threading.Event()
            options = PredictOptions(faces=faces, n_frames=n_frames, detector=detector)
            work = asyncio.ensure_future(run_in_threadpool(run_cancellable, cancel, predict_file, model, path,
                                                           name, options))
            try:
                # the slot is held until the work has stopped, so a client that leaves frees nothing early
                while not (await asyncio.wait({work}, timeout=DISCONNECT_POLL_S))[0]:
                    if not cancel.is_set() and await request.is_disconnected():
                        log.info("the client left; stopping the work on %s", printable(name))
                        cancel.set()
                row = work.result()
            except Cancelled:
                return error(499, "the client closed the request")
            except Exception:  # noqa: BLE001  a set-up error (no detector...) must not kill the server
                log.exception("predict failed for %s", name)
                return error(500, INTERNAL_ERROR)
            return JSONResponse(json_safe(row), status_code=status_of(row))

    predict.__annotations__ = {"request": Request}  # a real class: this module postpones annotations

    async def get_health():
        return health(model)

    app.add_api_route(f"{prefix}/predict", predict, methods=["POST"], summary="Classify one image or video",
                      response_class=JSONResponse)
    app.add_api_route(f"{prefix}/health", get_health, methods=["GET"], summary="Model and version")
    add_json_refusals(app, prefix, {f"{prefix}/predict": ["POST"], f"{prefix}/health": ["GET", "HEAD"]})


def add_json_refusals(app, prefix: str, routes: dict[str, list[str]]) -> None:
    """Every refusal under ``prefix`` as ``{"error": ...}`` JSON: 405 (with ``Allow``) for a
    known path asked with another method, 404 for an unknown one. Routes, not an exception
    handler, so that a UI mounted at ``/`` (which catches every other path) cannot answer
    for the API."""
    from fastapi.responses import JSONResponse

    others = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    for path, allowed in routes.items():
        def wrong_method(allowed=allowed):
            return JSONResponse({"error": f"method not allowed; use {' or '.join(allowed)}"}, status_code=405,
                                headers={"Allow": ", ".join(allowed)})

        app.add_api_route(path, wrong_method, methods=[m for m in others if m not in allowed],
                          include_in_schema=False)

    def not_found(rest: str):
        return JSONResponse({"error": f"no such endpoint: {prefix}/{printable(rest)[:200]}"}, status_code=404)

    app.add_api_route(prefix + "/{rest:path}", not_found, methods=others, include_in_schema=False)


def create_api(model, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, temp_dir=None, n_frames: int = DEFAULT_N_FRAMES,
               upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT, upload_deadline: float = DEFAULT_UPLOAD_DEADLINE,
               max_uploads: int = DEFAULT_MAX_UPLOADS, detector=None):
    """A FastAPI app with the API routes only (no Gradio UI): see :func:`..app.create_app`."""
    from fastapi import FastAPI

    app = FastAPI(title="deepfake-detector", version=__version__, docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    add_api_routes(app, model, max_upload_mb, temp_dir, n_frames, detector=detector, upload_timeout=upload_timeout,
                   upload_deadline=upload_deadline, max_uploads=max_uploads)
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def json_error(request, exc: HTTPException):  # any other path or method: JSON too
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(HTTPException, json_error)
    return app
