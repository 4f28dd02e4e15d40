"""The same scan on a Ray cluster with Ray Data, :func:`scan_ray` (``pip install 'deepfake-detector[ray]'``):
the cluster hashes the files (:func:`hash_files`) and classifies them on model actors
(:class:`RayScanner`); the driver commits the rows exactly as a local scan does, so RESULTS of
either kind are interchangeable and a scan stopped on one can be finished on the other. Every node
must read the files at the same path and have this package installed in the same Python environment.
"""

from __future__ import annotations

import logging
import os
import tempfile
from itertools import islice

from ..data.limits import InputRefused
from ..options import PredictOptions
from .collector import Collector, ScanInterrupted
from .infer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PART_ROWS,
    DEFAULT_PART_SECONDS,
    RESULT_KEYS,
    infer_files,
    model_identity,
    worker_died,
)
from .sources import check_sources, file_digest, iter_sources
from .store import ResultsStore, require_pyarrow

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 10_000  # paths per round of hash -> filter -> classify


def hash_files(batch: dict) -> dict:
    """Ray Data task: ``{"path"}`` -> ``{"path", "sha256" (hex), "size", "error"}``."""
    out = {"path": [], "sha256": [], "size": [], "error": []}
    for p in batch["path"]:
        p = str(p)
        try:
            digest, size = file_digest(p)
            h, err = digest.hex(), None
        except InputRefused as e:  # not a regular file, or over the size limit: never read
            h, size, err = None, -1, f"cannot read {p}: {e.reason}"
        except OSError as e:
            h, size, err = None, -1, f"cannot read {p}: {e.strerror or type(e).__name__}"
        out["path"].append(p)
        out["sha256"].append(h)
        out["size"].append(size)
        out["error"].append(err)
    return out


class RayScanner:
    """Ray Data callable class: loads the model once per actor, classifies batches of files."""

    def __init__(self, model_ref: list, model_suffix: str, options: PredictOptions, batch_size: int,
                 fast: bool = False):
        import ray

        from ..models import load
        from .local import limit_threads

        limit_threads(1)  # one actor per CPU
        data = ray.get(model_ref[0])  # a reference inside a list: the actor's arguments stay small
        self._dir = tempfile.TemporaryDirectory(prefix="dfd-scan-model-")
        path = os.path.join(self._dir.name, "model" + model_suffix)
        with open(path, "wb") as f:
            f.write(data)
        self.model = load(path, threads=1, fast=fast)
        limit_threads(1)  # again, for libraries the model brought in
        self.options, self.batch_size = options, batch_size
        self.detector = None

    def __call__(self, batch: dict) -> dict:
        from ..data.media import kind_of

        paths = [str(p) for p in batch["path"]]
        if self.detector is None and (self.options.faces or any(kind_of(p) == "video" for p in paths)):
            from ..faces import get_detector

            self.detector = get_detector(threads=1)
        results = infer_files(self.model, paths, PredictOptions.of(self.options, detector=self.detector),
                              self.batch_size)
        out = {"path": paths, "sha256": [str(h) for h in batch["sha256"]],
               "size": [int(s) for s in batch["size"]]}
        for k in RESULT_KEYS:
            out[k] = [r[k] for r in results]
        return _arrow(out)


def _arrow(columns: dict):
    """A batch as an Arrow table with the RESULTS types (so that all-None columns keep theirs)."""
    import pyarrow as pa

    from .store import schema

    sch = schema()
    return pa.table({k: pa.array(v, type=sch.field(k).type) for k, v in columns.items()})


