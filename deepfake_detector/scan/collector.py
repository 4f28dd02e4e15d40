"""The bookkeeping of one scan run, wherever inference runs: de-duplication by hash, rows
batched into parts, the progress bar, the failures and the end-of-scan summary
(:class:`Collector`, :func:`format_summary`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import threading
import time
from collections import Counter

from ..data.media import IgnoredFiles
from ..results import printable
from .infer import DEFAULT_PART_ROWS, DEFAULT_PART_SECONDS
from .sources import count_sources
from .store import ResultsStore

MAX_LISTED_FAILURES = 100  # failures listed one by one in the summary (all are counted)
MAX_REASONS = 1000  # distinct failure reasons counted apart


class ScanInterrupted(KeyboardInterrupt):
    """Ctrl-C during a scan, after the finished rows were committed; ``.summary`` says how far it got."""

    def __init__(self, summary: dict):
        super().__init__("scan interrupted")
        self.summary = summary


class Collector:
    """Rows in, parts out: de-duplicates by hash, commits a part every ``part_rows`` rows or
    ``part_seconds`` seconds, drives the progress bar and counts what the summary reports."""

    def __init__(self, store: ResultsStore, model_info: dict, sources: list, progress: bool = True,
                 part_rows: int = DEFAULT_PART_ROWS, part_seconds: float = DEFAULT_PART_SECONDS):
        self.store = store
        self.model_info = model_info
        self.part_rows = max(1, int(part_rows))
        self.part_seconds = float(part_seconds)
        self.buffer: list[dict] = []
        self.last_commit = time.monotonic()
        self.t0 = time.perf_counter()
        self.before = store.done  # hashes in RESULTS when the run started
        self.claimed: set[bytes] = set()  # hashes of the files this run scans
        self.counts = Counter()
        self.failures: list[dict] = []
        self.reasons = Counter()
        self.ignored = IgnoredFiles()  # what the folder walks found and could not use
        self.pbar = None
        if progress:
            from tqdm.auto import tqdm

            self.pbar = tqdm(unit="file", desc="scan", dynamic_ncols=True, smoothing=0.05)
            threading.Thread(target=self._count, args=(list(sources),), daemon=True,
                             name="scan-count").start()

    def _count(self, sources: list) -> None:
        """Count the files in the background so the bar can show the time left."""
        with contextlib.suppress(Exception):
            n = count_sources(sources)
            if n is not None and self.pbar is not None:
                self.pbar.total = n
                self.pbar.refresh()

    # the scan loop calls these, one per file
    def claim(self, digest: bytes) -> str:
        """``"new"`` the first time a hash is seen (then scan the file); ``"done"`` if RESULTS held
        it before this run, ``"duplicate"`` if another file of this run had it (skip the file)."""
        if digest in self.before:
            return "done"
        if digest in self.claimed:
            return "duplicate"
        self.claimed.add(digest)
        return "new"

    def skip(self, why: str) -> None:
        """A file not scanned: ``why`` is what :meth:`claim` said."""
        self.counts["skipped" if why == "done" else "duplicates"] += 1
        self._tick()

    def unreadable(self, path: str, error: str) -> None:
        """A file whose bytes cannot be read: no hash, so no row; the next scan tries again."""
        self.counts["unreadable"] += 1
        self._failure(path, error)
        self._tick()

    def add(self, path: str, digest_hex: str, size: int, result: dict) -> None:
        """A scanned file's row."""
        row = {"path": path, "sha256": digest_hex, "size": size, **result,
               "model": self.model_info.get("arch"), "model_version": self.model_info.get("version"),
               "scanned_at": _dt.datetime.now(_dt.timezone.utc)}
        self.buffer.append(row)
        self.counts["scanned"] += 1
        self.counts[row["kind"] + "s"] += 1
        if row["error"] is not None:
            self._failure(path, row["error"])
        else:
            self.counts[{"Fake": "fake", "Real": "real"}.get(row["label"], "no_verdict")] += 1
        self._tick()
        if len(self.buffer) >= self.part_rows:
            self.flush()
        else:
            self.maybe_flush()

    def maybe_flush(self) -> None:
        """Commit the buffered rows if the last commit is ``part_seconds`` old."""
        if self.buffer and time.monotonic() - self.last_commit >= self.part_seconds:
            self.flush()

    def _failure(self, path: str, error: str) -> None:
        self.counts["failed"] += 1
        reason = _reason(path, error)
        if reason in self.reasons or len(self.reasons) < MAX_REASONS:
            self.reasons[reason] += 1
        else:
            self.reasons["(other reasons)"] += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append({"path": path, "error": error})

    def _tick(self) -> None:
        if self.pbar is not None:
            self.pbar.update(1)
            c = self.counts
            self.pbar.set_postfix(fake=c["fake"], failed=c["failed"], skipped=c["skipped"] + c["duplicates"],
                                  refresh=False)

    def flush(self) -> None:
        """Commit the buffered rows as one part."""
        if self.buffer:
            self.store.commit(self.buffer)
            self.buffer = []
        self.last_commit = time.monotonic()

    def close(self) -> None:
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None

    def summary(self, **extra) -> dict:
        c = self.counts
        elapsed = time.perf_counter() - self.t0
        return {"out": str(self.store.path), "format": self.store.fmt, "model": self.model_info,
                "files": c["scanned"] + c["skipped"] + c["duplicates"] + c["unreadable"],
                "scanned": c["scanned"], "images": c["images"], "videos": c["videos"],
                "skipped": c["skipped"], "duplicates": c["duplicates"], "failed": c["failed"],
                "fake": c["fake"], "real": c["real"], "no_verdict": c["no_verdict"],
                "unreadable": c["unreadable"], "unreadable_folders": self.ignored.lost,
                "ignored": self.ignored.count, "ignored_examples": [str(p) for p in self.ignored.examples],
                "failure_reasons": dict(self.reasons.most_common()), "failures": self.failures,
                "rows_total": self.store.n_rows, "elapsed_s": round(elapsed, 3),
                "files_per_s": round(c["scanned"] / elapsed, 3) if elapsed > 0 else None, **extra}


