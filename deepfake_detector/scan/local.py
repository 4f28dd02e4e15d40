"""A scan on this machine, :func:`scan_local`: a pool of single-threaded worker processes, each
loading the model once and classifying tasks of ``batch_size`` files with
:func:`deepfake_detector.predict.predict_paths`; the main process hashes and filters the files and
commits the rows as part files (:mod:`deepfake_detector.scan.store`). A worker that crashes on a
hostile file does not end the scan (see :func:`scan_local`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from ..data.limits import InputRefused
from ..options import PredictOptions
from .collector import Collector, ScanInterrupted
from .infer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PART_ROWS,
    DEFAULT_PART_SECONDS,
    infer_files,
    model_identity,
    worker_died,
)
from .sources import check_sources, file_digest, iter_sources
from .store import ResultsStore, require_pyarrow

TASKS_PER_WORKER = 2  # tasks queued per worker: one running, one waiting
WAIT_S = 1.0  # the longest the main process waits for a task before looking at the clock

_WORKER: dict = {}  # per worker process: model, detector, settings


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def limit_threads(n: int) -> None:
    """One process, ``n`` threads: BLAS and OpenMP (threadpoolctl), the engine's pool, OpenCV
    (the model's own runtime is set by ``load(threads=n)``)."""
    from threadpoolctl import threadpool_limits

    from ..nn.backend import set_num_threads

    _WORKER["limits"] = threadpool_limits(n)  # the BLAS / OpenMP libraries loaded so far
    set_num_threads(n)
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:
        pass


def _watch_parent(parent: int) -> None:
    """Exit when the scanning process is gone (SIGKILLed): a worker must not outlive it."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def _init_worker(model_path: str, device: str, runtime: str, detector: str | None, fast: bool, threads: int,
                 parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business
    _watch_parent(parent)
    limit_threads(threads)
    from ..models import load

    _WORKER.update(model=load(model_path, runtime, device, threads, fast=fast), threads=threads, detector=None,
                   detector_name=detector)
    limit_threads(threads)  # again, for libraries the model brought in (torch's OpenMP...)


def _detector():
    """The default face detector at the worker's thread count, built on first use."""
    if _WORKER.get("detector") is None:
        from ..faces import get_detector

        _WORKER["detector"] = get_detector(_WORKER.get("detector_name"), threads=_WORKER["threads"])
    return _WORKER["detector"]


def _ping() -> bool:
    return True


def _run_task(paths: list[str], options: PredictOptions, batch_size: int) -> list[dict]:
    """In a worker: one slim result per path (the detector built here, at the worker's threads)."""
    from ..data.media import kind_of

    if options.faces or any(kind_of(p) == "video" for p in paths):
        options = PredictOptions.of(options, detector=_detector())
    return infer_files(_WORKER["model"], paths, options, batch_size)


def scan_local(sources, out, model_path=None, workers: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
               options: PredictOptions | None = None, progress: bool = True, part_rows: int = DEFAULT_PART_ROWS,
               part_seconds: float = DEFAULT_PART_SECONDS, device: str = "cpu", runtime: str = "auto",
               threads: int | None = None, fast: bool = False) -> dict:
    """Scan ``sources`` into ``out`` on this machine; see :func:`deepfake_detector.scan.scan`.

    The main process streams the file list, hashes each file and queues at most two tasks per
    worker at a time, so memory stays bounded whatever the collection size. Each worker runs
    single-threaded (BLAS, the engine's thread pool, OpenCV and onnxruntime at one thread), so
    N workers use N cores without oversubscribing them. A worker that dies (a decoder crash on
    a hostile file) takes the pool down with it: the pool is restarted and the files of the
    unfinished tasks are tried again one at a time, so the culprit gets an error row and the
    others are scanned. ``workers=0`` runs everything in this process (no pool, the engine's
    default threads).
    """
    require_pyarrow()
    from ..models import load
    from ..models import model_path as find_model

    sources = list(sources)
    check_sources(sources)
    workers = default_workers() if workers is None else max(0, int(workers))
    batch_size = max(1, int(batch_size))
    model_path = find_model(model_path)
    model = load(model_path, runtime, device, threads, fast=fast)  # fails here, once, if the model is unusable
    info = model_identity(model, model_path)
    options = PredictOptions.of(options).framed_for(model)
    detector = options.detector  # a name (the workers build their own)
    store = ResultsStore(out).open({"model": info, "faces": bool(options.faces), "n_frames": options.n_frames})
    col = Collector(store, info, sources, progress=progress, part_rows=part_rows, part_seconds=part_seconds)
    opts = (options, batch_size)
    try:
        try:
            if workers == 0:
                _scan_in_process(col, sources, model, opts)
            else:
                del model
                _scan_pool(col, sources, workers, (str(model_path), device, runtime, detector, fast), opts)
        except KeyboardInterrupt:
            col.flush()  # keep every finished row
            col.close()
            raise ScanInterrupted(col.summary(workers=workers, interrupted=True)) from None
        col.flush()
    finally:
        col.close()
        store.close()
    return col.summary(workers=workers)


def _tasks(col: Collector, sources, batch_size: int):
    """Lists of (path, sha256 hex, size) to scan, ``batch_size`` at a time, from the streamed
    sources: files already in RESULTS or seen earlier in this run are counted and left out."""
    task = []
    for path in iter_sources(sources, col.ignored):
        try:
            digest, size = file_digest(path)
        except InputRefused as e:  # not a regular file, or over the size limit: never read
            col.unreadable(path, f"cannot read {path}: {e.reason}")
            continue
        except OSError as e:
            col.unreadable(path, f"cannot read {path}: {e.strerror or type(e).__name__}")
            continue
        why = col.claim(digest)
        if why != "new":
            col.skip(why)
            continue
        task.append((path, digest.hex(), size))
        if len(task) >= batch_size:
            yield task
            task = []
    if task:
        yield task


def _scan_in_process(col: Collector, sources, model, opts) -> None:
    options, batch_size = opts
    for task in _tasks(col, sources, batch_size):
        for (path, h, size), result in zip(task, infer_files(model, [p for p, _, _ in task], options, batch_size)):
            col.add(path, h, size, result)


def _scan_pool(col: Collector, sources, workers: int, model_args: tuple, opts) -> None:
    ctx = mp.get_context("spawn")  # fresh interpreters: no threads or locks inherited from this one

    def new_pool():
        """A started pool; raises if its workers cannot start (then no file is to blame)."""
        p = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                initargs=(*model_args, 1, os.getpid()))
        try:
            p.submit(_ping).result()
        except BrokenProcessPool as e:
            p.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError("the scan's worker processes failed to start (see the error above); "
                               "workers=0 scans in this process") from e
        return p

    pool = None  # started with the first task: a scan with nothing to do starts no worker
    inflight: dict = {}  # future -> task

    def submit(task):
        nonlocal pool
        if pool is None:
            pool = new_pool()
        inflight[pool.submit(_run_task, [p for p, _, _ in task], *opts)] = task

    def collect(futures) -> list:
        """Rows of the finished futures; returns the tasks lost to a dead worker."""
        lost = []
        for fut in futures:
            task = inflight.pop(fut)
            try:
                results = fut.result()
            except BrokenProcessPool:
                lost.append(task)
                continue
            for (path, h, size), result in zip(task, results):
                col.add(path, h, size, result)
        return lost

    def recover(lost: list) -> None:
        """A worker died: new pool; the unfinished files one at a time, to find the culprit."""
        nonlocal pool
        lost += collect(list(inflight))  # the whole pool is gone: every pending task fails
        pool.shutdown(wait=True, cancel_futures=True)
        pool = new_pool()
        suspects = deque(item for task in lost for item in task)
        while suspects:
            item = suspects.popleft()
            fut = pool.submit(_run_task, [item[0]], *opts)
            try:
                result = fut.result()[0]
            except BrokenProcessPool:
                result = worker_died(item[0])
                pool.shutdown(wait=True, cancel_futures=True)
                pool = new_pool()
            col.add(*item, result)

    try:
        for task in _tasks(col, sources, opts[1]):
            submit(task)
            while len(inflight) >= TASKS_PER_WORKER * workers:
                done, _ = wait(inflight, timeout=WAIT_S, return_when=FIRST_COMPLETED)
                col.maybe_flush()  # rows finished long ago are committed even while slow videos run
                lost = collect(done)
                if lost:
                    recover(lost)
        while inflight:
            done, _ = wait(inflight, timeout=WAIT_S, return_when=FIRST_COMPLETED)
            col.maybe_flush()
            lost = collect(done)
            if lost:
                recover(lost)
        if pool is not None:
            pool.shutdown(wait=True)
    except BaseException:
        if pool is not None:
            _kill_pool(pool)
        raise


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop at once: queued tasks cancelled, running ones killed (their files are redone next time)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            p.kill()
        except (OSError, ValueError, AttributeError):
            pass
