"""Which files are media: the one table of image and video extensions, and a folder walk
that says what it left out instead of dropping it silently.

Extensions are matched case-insensitively. Files and folders whose name starts with a dot
are hidden: never yielded, never counted as ignored.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "MEDIA_KINDS", "VIDEO_EXTENSIONS", "IgnoredFiles", "MediaWalk", "kind_of",
           "walk_media"]


def _pillow_reads_avif() -> bool:
    try:  # Pillow >= 11.3 wheels decode AVIF; older ones do not know the module name at all
        from PIL import features

        return bool(features.check_module("avif"))
    except (ImportError, ValueError):
        return False


# The photo formats data.decode.load_image reads (JPEG via OpenCV, the rest via Pillow; GIF:
# its first frame). Formats Pillow also opens but nobody keeps photos in (.ico, .psd, .ppm,
# .tga...) are left out, so that a folder walk does not pick up icons and intermediates.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff") + (
    (".avif",) if _pillow_reads_avif() else ())
# Containers OpenCV's FFmpeg backend opens (video.read).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
MEDIA_KINDS = ("image", "video")
UNREADABLE = "unreadable folder"
_BY_EXTENSION = {**{e: "video" for e in VIDEO_EXTENSIONS}, **{e: "image" for e in IMAGE_EXTENSIONS}}


def kind_of(path: str | os.PathLike) -> str | None:
    """``"image"``, ``"video"`` or None, from the file name's extension (any case)."""
    return _BY_EXTENSION.get(os.path.splitext(os.fspath(path))[1].lower())



_IMAGE_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def content_kind(head: bytes) -> str | None:
    """``"image"``, ``"video"`` or None (unknown) from a file's first bytes (16 are enough):
    the bytes, not the name, decide which decoder a file gets."""
    if head[:3] == b"\xff\xd8\xff" or head[:8] == b"\x89PNG\r\n\x1a\n" or head[:6] in (b"GIF87a", b"GIF89a") \
            or head[:4] in (b"II*\x00", b"MM\x00*") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP") \
            or head[:2] == b"BM":
        return "image"
    if head[4:8] == b"ftyp":
        return "image" if head[8:12] in _IMAGE_BRANDS else "video"
    if head[:4] == b"\x1a\x45\xdf\xa3" or head[:3] == b"FLV" or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"
    return None


def sniffed_kind(path, named: str | None) -> str | None:
    """The kind of ``path`` by its content, or ``named`` (by its name) where the content says
    nothing or the file cannot be opened (its decoder then reports why)."""
    from .limits import InputRefused, open_regular

    try:
        with open_regular(path, named or "image") as f:
            head = f.read(16)
    except (InputRefused, OSError):
        return named
    return content_kind(head) or named

@dataclass
class IgnoredFiles:
    """What a :class:`MediaWalk` skipped: how many, the first few, and how many of each type.

    ``by_type`` keys are lower-case extensions (``".txt"``), ``"no extension"``, or, for
    entries that are not plain files, ``"folder link"`` (symbolic links to folders are not
    followed), ``"link out of the folder"`` (a file link whose target lies outside the walked
    folder), ``"unreadable folder"`` (see :attr:`lost`) and ``"not a file"`` (sockets,
    FIFOs... without an image or video name; with one they are yielded, so the caller gives
    them an error row saying what they are).
    """

    count: int = 0
    examples: list[Path] = field(default_factory=list)
    by_type: Counter = field(default_factory=Counter)
    max_examples: int = 5

    def add(self, path: Path, why: str) -> None:
        self.count += 1
        self.by_type[why] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(path)

    def merge(self, other: IgnoredFiles) -> None:
        """Add what another walk ignored to this count."""
        self.count += other.count
        self.by_type.update(other.by_type)
        self.examples.extend(other.examples[: max(0, self.max_examples - len(self.examples))])

    @property
    def lost(self) -> int:
        """How many folders could not be read: inputs that may have been lost, not merely
        files of another type (a caller exits non-zero for these)."""
        return self.by_type.get(UNREADABLE, 0)

    def __bool__(self) -> bool:
        return self.count > 0

    def describe(self) -> str:
        """One line, e.g. ``3 ignored (.txt: 2, no extension: 1), e.g. a/notes.txt, a/README``;
        ``""`` when nothing was ignored."""
        if not self.count:
            return ""
        types = ", ".join(f"{k}: {n}" for k, n in self.by_type.most_common())
        more = ", ..." if self.count > len(self.examples) else ""
        from ..text import printable

        return f"{self.count} ignored ({types}), e.g. {', '.join(printable(e) for e in self.examples)}{more}"


