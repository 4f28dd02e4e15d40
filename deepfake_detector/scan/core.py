"""The parts of a scan that do not depend on where inference runs.

* sources -> a stream of file paths (:func:`iter_sources`), never held in memory at once;
* a file's identity: the SHA-256 of its bytes, read in chunks (:func:`file_digest`);
* inference on a handful of files through :func:`deepfake_detector.predict.predict_paths`,
  the function behind ``deepfake-detector predict`` (:func:`infer_files`);
* RESULTS, a folder of part files (:class:`ResultsStore`, :func:`read_results`);
* the bookkeeping of one run: de-duplication, batching rows into parts, the progress bar
  and the summary (:class:`Collector`, :func:`format_summary`).

RESULTS layout (``--out results.parquet`` or ``--out results.csv``)::

    results.parquet/             a folder, whatever its name ends with
        _scan.json               what made the rows: model (arch, version, file SHA-256), faces, format
        part-<run>-<seq>.parquet one batch of rows each (CSV parts with a .csv name)
        .lock                    held (flock) while a scan writes here
        .tmp-part-...            a part being written; never read, removed by the next scan

A part is written under a hidden temporary name, flushed to disk and renamed into place, so
a part file is either absent or complete: a scan killed at any moment (SIGKILL included)
leaves only finished parts behind, and the next scan skips the files whose hash they hold.
``pandas.read_parquet("results.parquet")`` and ``pyarrow.dataset`` read the folder directly
(they ignore names starting with ``.`` or ``_``); :func:`read_results` reads either format.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import hashlib
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv")
META_NAME = "_scan.json"
LOCK_NAME = ".lock"
PART_PREFIX = "part-"
TMP_PREFIX = ".tmp-"
BAD_PREFIX = ".bad-"
SCAN_VERSION = 1

DEFAULT_BATCH_SIZE = 32  # files per inference task (the images of a task go through the model together)
DEFAULT_PART_ROWS = 1000  # rows per committed part ...
DEFAULT_PART_SECONDS = 30.0  # ... or whatever finished in this many seconds, whichever comes first
MAX_LISTED_FAILURES = 100  # failures listed one by one in the summary (all are counted)
MAX_REASONS = 1000  # distinct failure reasons counted apart

# (name, arrow type) of every column, in order. The video columns are empty for images.
_COLUMNS = [
    ("path", "string"), ("sha256", "string"), ("size", "int64"), ("kind", "string"),
    ("p_fake", "float64"), ("label", "string"), ("confidence", "string"), ("threshold", "float64"),
    ("error", "string"), ("message", "string"), ("model", "string"), ("model_version", "string"),
    ("n_frames", "int32"), ("n_frames_with_faces", "int32"), ("n_faces", "int32"),
    ("p_fake_mean", "float64"), ("p_fake_confident", "float64"), ("flicker", "float64"),
    ("fps", "float64"), ("duration", "float64"), ("width", "int32"), ("height", "int32"),
    ("scanned_at", "timestamp"),
]
COLUMNS = [name for name, _ in _COLUMNS]
# what inference contributes to a row (the rest: path, hash, size, model, time)
RESULT_KEYS = ("kind", "p_fake", "label", "confidence", "threshold", "error", "message", "n_frames",
               "n_frames_with_faces", "n_faces", "p_fake_mean", "p_fake_confident", "flicker", "fps",
               "duration", "width", "height")


def schema():
    """The Arrow schema of RESULTS."""
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "int32": pa.int32(), "float64": pa.float64(),
             "timestamp": pa.timestamp("us", tz="UTC")}
    return pa.schema([(name, types[t]) for name, t in _COLUMNS])


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise ImportError("scanning writes Parquet/CSV with pyarrow: pip install 'deepfake-detector[scan]'") from e


def format_for(out) -> str:
    """``csv`` for a RESULTS name ending in .csv, else ``parquet``."""
    return "csv" if os.fspath(out).lower().rstrip("/\\").endswith(".csv") else "parquet"


# --- sources --------------------------------------------------------------------------------

_GLOB_CHARS = frozenset("*?[")


def iter_sources(sources: Iterable) -> Iterator[str]:
    """Absolute file paths, streamed, from each source in turn:

    * a folder: its images and videos, recursively, in sorted order (``predict.expand_inputs``);
    * an image or video file: itself;
    * any other existing file: a list of paths, one a line (blank lines and ``#`` comments
      skipped; a relative path is relative to the list file's folder; a folder is walked;
      ``-`` reads the list from standard input, relative to the current folder);
    * a glob pattern (``*``, ``?``, ``[``; ``**`` recurses): its matching images and videos
      (and the contents of matching folders);
    * anything else (a missing file): itself, reported as failed by the scan.
    """
    from ..predict import expand_inputs, kind_of

    for src in sources:
        s = os.fspath(src)
        if s == "-":
            yield from _list_lines(sys.stdin, os.getcwd())
        elif os.path.isdir(s):
            yield from (os.path.abspath(p) for p in expand_inputs([s]))
        elif os.path.isfile(s):
            if kind_of(s):
                yield os.path.abspath(s)
            else:
                with open(s, encoding="utf-8") as f:
                    yield from _list_lines(f, os.path.dirname(os.path.abspath(s)))
        elif _GLOB_CHARS.intersection(s):
            for p in glob.iglob(s, recursive=True):
                if os.path.isdir(p):
                    yield from (os.path.abspath(q) for q in expand_inputs([p]))
                elif kind_of(p):
                    yield os.path.abspath(p)
        else:
            yield os.path.abspath(s)


def check_sources(sources: list) -> None:
    """Fail early on a source that cannot be one: a missing path that is no glob pattern, or a
    file that is neither an image, a video nor a text list of paths."""
    from ..predict import kind_of

    if not sources:
        raise ValueError("nothing to scan: give folders, files, glob patterns or lists of paths")
    for src in sources:
        s = os.fspath(src)
        if s == "-" or os.path.isdir(s) or (_GLOB_CHARS.intersection(s) and not os.path.exists(s)):
            continue
        if not os.path.exists(s):
            raise FileNotFoundError(f"{s}: no such file or folder")
        if not kind_of(s):
            with open(s, "rb") as f:
                head = f.read(4096)
            try:
                head.decode("utf-8")
            except UnicodeDecodeError as e:
                if len(head) < 4096 or e.start < 4090:  # not just a character cut at the end
                    raise ValueError(f"{s}: neither an image, a video nor a text file listing paths") from e


def _list_lines(lines, base: str) -> Iterator[str]:
    from ..predict import expand_inputs

    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = os.path.join(base, os.path.expanduser(line))
        if os.path.isdir(p):
            yield from (os.path.abspath(q) for q in expand_inputs([p]))
        else:
            yield os.path.abspath(p)


def count_sources(sources: list) -> int | None:
    """How many paths :func:`iter_sources` yields (None when a source is standard input)."""
    if any(os.fspath(s) == "-" for s in sources):
        return None
    return sum(1 for _ in iter_sources(sources))


def file_digest(path) -> tuple[bytes, int]:
    """(SHA-256 digest of the file's bytes, its size), read in chunks; raises OSError."""
    with open(path, "rb") as f:
        if hasattr(hashlib, "file_digest"):  # Python 3.11+
            h = hashlib.file_digest(f, "sha256")
        else:
            h = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.digest(), f.tell()


# --- inference ------------------------------------------------------------------------------

def slim(row: dict) -> dict:
    """The columns of a ``predict_paths`` result that go into RESULTS (frames etc. dropped).

    An image that fails to decode gets ``label="Error"``, as a failed video does."""
    out = {k: row.get(k) for k in RESULT_KEYS}
    if out["error"] is not None and out["label"] is None:
        out["label"] = "Error"
    return out


def error_result(path, error: str) -> dict:
    """A result for a file whose analysis raised instead of returning a row."""
    from ..predict import kind_of

    return slim({"kind": kind_of(path) or "image", "label": "Error", "error": error, "message": error})


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
        return [error_result(paths[0], err)]
    return [infer_files(model, [p], faces, batch_size, n_frames, detector)[0] for p in paths]


def model_identity(model, model_path) -> dict:
    """What RESULTS record about the model: arch, version and the SHA-256 of its file."""
    d = model.describe()
    digest, _ = file_digest(model_path)
    return {"arch": d.get("arch"), "version": str(d.get("version")), "sha256": digest.hex(),
            "input_size": d.get("input_size"), "file": os.fspath(model_path)}


def resolve_model_path(model_path) -> Path:
    from ..predict import default_model_path

    p = Path(model_path) if model_path else default_model_path()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: model file not found"
                                + ("" if model_path else " (the package ships without its default model; pass a "
                                   "model path)"))
    return p


# --- RESULTS --------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, write) -> None:
    """``write(file)`` into a hidden temporary file beside ``path``, flushed to disk, renamed to
    ``path``: readers see the whole file or none of it."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def part_files(out) -> list[Path]:
    """The committed part files of RESULTS, oldest first."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir()
                  if p.name.startswith(PART_PREFIX) and p.suffix in (".parquet", ".csv") and p.is_file())