def scan_ray(sources, out, address: str = "auto", model_path=None, workers: int | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, options: PredictOptions | None = None, progress: bool = True,
             part_rows: int = DEFAULT_PART_ROWS, part_seconds: float = DEFAULT_PART_SECONDS,
             window: int = DEFAULT_WINDOW, fast: bool = False) -> dict:
    """Scan ``sources`` into ``out`` on the Ray cluster at ``address``; see :func:`deepfake_detector.scan.scan`.

    ``workers``: model actors (default: one per CPU of the cluster).

    The file list is streamed in windows of ``window`` paths (the driver never holds more). For
    each window: (1) ``map_batches(hash_files)``: the cluster's CPUs read and hash the files, so
    the bytes are read where the workers are, not all through the driver; (2) the driver keeps
    the files whose hash is neither in RESULTS nor seen earlier in this run; (3)
    ``map_batches(RayScanner, concurrency=N, num_cpus=1)``: N actors, each loading the model
    once (its bytes shipped through the object store, so the nodes need not share the model
    file) and classifying batches single-threaded; (4) the rows stream back to the driver,
    which commits them as part files. An actor that dies (a decoder crashing on a hostile file)
    loses its batch, not the scan: Ray restarts it, and after the round the files of lost
    batches are classified again one per batch; a file that kills its actor again gets an
    error row.
    """
    require_pyarrow()
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ImportError("--ray needs Ray Data: pip install 'deepfake-detector[ray]'") from e
    from ..models import load
    from ..models import model_path as find_model

    sources = list(sources)
    check_sources(sources)
    batch_size = max(1, int(batch_size))
    model_path = find_model(model_path)
    model = load(model_path, fast=fast)
    info = model_identity(model, model_path)
    options = PredictOptions.of(options).framed_for(model)
    del model
    store = ResultsStore(out).open({"model": info, "faces": bool(options.faces), "n_frames": options.n_frames})
    started = not ray.is_initialized()
    col = None
    try:
        if started:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        ctx = ray.data.DataContext.get_current()
        saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "max_errored_blocks")}
        ctx.enable_progress_bars = False  # ours is enough
        ctx.max_errored_blocks = -1  # a batch lost to a dead actor: its files are retried alone, see _classify
        _quiet_ray_data()
        n_actors = int(workers) if workers else max(1, int(ray.cluster_resources().get("CPU", 1)))
        ctor = {"model_ref": [ray.put(model_path.read_bytes())], "model_suffix": model_path.suffix,
                "options": options, "batch_size": batch_size, "fast": bool(fast)}
        col = Collector(store, info, sources, progress=progress, part_rows=part_rows, part_seconds=part_seconds)
        paths = iter_sources(sources, col.ignored)
        try:
            while window_paths := list(islice(paths, max(1, int(window)))):
                todo = _hash_and_filter(ray, col, window_paths, batch_size)
                lost = _classify(ray, col, todo, batch_size, n_actors, ctor)
                if lost:  # one at a time: the culprit is found, the others are scanned
                    log.warning("%d files were in batches whose Ray worker died; trying them one by one", len(lost))
                    still = _classify(ray, col, lost, 1, n_actors, ctor, retries=1)
                    if len(still) > 1 and len(still) == len(todo):
                        raise RuntimeError("every batch failed on the Ray workers (see the errors above): is "
                                           "deepfake-detector installed on every node, are the files there?")
                    for item in still:
                        col.add(item["path"], item["sha256"], item["size"], worker_died(item["path"], "Ray worker"))
        except KeyboardInterrupt:
            col.flush()
            col.close()
            raise ScanInterrupted(col.summary(workers=n_actors, ray=address, interrupted=True)) from None
        finally:
            for k, v in saved.items():
                setattr(ctx, k, v)
        col.flush()
        return col.summary(workers=n_actors, ray=address)
    finally:
        if col is not None:
            col.close()
        store.close()
        if started and ray.is_initialized():
            ray.shutdown()


def _classify(ray, col: Collector, todo: list[dict], batch_size: int, n_actors: int, ctor: dict,
              retries: int = 0) -> list[dict]:
    """Classify ``todo`` (path, sha256, size) on a pool of model actors, rows to ``col``; returns
    the items lost with a batch whose actor died (the actor is restarted, the batch skipped)."""
    if not todo:
        return []
    ds = ray.data.from_items(todo, override_num_blocks=len(todo) if batch_size == 1 else None).map_batches(
        RayScanner, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_cpus=1, max_task_retries=retries, fn_constructor_kwargs=ctor)
    received = set()
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in table.to_pylist():
            received.add(row["path"])
            col.add(row["path"], row["sha256"], row["size"], {k: row[k] for k in RESULT_KEYS})
    return [item for item in todo if item["path"] not in received]


def _quiet_ray_data() -> None:
    """Ray Data's warnings, not its per-dataset INFO lines (two per round)."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"


def _hash_and_filter(ray, col: Collector, paths: list[str], batch_size: int) -> list[dict]:
    """Hash ``paths`` on the cluster; the (path, sha256, size) of those to scan, claimed."""
    todo = []
    ds = ray.data.from_items([{"path": p} for p in paths]).map_batches(hash_files, batch_size=max(batch_size, 64),
                                                                       batch_format="numpy", num_cpus=1)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for p, h, size, err in zip(batch["path"], batch["sha256"], batch["size"], batch["error"]):
            p = str(p)
            if h is None:
                col.unreadable(p, str(err))
                continue
            why = col.claim(bytes.fromhex(str(h)))
            if why != "new":
                col.skip(why)
                continue
            todo.append({"path": p, "sha256": str(h), "size": int(size)})
    return todo
