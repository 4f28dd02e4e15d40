"""Embeddings on disk, keyed by file content, preprocessing and encoder, so that heads
train in minutes after one extraction pass (an SQLite file: safe to interrupt, resumable).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import numpy as np


def content_key(data_digest: str, preprocess_id: str, encoder_id: str) -> str:
    """The cache key of one file: the SHA-256 of its bytes, how it was made into encoder input
    and which encoder embedded it; any of the three changing misses the cache."""
    return hashlib.sha256(f"{data_digest}|{preprocess_id}|{encoder_id}".encode()).hexdigest()


def bytes_digest(path) -> str:
    """SHA-256 of a file's bytes; a file the decoding gate refuses (a FIFO, a device, over the
    size limit) raises InputRefused, unread."""
    from ...data.limits import open_regular

    with open_regular(path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class EmbeddingCache:
    """``key -> float32 vector`` in one SQLite file; thread-safe, committed in batches. A
    float16 array (the patch tokens) is kept as float16: a row's dtype follows from its
    blob's length over its ``dim`` (the number of values), so older files read as before."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, dim INTEGER, vec BLOB)")
        self._db.commit()
        self._lock = threading.Lock()

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT key, dim, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})"
                for k, dim, blob in self._db.execute(q, chunk):
                    out[k] = np.frombuffer(blob, np.float16 if len(blob) == 2 * dim else np.float32).copy()
        return out

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        rows = [(k, int(v.size), np.ascontiguousarray(v, np.float16 if v.dtype == np.float16 else np.float32).tobytes())
                for k, v in items.items()]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?, ?)", rows)
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def close(self) -> None:
        self._db.close()
