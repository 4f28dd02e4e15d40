"""Bytes or files -> uint8 RGB arrays, and square resizing, behind the decoding gate.

Every image is checked before it is decoded (:mod:`.limits`): a regular file within the size
limit, and a header that gives a size within the pixel limit, whichever decoder then reads it.
JPEGs are decoded by libjpeg-turbo through simplejpeg in strict mode, so a file whose data
ends early (truncated, or cut and given a new end marker) is refused where libjpeg alone
would fill the missing rows with grey. The pixels are OpenCV's, and gate plus decode take
0.9x the time of a bare OpenCV decode (``benchmarks/decode.py``). EXIF orientation is applied here.
Everything else goes through Pillow, which refuses truncated files.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps

from .limits import InputRefused, Limits, check_jpeg_scans, check_pixels, current_limits, read_file

__all__ = ["MAX_SIDE", "ImageDecodeError", "decode_bytes", "image_header", "load_image", "resize"]

_JPEG_MAGIC = b"\xff\xd8\xff"
# libjpeg's recoverable warnings that lose nothing (camera files often have stray bytes)
_HARMLESS_JPEG_WARNINGS = ("extraneous bytes before marker",)
_OBJECT_REPR = re.compile(r"<[^<>]* (object )?at 0x[0-9a-fA-F]+>")


# The longest side an image is decoded to: a face in a 24-MP group photo keeps its pixels, and a
# 64-MP image (192 MB decoded) reaches the caller as 48 MB.
MAX_SIDE = 4096


class ImageDecodeError(ValueError):
    """A file or buffer that is not a readable image; the message names it and says why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"cannot read image {name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self):  # sent back from a decode worker
        return type(self), (self.name, self.reason)


def load_image(path: str | os.PathLike, size_hint: int | None = None, limits: Limits | None = None,
               max_side: int | None = MAX_SIDE) -> np.ndarray:
    """Read an image file as RGB, through the decoding gate.

    Parameters
    ----------
    path : image file (JPEG, PNG, WebP, BMP, ... anything Pillow reads)
    size_hint : the side the caller will resize to, if known. A JPEG at least twice as
        large on both sides is then decoded at a reduced scale (never below ``size_hint``):
        much faster for big photos, but the pixels differ slightly from a full decode, so
        use it only where training used it too. The DataLoader does not.
    limits : the gate's limits (default: :func:`~.limits.current_limits`).
    max_side : the longest side returned (:data:`MAX_SIDE`, None: no reduction). A larger
        image is reduced to it as it decodes: a JPEG in the DCT (libjpeg's 1/2, 1/4, 1/8,
        never below ``max_side``), then with ``INTER_AREA``; any other format right after its
        decode, in the decode worker, so only the reduced array reaches the caller. Every
        reader uses the same default, so a file gets the same pixels in ``predict``,
        ``evaluate``, training and the web app.

    Returns
    -------
    uint8 array (H, W, 3), RGB, upright (EXIF orientation applied), C-contiguous.

    Raises
    ------
    ImageDecodeError
        Missing, not a regular file, too large (bytes or pixels), empty, truncated or
        corrupt file, or a decode past ``limits.decode_seconds``; ``reason`` says which.
    """
    name = os.fspath(path)
    limits = limits or current_limits()
    try:
        data = read_file(name, "image", limits)
    except InputRefused as e:
        raise ImageDecodeError(name, e.reason) from e
    return decode_bytes(data, size_hint=size_hint, name=name, limits=limits, max_side=max_side)


def decode_bytes(data: bytes, size_hint: int | None = None, name: str = "<bytes>",
                 limits: Limits | None = None, in_worker: bool = False, max_side: int | None = MAX_SIDE) -> np.ndarray:
    """Decode an encoded image held in memory (an upload, say); see :func:`load_image`.

    A JPEG is decoded here, after its pixels and scans are checked; any other format in a
    worker process, stopped after ``limits.decode_seconds`` (:mod:`.deadline`; ``in_worker``:
    this is that worker). Returns uint8 (H, W, 3) RGB; raises :class:`ImageDecodeError`
    naming ``name``.
    """
    limits = limits or current_limits()
    if not data:
        raise ImageDecodeError(name, "empty file")
    if len(data) > limits.max_bytes("image"):
        raise ImageDecodeError(name, f"file too large: {len(data) / 2**20:.1f} MB; the limit for images is "
                                     f"{limits.max_bytes('image') / 2**20:g} MB (--max-image-mb)")
    try:
        img = None
        if data[:3] == _JPEG_MAGIC:
            width, height, orientation = image_header(data, name)
            _check_pixels(name, width, height, limits)
            _check_scans(name, data)
            img = _decode_jpeg(data, _dct_floor(width, height, size_hint, max_side), orientation, name)
        elif not in_worker:
            return _decode_with_deadline(data, size_hint, name, limits, max_side)  # reduced there
        if img is None:  # a JPEG whose colours simplejpeg cannot convert, or this is the worker
            img = _decode_pil(data, size_hint, name, limits, max_side)
        img = _reduce(img, max_side)
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001  whatever a decoder raises on a crafted file is that file's error
        raise ImageDecodeError(name, f"the decoder failed: {type(e).__name__}: {_clean(e, name)}") from e
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageDecodeError(name, f"unexpected decoded shape {img.shape}")
    return img


