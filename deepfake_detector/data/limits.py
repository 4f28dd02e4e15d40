"""The limits every input file is held to before it is decoded: the decoding gate.

Images and videos from strangers go through here first, whoever reads them (``predict``,
``evaluate``, ``train``, ``scan``, the web app): only a regular file is opened (a FIFO, a
device or a link loop is refused, never read), a file over :attr:`Limits.max_image_mb` or
:attr:`Limits.max_video_mb` is refused before a byte is read, and an image or video frame
whose header announces more than :attr:`Limits.max_pixels` pixels is refused before it is
decoded.

The limits live in the environment (``DEEPFAKE_DETECTOR_MAX_IMAGE_MB``, ``..._MAX_VIDEO_MB``,
``..._MAX_PIXELS``), so scan workers and other child processes hold the same ones;
:func:`set_limits` (the CLI's ``--max-image-mb``, ``--max-video-mb``, ``--max-pixels``) writes
them there.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

__all__ = ["DEFAULT_DECODE_SECONDS",
           "DEFAULT_MAX_DECODED_MB", "DEFAULT_MAX_IMAGE_MB", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_VIDEO_MB",
           "InputRefused", "Limits",
           "check_pixels", "current_limits", "open_regular", "read_file", "regular_file_size", "set_limits",
           "check_jpeg_scans", "MAX_ASPECT", "MAX_JPEG_SCANS"]

# An 8K frame is 33 MP and a 48-MP phone photo passes; decoded, 64 MP is 192 MB of RGB, so a
# few such requests at once fit a 24 GB machine with room to spare.
DEFAULT_MAX_PIXELS = 64_000_000
# Images are read whole into memory, and a 64-MP PNG is rarely over 150 MB. Videos are
# streamed from disk, never read whole (a 10-minute 1080p clip is about 1 GB).
DEFAULT_MAX_IMAGE_MB = 200.0
DEFAULT_MAX_VIDEO_MB = 4096.0
ENV_MAX_IMAGE_MB = "DEEPFAKE_DETECTOR_MAX_IMAGE_MB"
ENV_MAX_VIDEO_MB = "DEEPFAKE_DETECTOR_MAX_VIDEO_MB"
ENV_MAX_PIXELS = "DEEPFAKE_DETECTOR_MAX_PIXELS"
# What one decoded image may hold: width x height x channels x bytes per sample. A 64-MP RGB
# photo is 192 MB and passes; a 64-MP RGBA or 16-bit RGB PNG (256 or 384 MB) is refused.
DEFAULT_MAX_DECODED_MB = 256.0
ENV_MAX_DECODED_MB = "DEEPFAKE_DETECTOR_MAX_DECODED_MB"
# Wall-clock seconds for decoding one image whose cost its header cannot bound (every format but
# JPEG, whose scans are counted first): such a decode runs in a worker process, killed at the
# deadline (data.deadline). A 54-MP PNG decodes in about 3 s on a 2-core Xeon.
DEFAULT_DECODE_SECONDS = 8.0
ENV_DECODE_SECONDS = "DEEPFAKE_DETECTOR_DECODE_SECONDS"


class InputRefused(ValueError):
    """A file the gate will not decode; ``reason`` says why, without the file's name."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """What one input may cost: bytes on disk (images are read whole, videos streamed) and
    decoded pixels (an image, or one video frame)."""

    max_image_mb: float = DEFAULT_MAX_IMAGE_MB
    max_video_mb: float = DEFAULT_MAX_VIDEO_MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decoded_mb: float = DEFAULT_MAX_DECODED_MB
    decode_seconds: float = DEFAULT_DECODE_SECONDS

    def __post_init__(self):
        for name in ("max_image_mb", "max_video_mb", "max_pixels", "max_decoded_mb", "decode_seconds"):
            v = getattr(self, name)
            if not (v > 0):  # also refuses NaN
                raise ValueError(f"{name} must be > 0, got {v}")

    def max_bytes(self, kind: str) -> int:
        return int((self.max_image_mb if kind == "image" else self.max_video_mb) * 2**20)


_ENVS = (ENV_MAX_IMAGE_MB, ENV_MAX_VIDEO_MB, ENV_MAX_PIXELS, ENV_MAX_DECODED_MB, ENV_DECODE_SECONDS)
_PARSED: dict[tuple, Limits] = {}  # the environment's values -> their Limits, parsed once


def current_limits() -> Limits:
    """The limits in force: the environment's (parsed once per distinct set of values), else
    the defaults. A caller with limits of its own passes them (``PredictOptions.limits``)."""
    key = tuple(os.environ.get(name) for name in _ENVS)
    limits = _PARSED.get(key)
    if limits is None:
        limits = _PARSED[key] = _limits_from(dict(zip(_ENVS, key)))
    return limits


def _limits_from(env: dict) -> Limits:
    def value(name, default, cast):
        text = env.get(name)
        if not text:
            return default
        try:
            return cast(text)
        except ValueError as e:
            raise ValueError(f"{name}={text!r} is not a number") from e

    return Limits(value(ENV_MAX_IMAGE_MB, DEFAULT_MAX_IMAGE_MB, float),
                  value(ENV_MAX_VIDEO_MB, DEFAULT_MAX_VIDEO_MB, float), value(ENV_MAX_PIXELS, DEFAULT_MAX_PIXELS, int),
                  value(ENV_MAX_DECODED_MB, DEFAULT_MAX_DECODED_MB, float),
                  value(ENV_DECODE_SECONDS, DEFAULT_DECODE_SECONDS, float))


def set_limits(max_image_mb: float | None = None, max_video_mb: float | None = None,
               max_pixels: int | None = None, max_decoded_mb: float | None = None,
               decode_seconds: float | None = None) -> Limits:
    """Change the limits for this process and its children (None keeps a limit); returns them."""
    given = {"max_image_mb": max_image_mb, "max_video_mb": max_video_mb, "max_pixels": max_pixels,
             "max_decoded_mb": max_decoded_mb, "decode_seconds": decode_seconds}
    Limits(**{k: v for k, v in given.items() if v is not None})  # a bad value fails here, not at a file
    env = {ENV_MAX_IMAGE_MB: max_image_mb, ENV_MAX_VIDEO_MB: max_video_mb, ENV_MAX_PIXELS: max_pixels,
           ENV_MAX_DECODED_MB: max_decoded_mb, ENV_DECODE_SECONDS: decode_seconds}
    for name, value in env.items():
        if value is not None:
            os.environ[name] = str(value)
    return current_limits()


_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


def _what(mode: int) -> str:
    for test, what in _NOT_REGULAR:
        if test(mode):
            return what
    return "not a regular file"


def _refuse_os_error(name: str, e: OSError):
    if e.errno == errno.ELOOP:
        raise InputRefused(name, "a loop of symbolic links") from e
    if e.errno == errno.ENOENT:
        raise InputRefused(name, "no such file" + (" (a broken symbolic link)" if os.path.islink(name) else "")) from e
    raise InputRefused(name, e.strerror or type(e).__name__) from e


def _check_size(name: str, size: int, kind: str, limits: Limits) -> None:
    cap = limits.max_bytes(kind)
    if size > cap:
        raise InputRefused(name, f"file too large: {size / 2**20:.1f} MB; the limit for {kind}s is "
                                 f"{cap / 2**20:g} MB (--max-{kind}-mb)")


def regular_file_size(path, kind: str = "video", limits: Limits | None = None) -> int:
    """The size of ``path`` if it is a regular file within the limits (links followed);
    :class:`InputRefused` naming what it is otherwise. Nothing is opened."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except OSError as e:
        _refuse_os_error(name, e)
    if not stat.S_ISREG(st.st_mode):
        raise InputRefused(name, f"{_what(st.st_mode)}, not a regular file")
    _check_size(name, st.st_size, kind, limits or current_limits())
    if st.st_size == 0:
        raise InputRefused(name, "empty file")
    return st.st_size