def _reason(path: str, error: str) -> str:
    """An error message without the file's name, so failures can be counted by reason."""
    r = str(error).replace(path, "").replace(os.path.basename(path), "")
    r = re.sub(r" at 0x[0-9a-fA-F]+", "", r.replace("cannot read image :", "cannot read image:"))
    return " ".join(r.split()).strip(" :") or str(error)


def format_summary(s: dict) -> str:
    """The end-of-scan report as text."""
    lines = [f"scanned {s['scanned']} files ({s['images']} images, {s['videos']} videos) in {s['elapsed_s']:.1f} s"
             + (f": {s['files_per_s']:.2f} files/s" if s.get("files_per_s") else "")
             + (f" on {s['workers']} workers" if s.get("workers") else "")
             + (f" (ray {s['ray']})" if s.get("ray") else "")]
    lines.append(f"skipped {s['skipped']} already in the results, {s['duplicates']} duplicates of other files"
                 + (f", {s['ignored']} neither images nor videos (e.g. {', '.join(s['ignored_examples'][:3])})"
                    if s.get("ignored") else ""))
    if s.get("unreadable") or s.get("unreadable_folders"):
        lines.append(f"lost: {s.get('unreadable', 0)} files that could not be read (no row; the next scan tries "
                     f"again), {s.get('unreadable_folders', 0)} folders that could not be read")
    with_verdict = s["fake"] + s["real"]
    lines.append(f"judged fake: {s['fake']} of {with_verdict} with a verdict"
                 + (f" ({s['no_verdict']} without: no face)" if s["no_verdict"] else ""))
    lines.append(f"failed: {s['failed']}")
    for reason, n in list(s["failure_reasons"].items())[:10]:
        lines.append(f"  {n:6d}  {reason}")
    if len(s["failure_reasons"]) > 10:
        lines.append(f"  ... and {len(s['failure_reasons']) - 10} more reasons")
    lines.append(f"results: {s['out']} ({s['rows_total']} rows, {s['format']})")
    if s.get("interrupted"):
        lines.append("interrupted: run the same command again to go on where it stopped")
    return "\n".join(printable(line) for line in lines)  # file names may hold newlines or escape codes
