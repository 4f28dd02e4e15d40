"""Uploads: size limits, file types judged by content, streaming a request body to disk.

Nothing here trusts the client: the declared ``Content-Length`` is checked first (a
request announcing too much is refused before any byte is read), then the bytes are
counted as they arrive (a client that lies or sends chunked data is cut off at the limit),
and the type comes from the first bytes of the file (magic numbers), never from its name
or the declared content type.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..data.limits import DEFAULT_MAX_PIXELS  # the one default, for uploads as for files

DEFAULT_MAX_UPLOAD_MB = 50.0
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers allowed on top of the file
SNIFF_BYTES = 64
MAX_BOUNDARY = 200  # multipart boundary length: RFC 2046 allows 70; a longer one is refused with 400
HEADER_BYTES = 1 << 20  # enough for an image's size: a JPEG's frame header follows its EXIF and ICC blocks


class UploadError(Exception):
    """An upload refused; ``status`` is the HTTP status to answer with."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class UploadTooLarge(UploadError):
    status = 413


class UnsupportedType(UploadError):
    status = 415


class UploadTimeout(UploadError):
    """The body stalled or took too long (408); the rest of it is not read."""

    status = 408


@dataclass(frozen=True)
class FileType:
    kind: str  # "image" | "video"
    ext: str  # the extension the library reads it by, with the dot
    name: str  # human-readable format name


JPEG = FileType("image", ".jpg", "JPEG")
PNG = FileType("image", ".png", "PNG")
WEBP = FileType("image", ".webp", "WebP")
BMP = FileType("image", ".bmp", "BMP")
MP4 = FileType("video", ".mp4", "MP4")
MOV = FileType("video", ".mov", "QuickTime")
MKV = FileType("video", ".mkv", "Matroska")
WEBM = FileType("video", ".webm", "WebM")
AVI = FileType("video", ".avi", "AVI")

# ISO base media brands that are still images, not videos (HEIF/HEIC, AVIF)
_IMAGE_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}


def max_bytes(max_upload_mb: float) -> int:
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
    return int(max_upload_mb * 1024 * 1024)


def sniff(head: bytes) -> FileType:
    """The type of a file from its first bytes (:data:`SNIFF_BYTES` are enough).

    Accepted: JPEG, PNG, WebP, BMP images; MP4 / MOV (``ftyp`` box), Matroska / WebM (EBML)
    and AVI videos. Raises :class:`UnsupportedType` for an empty file, GIF, HEIC/AVIF and
    anything unknown.
    """
    if not head:
        raise UnsupportedType("empty file")
    if head[:3] == b"\xff\xd8\xff":
        return JPEG
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return PNG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return AVI
    if head[:2] == b"BM" and len(head) >= 26 and _plausible_bmp(head):
        return BMP
    if head[:6] in (b"GIF87a", b"GIF89a"):
        raise UnsupportedType("GIF images are not supported; send a JPEG, PNG, WebP or BMP")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            raise UnsupportedType(f"{brand.decode('ascii', 'replace').strip()} images (HEIF/AVIF) are "
                                  "not supported; send a JPEG, PNG, WebP or BMP")
        return MOV if brand == b"qt  " else MP4
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return WEBM if b"webm" in head[:SNIFF_BYTES] else MKV
    raise UnsupportedType("unknown file type: send an image (JPEG, PNG, WebP, BMP) or a video "
                          "(MP4, MOV, MKV, WebM, AVI)")


def _plausible_bmp(head: bytes) -> bool:
    """'BM' starts many text files; check the header's reserved fields and DIB size too."""
    reserved = head[6:10]
    dib = int.from_bytes(head[14:18], "little")
    return reserved == b"\x00\x00\x00\x00" and dib in (12, 40, 52, 56, 64, 108, 124)