def _read_part(path: Path, columns: list[str] | None = None):
    """One part as an Arrow table with the RESULTS schema (or just ``columns``)."""
    import pyarrow as pa

    sch = schema()
    if path.suffix == ".csv":
        from pyarrow import csv as pacsv

        opts = pacsv.ConvertOptions(column_types={f.name: f.type for f in sch}, strings_can_be_null=True,
                                    include_columns=columns)
        table = pacsv.read_csv(path, convert_options=opts)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=columns)
    names = columns or sch.names
    return table.select(names).cast(pa.schema([sch.field(n) for n in names]))


def read_results(out):
    """RESULTS as a ``pandas.DataFrame``, one row per content hash, in the order written.

    ``out``: a RESULTS folder (either format) or a single .parquet / .csv file. A hash found
    in more than one part (two scans run side by side without the lock) is kept once."""
    import pandas as pd
    import pyarrow as pa

    out = Path(out)
    if out.is_file():
        files = [out]
    elif out.is_dir():
        files = part_files(out)
    else:
        raise FileNotFoundError(f"{out}: no such RESULTS folder or file")
    tables = [_read_part(p) for p in files]
    table = pa.concat_tables(tables) if tables else schema().empty_table()
    ints = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}  # nullable: video columns are empty for images
    df = table.to_pandas(types_mapper=ints.get)
    return df.drop_duplicates("sha256", keep="first").reset_index(drop=True) if len(df) else df