def image_header(data: bytes, name: str = "<bytes>") -> tuple[int, int, int]:
    """(width, height, EXIF orientation) from an encoded image's header, nothing decoded.

    JPEGs are read by walking their markers (OpenCV decodes some whose header Pillow cannot
    parse); other formats by Pillow's lazy open. :class:`ImageDecodeError` when no size can
    be read: a file the gate cannot size is not decoded.
    """
    if data[:3] == _JPEG_MAGIC:
        found = _jpeg_header(data)
        if found is None:
            raise ImageDecodeError(name, "a JPEG without a readable frame header (truncated or corrupt)")
        return found
    with _open_pil(data, name) as im:
        w, h = im.size
    return int(w), int(h), 1


_SAMPLE_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}


def _check_pixels(name: str, width: int, height: int, limits: Limits, channels: int = 3,
                  sample_bytes: int = 1) -> None:
    try:
        check_pixels(name, width, height, limits=limits, channels=channels, sample_bytes=sample_bytes)
    except InputRefused as e:
        raise ImageDecodeError(name, e.reason) from e


@contextlib.contextmanager
def _open_pil(data: bytes, name: str):
    """Pillow's lazy open (the header only), its refusals as :class:`ImageDecodeError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(name, f"image too large: {_clean(e, name)}") from e
    except Exception as e:  # noqa: BLE001  Pillow raises OSError, SyntaxError, ValueError, ...
        raise ImageDecodeError(name, _pil_reason(e, name)) from e
    with im:
        yield im


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 to (size, size, 3) uint8.

    Non-square images are stretched straight to the square, as the original tool did
    (no crop, no padding), so the whole face crop is always seen. INTER_AREA when both
    sides shrink (no aliasing), INTER_LINEAR otherwise. Returns ``img`` itself when it
    already has the size.
    """
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interp = cv2.INTER_AREA if (h >= size and w >= size) else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


# --- internals ---------------------------------------------------------------------------
def _decode_with_deadline(data: bytes, size_hint, name: str, limits: Limits, max_side) -> np.ndarray:
    from .deadline import DecodeTimeout, decode_in_worker

    try:
        return decode_in_worker(data, name, limits.decode_seconds, size_hint=size_hint, limits=limits,
                                max_side=max_side)
    except DecodeTimeout as e:
        raise ImageDecodeError(name, f"decoding took over {limits.decode_seconds:g} s and was stopped "
                                     "(--decode-seconds)") from e
    except EOFError as e:
        raise ImageDecodeError(name, "the decoder crashed (its worker process died)") from e


def _check_scans(name: str, data: bytes) -> None:
    try:
        check_jpeg_scans(name, data)
    except InputRefused as e:
        raise ImageDecodeError(name, e.reason) from e


def _jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) from a JPEG's markers, up to its start-of-frame."""
    i, n, orientation = 2, len(data), 1
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            h, w = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            return w, h, orientation
        else:
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
                orientation = _exif_orientation(data[i + 10:i + 2 + length])
            i += 2 + length
    return None


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in an EXIF block's TIFF data; 1 when absent."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    for k in range(min(count, 512)):
        e = ifd + 2 + 12 * k
        if e + 12 > len(tiff):
            break
        if int.from_bytes(tiff[e:e + 2], order) == 0x0112:
            v = int.from_bytes(tiff[e + 8:e + 10], order)
            return v if 1 <= v <= 8 else 1
    return 1


def _upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels -> upright, for an EXIF orientation 1..8 (as OpenCV and Pillow turn them)."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }.get(orientation)
    return img if turned is None else np.ascontiguousarray(turned(img))