def check_pixels(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse (413) an image whose header announces more than ``max_pixels`` pixels: a few
    kilobytes of JPEG or PNG can decode to gigabytes. The header is read the way the
    decoding gate reads it (``data.decode.image_header``: JPEG markers, then Pillow), so a
    JPEG that only OpenCV would open is sized too; a header that cannot be read is left to
    the decoder to refuse."""
    from ..data.decode import ImageDecodeError, image_header

    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)  # the decoder reads the file whole later; the size is near its start
    try:
        w, h, _ = image_header(head, "upload")
    except ImageDecodeError as e:
        if "too large" in e.reason:
            raise UploadTooLarge(e.reason) from e
        return
    if w * h > max_pixels:
        raise UploadTooLarge(f"image too large: {w} x {h} pixels; the limit is {max_pixels / 1e6:g} megapixels")


def upload_folder() -> Path:
    """Where Gradio keeps what a browser uploaded (``$GRADIO_TEMP_DIR``, else its default)."""
    from gradio.utils import get_upload_folder

    return Path(os.path.realpath(get_upload_folder()))


def check_uploaded(path, folder: Path | None = None) -> str:
    """``path`` if it lies inside the upload folder once every link is resolved; else
    :class:`UploadError` 403. A UI function is given a path by the client: a path to any
    other server file (a project file, ``/etc/...``, a link out of the folder) is refused."""
    folder = folder or upload_folder()
    real = os.path.realpath(str(path))
    if not real.startswith(str(folder) + os.sep):
        raise UploadError("not a file uploaded to this app; only uploads are analysed", 403)
    return str(path)


def check_file(path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_pixels: int = DEFAULT_MAX_PIXELS) -> FileType:
    """Size, type and (for images) pixel-count checks for a file already on disk. Only a
    regular file is opened (``data.limits.open_regular``): a FIFO or a device is refused (415)
    instead of waited on."""
    from ..data.limits import InputRefused, open_regular

    try:
        with open_regular(path, "video") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(SNIFF_BYTES)
    except InputRefused as e:
        raise UnsupportedType(e.reason) from e
    limit = max_bytes(max_upload_mb)
    if size > limit:
        raise UploadTooLarge(f"file too large: {size / 2**20:.1f} MB; the limit is {max_upload_mb:g} MB")
    ftype = sniff(head)
    if ftype.kind == "image":
        check_pixels(path, max_pixels)
    return ftype


def safe_name(filename: str | None, default: str = "upload") -> str:
    """The client's file name reduced to a harmless base name (for display only)."""
    name = Path(str(filename or "").replace("\\", "/")).name
    name = re.sub(r"[^\w.\- ()\[\]+]", "_", name).strip(" .")
    return name[:200] or default


class CountingWriter:
    """Writes chunks to a file and refuses to go past ``limit`` bytes."""

    def __init__(self, path, limit: int, limit_mb: float):
        self.path = Path(path)
        self.limit, self.limit_mb = limit, limit_mb
        self.size = 0
        self.head = b""
        self._f = open(self.path, "wb")  # noqa: SIM115  closed by close()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLarge(f"file too large: more than {self.limit_mb:g} MB")
        if len(self.head) < SNIFF_BYTES:
            self.head += bytes(data[: SNIFF_BYTES - len(self.head)])
        self._f.write(data)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


@dataclass
class Received:
    path: Path  # where the file part was written
    filename: str | None  # the client's file name, as sent
    size: int  # bytes
    head: bytes  # its first bytes, for :func:`sniff`
    fields: dict  # the form's other (text) fields


async def body_chunks(request, idle_timeout: float | None = None, deadline: float | None = None):
    """The body of a Starlette ``request``, chunk by chunk, each wait bounded: raises
    :class:`UploadTimeout` when no bytes come for ``idle_timeout`` seconds or the whole body
    is not in within ``deadline`` seconds of the call, :class:`UploadError` when the client
    disconnects. ``None``: no limit."""
    loop = asyncio.get_running_loop()
    end = None if deadline is None else loop.time() + deadline
    while True:
        wait = idle_timeout
        if end is not None:
            left = end - loop.time()
            if left <= 0:
                raise UploadTimeout(f"upload not finished within {deadline:g} s")
            wait = left if wait is None else min(wait, left)
        try:
            message = await asyncio.wait_for(request.receive(), wait)
        except asyncio.TimeoutError:
            if end is not None and loop.time() >= end - 1e-3:
                raise UploadTimeout(f"upload not finished within {deadline:g} s") from None
            raise UploadTimeout(f"upload stalled: no data for {idle_timeout:g} s") from None
        if message["type"] == "http.disconnect":
            raise UploadError("the client disconnected during the upload")
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


async def receive_file(request, dest_dir, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
                       field: str = "file", idle_timeout: float | None = None,
                       deadline: float | None = None) -> Received:
    """Stream the multipart/form-data body of a Starlette ``request`` into ``dest_dir``.

    Returns a :class:`Received` for the first file part named ``field``.
    Raises :class:`UploadTooLarge` (declared or counted size over the limit),
    :class:`UploadTimeout` (408: no bytes for ``idle_timeout`` seconds, or the body not
    finished within ``deadline`` seconds; ``None``: no limit) or :class:`UploadError` (400:
    not multipart, no such field, the client gone).
    """
    try:
        from python_multipart import multipart as pm
    except ImportError:  # python-multipart < 0.0.13
        from multipart import multipart as pm

    limit = max_bytes(max_upload_mb)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError as e:
            raise UploadError("invalid Content-Length") from e
        if declared_n > limit + MULTIPART_OVERHEAD:
            raise UploadTooLarge(f"request too large: {declared_n / 2**20:.1f} MB; the limit is "
                                 f"{max_upload_mb:g} MB")
    ctype, params = pm.parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError("send the file as multipart/form-data in a field named 'file'")
    if not 1 <= len(params[b"boundary"]) <= MAX_BOUNDARY:
        raise UploadError(f"malformed multipart body: a boundary of {len(params[b'boundary'])} characters "
                          f"(RFC 2046 allows 1 to 70; at most {MAX_BOUNDARY} taken)")

    state = {"name": None, "filename": None, "writer": None, "field": bytearray(), "headers": {},
             "header_field": bytearray(), "header_value": bytearray(), "error": None}
    fields: dict[str, str] = {}
    found: dict = {}

    def on_part_begin():
        state.update(name=None, filename=None, writer=None, headers={})
        state["field"] = bytearray()

    def on_header_field(data, start, end):
        state["header_field"] += data[start:end]

    def on_header_value(data, start, end):
        state["header_value"] += data[start:end]

    def on_header_end():
        state["headers"][bytes(state["header_field"]).lower()] = bytes(state["header_value"])
        state["header_field"], state["header_value"] = bytearray(), bytearray()

    def on_headers_finished():
        _, disp = pm.parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if b"filename" in disp and name == field and "path" not in found:
            state["filename"] = disp[b"filename"].decode("utf-8", "replace")
            path = Path(dest_dir) / "upload.bin"
            state["writer"] = CountingWriter(path, limit, max_upload_mb)
            found.update(path=path, filename=state["filename"], writer=state["writer"])

    def on_part_data(data, start, end):
        w = state["writer"]
        if w is not None:
            w.write(data[start:end])
        elif len(state["field"]) < 4096:  # small text fields only
            state["field"] += data[start:end]

    def on_part_end():
        if state["writer"] is not None:
            state["writer"].close()
        elif state["name"]:
            fields[state["name"]] = bytes(state["field"]).decode("utf-8", "replace")

    parser = pm.MultipartParser(params[b"boundary"], callbacks={
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished})
    total = 0
    try:
        async for chunk in body_chunks(request, idle_timeout, deadline):
            total += len(chunk)
            if total > limit + MULTIPART_OVERHEAD:
                raise UploadTooLarge(f"request too large: more than {max_upload_mb:g} MB")
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as e:  # noqa: BLE001  the parser raises its own errors on malformed bodies
        raise UploadError(f"malformed multipart body: {e}") from e
    finally:
        if found.get("writer") is not None:
            found["writer"].close()
    if "path" not in found:
        raise UploadError(f"no file in the form field {field!r}")
    w = found["writer"]
    return Received(found["path"], found["filename"], w.size, w.head, fields)
