"""Decodes whose cost no header bounds, run in a worker process that is killed at a deadline;
and the cancel scope that lets a caller (a web request whose client left) stop its work.

A JPEG's cost is bounded before it is decoded (pixels, and scans counted in the marker walk),
so it is decoded in the calling process. Every other format goes to a worker: Pillow's
decoders for PNG, WebP, GIF, TIFF... are linear in the pixels for honest files, but no header
says what a crafted one costs, and a decoder that loops, or crashes, must cost one file its
row and nothing else. The worker gets the encoded bytes and sends back the decoded array in
one copy; it is kept for the next file and replaced when it is killed.

:func:`cancel_scope` marks the work of the calling thread as cancellable: a decode in a worker
is killed as soon as the scope's event is set, and long loops (files of a batch, frames of a
video) call :func:`check_cancelled` between steps.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

import numpy as np

__all__ = ["Cancelled", "DecodeTimeout", "cancel_scope", "check_cancelled", "decode_in_worker", "run_cancellable",
           "shutdown"]

_POLL_S = 0.05  # how often a waiting caller looks at its cancel event
_KEEP_IDLE = 2  # workers kept for the next decode
# Decodes in workers at once, whatever the number of threads asking: a 64-MP PNG peaks at about
# half a gigabyte in its worker, so eight uploads at once would need four gigabytes (two at once
# took the server with the default model to 1.7 GB); the rest wait their turn, and their deadline
# starts when their decode does. JPEGs, most photos, are decoded in the caller and do not queue.
MAX_BUSY = 1
_START_S = 60.0  # a worker's start (its imports) is not counted in the deadline, but is bounded too


class Cancelled(BaseException):
    """The caller's cancel event was set (its client left): the work stopped. A BaseException,
    like ``asyncio.CancelledError``, so that no ``except Exception`` that keeps a batch going
    turns it into one file's error."""


class DecodeTimeout(Exception):
    """The worker did not finish within the deadline; it was killed."""


_local = threading.local()


@contextlib.contextmanager
def cancel_scope(event: threading.Event):
    """Work done by this thread inside the block stops (:class:`Cancelled`) once ``event`` is set."""
    previous = getattr(_local, "event", None)
    _local.event = event
    try:
        yield event
    finally:
        _local.event = previous


def run_cancellable(event: threading.Event, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` inside :func:`cancel_scope` (``event``): for a worker thread."""
    with cancel_scope(event):
        return fn(*args, **kwargs)


def check_cancelled() -> None:
    """:class:`Cancelled` if this thread's cancel scope was cancelled."""
    event = getattr(_local, "event", None)
    if event is not None and event.is_set():
        raise Cancelled("the request was cancelled")


class _Worker:
    """One child process that decodes what it is sent, one image at a time. A fresh interpreter
    (no fork of a process with threads: onnxruntime's, the web server's) that imports only this
    module, never the caller's main script."""

    def __init__(self):
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(to_child), str(from_child)], pass_fds=(to_child, from_child),
                stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            os.close(to_child)
            os.close(from_child)
        self.send_conn = Connection(from_parent, readable=False)
        self.conn = Connection(to_parent, writable=False)
        self.ready = False  # the child says so once its imports are done: the deadline starts after

    def _wait_ready(self) -> None:
        end = time.monotonic() + _START_S
        while not self.conn.poll(_POLL_S):
            check_cancelled()
            if time.monotonic() > end or self.proc.poll() is not None:
                raise EOFError("the decode worker did not start")
        self.conn.recv()
        self.ready = True

    def decode(self, data: bytes, name: str, seconds: float, options: dict) -> np.ndarray:
        if not self.ready:
            self._wait_ready()
        try:
            self.send_conn.send((data, name, options))
        except OSError as e:  # the worker died since its last decode
            raise EOFError from e
        end = time.monotonic() + seconds
        while not self.conn.poll(_POLL_S):
            check_cancelled()
            if time.monotonic() > end:
                raise DecodeTimeout(name)
            if self.proc.poll() is not None:
                raise EOFError
        status, payload = self.conn.recv()
        if status != "ok":
            raise payload  # the ImageDecodeError the worker raised
        out = np.empty(payload, np.uint8)
        self.conn.recv_bytes_into(memoryview(out).cast("B"))
        return out

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        self.conn.close()
        self.send_conn.close()


_idle: list[_Worker] = []
_lock = threading.Lock()
_busy = threading.BoundedSemaphore(MAX_BUSY)


def decode_in_worker(data: bytes, name: str, seconds: float, **options) -> np.ndarray:
    """``decode_bytes(data, name=name, **options)`` in a worker process: the array, or
    :class:`DecodeTimeout` past ``seconds`` (the worker killed), :class:`EOFError` when the worker
    died (a crashing decoder), :class:`Cancelled` when the caller's scope was cancelled, or the
    worker's own :class:`~.decode.ImageDecodeError`."""
    while not _busy.acquire(timeout=_POLL_S):
        check_cancelled()
    try:
        with _lock:
            worker = _idle.pop() if _idle else None
        worker = worker or _Worker()
        try:
            out = worker.decode(data, name, seconds, options)
        except BaseException as e:
            if not _is_file_error(e):  # the worker may still be decoding: it cannot be reused
                worker.kill()
                raise
            _release(worker)
            raise
        _release(worker)
        return out
    finally:
        _busy.release()


def _is_file_error(e: BaseException) -> bool:
    from .decode import ImageDecodeError

    return isinstance(e, ImageDecodeError)


def _release(worker: _Worker) -> None:
    with _lock:
        if len(_idle) < _KEEP_IDLE:
            _idle.append(worker)
            return
    worker.kill()


@atexit.register
def shutdown() -> None:
    """Stop the idle workers (and wait for them, so their memory counts in ``RUSAGE_CHILDREN``)."""
    with _lock:
        workers = list(_idle)
        _idle.clear()
    for w in workers:
        w.kill()


def _serve(conn: Connection, out: Connection) -> None:  # pragma: no cover - runs in the worker process
    from deepfake_detector.data.decode import ImageDecodeError, decode_bytes

    out.send("ready")
    while True:
        try:
            data, name, options = conn.recv()
        except (EOFError, OSError):
            return
        try:
            img = np.ascontiguousarray(decode_bytes(data, name=name, in_worker=True, **options))
        except ImageDecodeError as e:
            out.send(("error", e))
            continue
        except Exception as e:  # noqa: BLE001  whatever a crafted file makes a decoder raise: its error
            out.send(("error", ImageDecodeError(name, f"the decoder failed: {type(e).__name__}")))
            continue
        out.send(("ok", img.shape))
        out.send_bytes(memoryview(img).cast("B"))


if __name__ == "__main__":  # pragma: no cover - the worker: python -m deepfake_detector.data.deadline RFD WFD
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
