"""Scan a collection of images and videos into a RESULTS table, resumably: :func:`scan` (on this
machine or a Ray cluster), :func:`read_results` (RESULTS as a DataFrame), :func:`iter_sources`.

* one row per distinct content (SHA-256 of the bytes); a file with another's bytes is a ``duplicate``;
* RESULTS is a folder of atomically committed part files: CSV if its name ends ``.csv``, else Parquet;
* resumable: hashes already in RESULTS are skipped, so a scan stopped at any moment (even SIGKILL)
  and rerun does only what is left;
* an undecodable file gets a row with ``error`` set (not retried); an unreadable one gets none (retried);
* RESULTS remember the model (its SHA-256) and ``faces`` / ``n_frames``: resuming with others is refused.
"""

from __future__ import annotations

from ..options import PredictOptions
from .collector import ScanInterrupted, format_summary
from .infer import DEFAULT_BATCH_SIZE as DEFAULT_BATCH_SIZE
from .infer import DEFAULT_PART_ROWS as DEFAULT_PART_ROWS
from .infer import DEFAULT_PART_SECONDS as DEFAULT_PART_SECONDS
from .sources import iter_sources
from .store import COLUMNS, read_results

__all__ = ["COLUMNS", "ScanInterrupted", "format_summary", "iter_sources", "read_results", "scan"]


def scan(sources, out, model_path=None, workers: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
         ray_address: str | None = None, faces: bool | None = None, progress: bool = True, *,
         part_rows: int = DEFAULT_PART_ROWS, part_seconds: float = DEFAULT_PART_SECONDS,
         n_frames: int | None = None, device: str = "cpu", runtime: str = "auto", threads: int | None = None,
         detector: str | None = None, fast: bool = False, options: PredictOptions | None = None) -> dict:
    """Classify every image and video of ``sources`` into the RESULTS folder ``out``; resumable.

    ``sources``: a path or a list of them: folders (walked recursively), image / video files,
    glob patterns, text files listing paths (one a line) or ``-`` (a list on standard input).
    ``model_path``: .npz or .onnx (default: the model shipped with the package).
    ``workers``: worker processes on this machine, each single-threaded with its own model
    (default: one per core; 0: in this process); with ``ray_address``, the number of model
    actors (default: one per CPU of the cluster).
    ``batch_size``: files per inference task. ``ray_address``: ``"auto"`` or ``"HOST:PORT"`` of
    a running Ray cluster (needs ``pip install 'deepfake-detector[ray]'``).
    ``faces``: None frames each image as the model does (the default model: the largest face,
    ``NoFace`` without one); True crops the largest face first; False scores whole images
    (videos always look for faces).
    ``part_rows`` / ``part_seconds``: a part is committed every so many rows or seconds.
    ``n_frames``: frames sampled per video (default 32). ``options``: a
    :class:`~deepfake_detector.options.PredictOptions` (``faces``, ``n_frames`` and
    ``detector`` change it). ``device`` / ``runtime`` / ``threads``: as
    :func:`deepfake_detector.models.load` (local scans only); ``detector``: a face detector's name;
    ``fast``: the model file's fast variant (``load(fast=True)``).

    Columns (:data:`COLUMNS`): ``path`` (the first path seen with that content), ``sha256``,
    ``size``, ``kind`` (image / video), ``p_fake``, ``label`` (Real / Fake / NoFace / Error),
    ``confidence``, ``threshold``, ``error``, ``message``, ``model`` and ``model_version``, the
    per-video summary (``n_frames``, ``n_frames_with_faces``, ``n_faces``, ``p_fake_mean``,
    ``p_fake_confident``, ``flicker``, ``fps``, ``duration``, ``width``, ``height``; empty for
    images) and ``scanned_at``.

    Returns the summary: ``files`` (seen), ``scanned``, ``images``, ``videos``, ``skipped``
    (already in RESULTS), ``duplicates`` (same content as another file of this run),
    ``ignored`` (files a folder walk or a pattern found that are neither images nor
    videos, with ``ignored_examples``), ``failed`` with ``failure_reasons`` (reason -> count)
    and ``failures`` (the first 100: path, error), ``fake`` / ``real`` / ``no_verdict`` (of the
    scanned files), ``rows_total``,
    ``elapsed_s``, ``files_per_s`` (scanned files), ``workers``, ``model``, ``out``, ``format``.
    Ctrl-C commits the finished rows and raises :class:`ScanInterrupted` (a
    ``KeyboardInterrupt`` whose ``summary`` says how far it got).
    """
    import os

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    options = PredictOptions.of(options, faces=faces, n_frames=n_frames, detector=detector)
    common = dict(model_path=model_path, workers=workers, batch_size=batch_size, options=options, progress=progress,
                  part_rows=part_rows, part_seconds=part_seconds, fast=fast)
    if ray_address:
        if device != "cpu" or runtime != "auto" or options.detector:
            raise ValueError("a Ray scan runs the model file as it is, on CPU, with the default face detector")
        from .ray_scan import scan_ray

        return scan_ray(sources, out, address=ray_address, **common)
    from .local import scan_local

    return scan_local(sources, out, device=device, runtime=runtime, threads=threads, **common)
