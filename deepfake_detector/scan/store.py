"""RESULTS, the folder a scan writes: its schema and format, part files committed atomically
(:class:`ResultsStore`, which also holds the folder's lock and the hashes already in it) and
reading it back as one table (:func:`read_results`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from pathlib import Path

from ..results import STORE_COLUMNS

log = logging.getLogger(__name__)

# RESULTS layout (``--out results.parquet`` or ``--out results.csv``):
#
#     results.parquet/             a folder, whatever its name ends with
#         _scan.json               what made the rows: model (arch, version, file SHA-256), faces, format
#         part-<run>-<seq>.parquet one batch of rows each (CSV parts with a .csv name)
#         .lock                    held (flock) while a scan writes here
#         .tmp-part-...            a part being written; never read, removed by the next scan
#
# A part is written under a hidden temporary name, flushed to disk and renamed into place, so
# a part file is either absent or complete: a scan killed at any moment (SIGKILL included)
# leaves only finished parts behind, and the next scan skips the files whose hash they hold.
# ``pandas.read_parquet("results.parquet")`` and ``pyarrow.dataset`` read the folder directly
# (they ignore names starting with ``.`` or ``_``); :func:`read_results` reads either format.


FORMATS = ("parquet", "csv")
META_NAME = "_scan.json"
LOCK_NAME = ".lock"
PART_PREFIX = "part-"
TMP_PREFIX = ".tmp-"
BAD_PREFIX = ".bad-"
SCAN_VERSION = 1

# (name, arrow type) of every column, in order: the file's, then a result's own (the result
# types of deepfake_detector.results say which fields are stored; the video ones are empty for
# images), then the model's and the time.
_COLUMNS = [("path", "string"), ("sha256", "string"), ("size", "int64"),
            *(c for c in STORE_COLUMNS if c[0] != "path"),
            ("model", "string"), ("model_version", "string"), ("scanned_at", "timestamp")]
COLUMNS = [name for name, _ in _COLUMNS]


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
                                    include_columns=columns or sch.names, include_missing_columns=True)
        table = pacsv.read_csv(path, convert_options=opts)
    else:
        import pyarrow.parquet as pq

        present = set(pq.read_schema(path).names)
        table = pq.read_table(path, columns=[c for c in columns if c in present] if columns else None)
    names = columns or sch.names
    for name in names:  # a part written before the column existed: empty there
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), sch.field(name).type))
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
        if o.get("sha256") != n.get("sha256") or o.get("arch", n.get("arch")) != n.get("arch"):
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