class MediaWalk:
    """Media files under folders, lazily, in sorted recursive order; see :func:`walk_media`.

    An iterator (one pass): iterate it, then read :attr:`ignored` (an :class:`IgnoredFiles`,
    complete once :attr:`done`) and :attr:`found` (files yielded so far).
    """

    def __init__(self, sources: str | os.PathLike | Iterable[str | os.PathLike],
                 kinds: str | Iterable[str] = MEDIA_KINDS, *, max_examples: int = 5, follow_links: bool = False):
        self.follow_links = follow_links
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        self.sources = list(sources)
        self.kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        unknown = set(self.kinds) - set(MEDIA_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"unknown media kind(s) {sorted(unknown)}; choose from {', '.join(MEDIA_KINDS)}")
        self.ignored = IgnoredFiles(max_examples=max_examples)
        self.found = 0
        self.done = False
        self._gen = self._walk()

    def __iter__(self) -> Iterator[Path]:
        return self

    def __next__(self) -> Path:
        try:
            path = next(self._gen)
        except StopIteration:
            self.done = True
            raise
        self.found += 1
        return path

    def items(self) -> Iterator[tuple[Path, str | None]]:
        """The same pass as iterating, as ``(path, kind_of(path))``: None only for a named file
        that is neither an image nor a video."""
        for path in self:
            yield path, kind_of(path)

    def __repr__(self):
        return (f"MediaWalk({len(self.sources)} source(s), kinds={self.kinds}, found={self.found}, "
                f"ignored={self.ignored.count}, done={self.done})")

    def _walk(self) -> Iterator[Path]:
        for src in self.sources:
            p = Path(src)
            if p.is_dir():
                yield from self._walk_dir(p)
            else:  # named by the caller: yielded as given, the caller reports what is wrong with it
                yield p

    def _walk_dir(self, root: Path) -> Iterator[Path]:
        """Depth first in sorted order, with a stack of its own (any depth: no recursion).
        Links to folders are not followed (no loops); a file link whose target lies outside
        ``root`` is skipped and counted, unless ``follow_links``."""
        real_root = os.path.realpath(root)
        stack = [self._entries(root)]
        while stack:
            folder, entries = stack[-1]
            e = next(entries, None)
            if e is None:
                stack.pop()
                continue
            path = folder / e.name
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(self._entries(path))
                    continue
                if e.is_dir():
                    self.ignored.add(path, "folder link")
                    continue
                is_file = e.is_file()
                link = e.is_symlink()
            except OSError:
                is_file, link = False, False
            if kind_of(e.name) in self.kinds:
                if link and not self.follow_links and not _inside(os.path.realpath(path), real_root):
                    self.ignored.add(path, "link out of the folder")
                    continue
                yield path  # a FIFO, device or broken link too: the decoding gate says what it is
            elif not is_file:
                self.ignored.add(path, "not a file")
            else:
                self.ignored.add(path, os.path.splitext(e.name)[1].lower() or "no extension")

    def _entries(self, folder: Path):
        """(folder, an iterator over its sorted entries but hidden ones); an unreadable folder
        is counted and gives none."""
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            self.ignored.add(folder, UNREADABLE)
            entries = []
        return folder, iter(entries)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk_media(sources: str | os.PathLike | Iterable[str | os.PathLike],
               kinds: str | Iterable[str] = MEDIA_KINDS, *, max_examples: int = 5,
               follow_links: bool | None = None) -> MediaWalk:
    """The image and/or video files of ``sources``, as :class:`~pathlib.Path`, lazily.

    Parameters
    ----------
    sources : a path or several. A folder is walked recursively; its entries come in sorted
        order, a sub-folder's files where the sub-folder's name sorts (the order of
        ``sorted(paths)``). Anything else (a file, a missing path) is yielded as given,
        whatever its extension: the caller named it, so the caller reports what is wrong
        with it.
    kinds : ``"image"``, ``"video"`` or both (:data:`MEDIA_KINDS`, the default), by
        :func:`kind_of`.
    max_examples : how many ignored paths ``ignored.examples`` keeps.
    follow_links : read file links whose target lies outside the walked folder (default
        ``$DEEPFAKE_DETECTOR_FOLLOW_LINKS``, else no: they are counted as ignored).

    Returns
    -------
    A :class:`MediaWalk`. Files of a walked folder that are not of ``kinds``, symbolic links
    to folders (not followed) and unreadable folders are counted in its ``ignored``, which
    is complete once the iteration ends::

        walk = walk_media(folder)
        for path in walk:
            ...
        if walk.ignored:
            log.warning("%s: %s", folder, walk.ignored.describe())
    """
    if follow_links is None:
        follow_links = os.environ.get(ENV_FOLLOW_LINKS, "") not in ("", "0")
    return MediaWalk(sources, kinds, max_examples=max_examples, follow_links=follow_links)


ENV_FOLLOW_LINKS = "DEEPFAKE_DETECTOR_FOLLOW_LINKS"  # --follow-links; scan workers inherit it