def open_regular(path, kind: str = "image", limits: Limits | None = None):
    """``path`` opened for reading in binary, if it is a regular file within the size limit
    for ``kind``; :class:`InputRefused` naming what it is otherwise.

    Opened non-blocking, so a FIFO cannot stall the open, and checked with ``fstat`` on the
    open file, so no swapped name slips through."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        _refuse_os_error(name, e)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputRefused(name, f"{_what(st.st_mode)}, not a regular file")
        _check_size(name, st.st_size, kind, limits or current_limits())
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_file(path, kind: str = "image", limits: Limits | None = None) -> bytes:
    """The bytes of a regular file within the size limit (:func:`open_regular`), in one read
    of the size its inode gives: a file that grows while it is read is refused."""
    with open_regular(path, kind, limits) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            data = f.read(size + 1)
        except OSError as e:
            _refuse_os_error(os.fspath(path), e)
    if len(data) > size:
        raise InputRefused(os.fspath(path), "file grew while it was read")
    if not data:
        raise InputRefused(os.fspath(path), "empty file")
    return data


MAX_ASPECT = 100  # longer side / shorter side: a 1 x 64,000,000 strip decodes to gigabytes in some readers
MAX_JPEG_SCANS = 100  # a progressive JPEG decodes each scan as another pass (libjpeg's own progressive mode: 10)


def check_jpeg_scans(name: str, data: bytes) -> None:
    """:class:`InputRefused` for a JPEG of more than :data:`MAX_JPEG_SCANS` scans: 25,000
    repeated scans of an 8000-px image run for minutes, with no warning from libjpeg. Each
    scan starts with an SOS marker, which entropy-coded data cannot hold (0xFF is stuffed)."""
    n = data.count(b"\xff\xda")
    if n > MAX_JPEG_SCANS:
        raise InputRefused(name, f"a JPEG of {n} scans; at most {MAX_JPEG_SCANS} are decoded (each is another "
                                 "pass over the whole image)")


def check_pixels(name: str, width: int, height: int, what: str = "image", limits: Limits | None = None,
                 channels: int = 3, sample_bytes: int = 1) -> None:
    """:class:`InputRefused` unless ``width x height`` (from a header) is a sane size within
    ``max_pixels``, of a sane shape, and decodes (``channels`` samples of ``sample_bytes``
    each per pixel) to at most ``max_decoded_mb``."""
    limits = limits or current_limits()
    if width <= 0 or height <= 0:
        raise InputRefused(name, f"the header gives an impossible size, {width} x {height}")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InputRefused(name, f"{what} of an extreme shape: {width} x {height} pixels by its header; at most "
                                 f"{MAX_ASPECT}:1 is decoded")
    if width * height > limits.max_pixels:
        raise InputRefused(name, f"{what} too large: {width} x {height} pixels by its header; the limit is "
                                 f"{limits.max_pixels / 1e6:g} megapixels (--max-pixels)")
    decoded = width * height * channels * sample_bytes
    if decoded > limits.max_decoded_mb * 2**20:
        raise InputRefused(name, f"{what} too large once decoded: {width} x {height} x {channels} channels x "
                                 f"{sample_bytes} byte(s) = {decoded / 2**20:.0f} MB; the limit is "
                                 f"{limits.max_decoded_mb:g} MB (--max-decoded-mb)")