def _dct_floor(width: int, height: int, size_hint: int | None, max_side: int | None) -> tuple[int, int] | None:
    """(min width, min height) a JPEG may be scaled down to in the DCT, or None (full size):
    ``size_hint`` on both sides, else the size that brings the longer side to ``max_side``."""
    if size_hint:
        return min(size_hint, width), min(size_hint, height)
    longest = max(width, height)
    if max_side and longest > max_side:
        return -(-width * max_side // longest), -(-height * max_side // longest)
    return None


def _reduce(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """``img`` with its longer side brought down to ``max_side`` (INTER_AREA), aspect kept."""
    h, w = img.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return img
    f = max_side / max(h, w)
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def _decode_jpeg(data: bytes, floor: tuple[int, int] | None, orientation: int, name: str) -> np.ndarray | None:
    """libjpeg-turbo, strict: a file with missing or corrupt data is refused. None where it
    cannot convert the file's colours (CMYK...): Pillow then decodes it. ``floor``: the
    (width, height) the DCT may scale it down to (never below)."""
    import simplejpeg

    hint = {"min_width": floor[0], "min_height": floor[1]} if floor else {}
    try:
        try:
            rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, **hint)
        except ValueError as e:
            if not any(w in str(e) for w in _HARMLESS_JPEG_WARNINGS):
                raise
            rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False, **hint)
    except ValueError as e:
        msg = str(e)
        if "premature end" in msg.lower() or msg.startswith("Corrupt JPEG data"):
            raise ImageDecodeError(name, f"truncated or corrupt JPEG data ({msg})") from e
        if "colorspace" in msg.lower() or "color conversion" in msg.lower() or "unsupported" in msg.lower():
            return None
        raise ImageDecodeError(name, f"not a readable JPEG ({msg})") from e
    return _upright(rgb, orientation)


def _decode_pil(data: bytes, size_hint: int | None, name: str, limits: Limits, max_side: int | None) -> np.ndarray:
    """One open: the header's size through the gate, then the decode."""
    with _open_pil(data, name) as im:
        # what Pillow holds decoded: its bands at their sample size
        _check_pixels(name, *im.size, limits, len(im.getbands()), _SAMPLE_BYTES.get(im.mode, 1))
        try:
            floor = _dct_floor(*im.size, size_hint, max_side)
            if floor and im.format == "JPEG":
                im.draft("RGB", floor)  # DCT-domain downscale, keeps >= floor
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # no full-size copy
            if max_side and max(im.size) >= 2 * max_side:  # a box reduction by a whole factor first, in
                im = im.reduce(max(im.size) // max_side)  # Pillow: never a full-size array (then _reduce)
            return _to_rgb(im)
        except Exception as e:  # noqa: BLE001  Pillow raises OSError, SyntaxError, ValueError, ...
            raise ImageDecodeError(name, _pil_reason(e, name)) from e


def _clean(e: Exception, name: str) -> str:
    """An exception's message with object reprs (``<_io.BytesIO object at 0x...>``) replaced
    by the file's name, so that the same file always gets the same message."""
    return _OBJECT_REPR.sub(name, str(e))


def _pil_reason(e: Exception, name: str) -> str:
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image format this program reads"
    return f"{type(e).__name__}: {_clean(e, name)}"


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 (H, W, 3). Alpha is composited on black; 16-bit keeps the top byte."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16/32-bit grey
        a = np.asarray(im)
        wide = im.mode.startswith("I;16") or a.max(initial=0) > 255  # 16-bit range -> 8-bit
        out = np.empty(a.shape[:2] + (3,), np.uint8)
        for r in range(0, len(a), _BAND_ROWS):  # in bands of rows: no full-size float copy
            band = a[r : r + _BAND_ROWS]
            g = np.clip(band.astype(np.float64) / 257.0 + 0.5, 0, 255) if wide else band
            out[r : r + _BAND_ROWS] = g.astype(np.uint8)[:, :, None]
        return out
    has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"))
        out = np.empty(rgba.shape[:2] + (3,), np.uint8)
        for r in range(0, len(rgba), _BAND_ROWS):  # over black, in bands of rows (uint16 per band only)
            band = rgba[r : r + _BAND_ROWS].astype(np.uint16)
            out[r : r + _BAND_ROWS] = (band[:, :, :3] * band[:, :, 3:] + 127) // 255
        return out
    return np.array(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)


_BAND_ROWS = 256  # rows converted at a time