class ResultsStore:
    """A RESULTS folder opened for appending: holds its lock, knows the hashes already in it and
    commits batches of rows as new part files, atomically."""

    def __init__(self, out, fmt: str | None = None):
        self.path = Path(out)
        self.fmt = fmt or format_for(out)
        if self.fmt not in FORMATS:
            raise ValueError(f"unknown RESULTS format {self.fmt!r}; known: {', '.join(FORMATS)}")
        self.run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
        self.seq = 0
        self.done: set[bytes] = set()  # sha256 digests in RESULTS
        self.n_rows = 0
        self._lock = None

    def open(self, meta: dict) -> ResultsStore:
        """Create or reopen RESULTS for a scan described by ``meta`` (model, faces...).

        Raises ValueError if RESULTS were made by another model or other settings, and
        RuntimeError if another scan holds the lock."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} exists and is not a RESULTS folder (scan results are a folder of part "
                             "files; choose another --out)")
        self.path.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            for p in self.path.iterdir():  # parts a killed scan did not finish
                if p.name.startswith(TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        p.unlink()
            meta_path = self.path / META_NAME
            if meta_path.exists():
                self._check_meta(json.loads(meta_path.read_text()), meta)
            else:
                text = json.dumps(dict(meta, scan_version=SCAN_VERSION, format=self.fmt), indent=2).encode()
                _write_atomic(meta_path, lambda f: f.write(text))
            self._load_done()
        except BaseException:
            self.close()
            raise
        return self

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        f = open(self.path / LOCK_NAME, "a+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.close()
            raise RuntimeError(f"{self.path}: another scan is writing these results") from e
        self._lock = f

    def _check_meta(self, old: dict, new: dict) -> None:
        self.fmt = old.get("format", self.fmt)
        o, n = old.get("model", {}), new.get("model", {})
        if o.get("sha256") != n.get("sha256"):
            raise ValueError(f"{self.path} holds results of model {o.get('arch')} {o.get('version')} "
                             f"(file sha256 {str(o.get('sha256'))[:12]}), this scan uses {n.get('arch')} "
                             f"{n.get('version')} ({str(n.get('sha256'))[:12]}): scan into another folder, or "
                             "delete this one to start over")
        for key in ("faces", "n_frames"):
            if key in old and old[key] != new.get(key):
                raise ValueError(f"{self.path} was scanned with {key}={old[key]!r}, this scan asks for "
                                 f"{key}={new.get(key)!r}: scan into another folder, or delete this one")

    def _load_done(self) -> None:
        for p in part_files(self.path):
            try:
                col = _read_part(p, ["sha256"]).column("sha256")
            except Exception as e:  # noqa: BLE001 - cannot happen with atomic renames; keep going
                bad = p.with_name(BAD_PREFIX + p.name)
                log.warning("%s is unreadable (%s); set aside as %s, its files will be scanned again", p, e, bad)
                os.replace(p, bad)
                continue
            self.n_rows += len(col)
            self.done.update(bytes.fromhex(h) for h in col.to_pylist() if h)

    def commit(self, rows: list[dict]) -> Path | None:
        """Write ``rows`` as one new part file, atomically."""
        if not rows:
            return None
        import pyarrow as pa

        table = pa.Table.from_pylist(rows, schema=schema())
        self.seq += 1
        path = self.path / f"{PART_PREFIX}{self.run_id}-{self.seq:05d}.{self.fmt}"
        if self.fmt == "csv":
            from pyarrow import csv as pacsv

            _write_atomic(path, lambda f: pacsv.write_csv(table, f))
        else:
            import pyarrow.parquet as pq

            _write_atomic(path, lambda f: pq.write_table(table, f))
        self.n_rows += len(rows)
        return path

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None


# --- one run's bookkeeping ------------------------------------------------------------------

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
    lines.append(f"skipped {s['skipped']} already in the results, {s['duplicates']} duplicates of other files")
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
    return "\n".join(lines)
