"""Sources -> file paths: folders, image / video files, glob patterns and text lists of paths,
streamed (:func:`iter_sources`), checked up front (:func:`check_sources`) and counted; and a
file's identity, the SHA-256 of its bytes (:func:`file_digest`)."""

from __future__ import annotations

import glob
import hashlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..data.limits import open_regular
from ..data.media import IgnoredFiles, kind_of, walk_media

_GLOB_CHARS = frozenset("*?[")


def iter_sources(sources: Iterable, ignored: IgnoredFiles | None = None) -> Iterator[str]:
    """Absolute file paths, streamed, from each source in turn:

    * a folder: its images and videos, recursively, in sorted order (``data.media.walk_media``);
    * an image or video file: itself;
    * any other existing file: a list of paths, one a line (blank lines and ``#`` comments
      skipped; a relative path is relative to the list file's folder; a folder is walked;
      ``-`` reads the list from standard input, relative to the current folder);
    * a glob pattern (``*``, ``?``, ``[``; ``**`` recurses): its matching images and videos
      (and the contents of matching folders);
    * anything else (a missing file): itself, reported as failed by the scan.

    Files a folder walk or a pattern finds but cannot use are counted in ``ignored``.
    """
    ignored = IgnoredFiles() if ignored is None else ignored
    for src in sources:
        s = os.fspath(src)
        if s == "-":
            yield from _list_lines(sys.stdin, os.getcwd(), ignored)
        elif os.path.isdir(s):
            yield from _walk(s, ignored)
        elif os.path.isfile(s):
            if kind_of(s):
                yield os.path.abspath(s)
            else:
                with open(s, encoding="utf-8") as f:
                    yield from _list_lines(f, os.path.dirname(os.path.abspath(s)), ignored)
        elif _GLOB_CHARS.intersection(s):
            for p in glob.iglob(s, recursive=True):
                if os.path.isdir(p):
                    yield from _walk(p, ignored)
                elif kind_of(p):
                    yield os.path.abspath(p)
                else:
                    ignored.add(Path(p), os.path.splitext(p)[1].lower() or "no extension")
        else:
            yield os.path.abspath(s)


def _walk(folder: str, ignored: IgnoredFiles) -> Iterator[str]:
    """A folder's images and videos (:func:`~deepfake_detector.data.media.walk_media`), what it
    skipped added to ``ignored``."""
    walk = walk_media([folder])
    yield from (os.path.abspath(p) for p in walk)
    ignored.merge(walk.ignored)


def check_sources(sources: list) -> None:
    """Fail early on a source that cannot be one: a missing path that is no glob pattern, or a
    file that is neither an image, a video nor a text list of paths."""
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


def _list_lines(lines, base: str, ignored: IgnoredFiles) -> Iterator[str]:
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = os.path.join(base, os.path.expanduser(line))
        if os.path.isdir(p):
            yield from _walk(p, ignored)
        else:
            yield os.path.abspath(p)


def count_sources(sources: list) -> int | None:
    """How many paths :func:`iter_sources` yields (None when a source is standard input)."""
    if any(os.fspath(s) == "-" for s in sources):
        return None
    return sum(1 for _ in iter_sources(sources))


def file_digest(path) -> tuple[bytes, int]:
    """(SHA-256 digest of the file's bytes, its size), read in chunks. Only a regular file
    within the size limit is read (:func:`~deepfake_detector.data.limits.open_regular`):
    :class:`~deepfake_detector.data.limits.InputRefused` otherwise (a FIFO would never end),
    OSError where reading fails."""
    with open_regular(path, kind_of(path) or "video") as f:
        if hasattr(hashlib, "file_digest"):  # Python 3.11+
            h = hashlib.file_digest(f, "sha256")
        else:
            h = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.digest(), f.tell()
