"""A hostile corpus the tests write to disk: small crafted files that cost gigabytes, hang a
reader or decode to the wrong picture, beside valid images, each with the error it must get.

:func:`make_corpus` returns ``{file name: expected error substring or None (a valid file)}``.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from .synthetic import face_like

# a file name with a newline and a terminal escape code (red): printed raw, it would fake a row
EVIL_NAME = "evil\n\x1b[31mname.png"


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return enc.tobytes()


def png(img: np.ndarray) -> bytes:
    ok, enc = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return enc.tobytes()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG whose start-of-frame header is patched to claim ``width x height``
    (Pillow refuses to parse it; OpenCV would allocate the whole picture and decode it)."""
    b = bytearray(jpeg(face_like(np.random.default_rng(0), 16, False)))
    i = 2
    while True:
        marker = b[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            b[i + 5:i + 7] = height.to_bytes(2, "big")
            b[i + 7:i + 9] = width.to_bytes(2, "big")
            return bytes(b)
        i += 2 + int.from_bytes(b[i + 2:i + 4], "big")


def png_bomb(width: int, height: int) -> bytes:
    """A grey PNG of ``width x height`` zeros, compressed row by row (never held whole)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# --- mp4: move the index (moov) before the data, then cut the data ------------------------
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf"}


def _boxes(data, start=0, end=None):
    i, end = start, len(data) if end is None else end
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
        elif size == 0:
            size = end - i
        yield kind, i, size, header
        i += size


def _shift_chunk_offsets(moov: bytearray, delta: int, start: int = 8, end: int | None = None) -> None:
    for kind, i, size, header in _boxes(moov, start, end or len(moov)):
        if kind in _CONTAINERS:
            _shift_chunk_offsets(moov, delta, i + header, i + size)
        elif kind in (b"stco", b"co64"):
            n = struct.unpack(">I", moov[i + header + 4:i + header + 8])[0]
            fmt, w = (">I", 4) if kind == b"stco" else (">Q", 8)
            for k in range(n):
                o = i + header + 8 + k * w
                moov[o:o + w] = struct.pack(fmt, struct.unpack(fmt, moov[o:o + w])[0] + delta)


def faststart(data: bytes) -> bytes:
    """An mp4 rewritten with its index (moov) first, as streaming sites serve them."""
    top = list(_boxes(data))
    ftyp = next(b for b in top if b[0] == b"ftyp")
    moov = next(b for b in top if b[0] == b"moov")
    index = bytearray(data[moov[1]:moov[1] + moov[2]])
    _shift_chunk_offsets(index, len(index))
    rest = b"".join(data[i:i + size] for kind, i, size, _ in top if kind not in (b"ftyp", b"moov"))
    return data[ftyp[1]:ftyp[1] + ftyp[2]] + bytes(index) + rest


def video_mp4(path: Path, n_frames: int = 90, size: int = 96, fps: float = 30.0) -> Path:
    rng = np.random.default_rng(3)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    assert w.isOpened(), "OpenCV cannot write mp4 here"
    for _ in range(n_frames):
        w.write(cv2.cvtColor(face_like(rng, size, True), cv2.COLOR_RGB2BGR))
    w.release()
    return path


def cut_mp4(data: bytes, keep: float = 0.05) -> bytes:
    """A faststart mp4 whose index survives whole but whose data is cut to ``keep`` of it."""
    fast = faststart(data)
    mdat = next(b for b in _boxes(fast) if b[0] == b"mdat")
    return fast[:mdat[1] + int(keep * mdat[2])]


# --- the corpus --------------------------------------------------------------------------
def make_corpus(folder: Path, seed: int = 0, special: bool = True) -> dict[str, str | None]:
    """Write the hostile files (and a few valid ones) into ``folder``.

    ``special``: also the FIFO, the ``/dev/zero`` link, the symbolic-link loop and the sparse
    1.5 GB file (POSIX file systems only). Returns ``{name: expected error substring}``,
    None for the files that must be scored.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    good = [face_like(rng, 64, i % 2 == 1) for i in range(4)]
    whole = jpeg(face_like(rng, 256, True))
    whole_png = png(face_like(rng, 128, False))
    files: dict[str, tuple[bytes, str | None]] = {
        "good0.jpg": (jpeg(good[0]), None),
        "good1.png": (png(good[1]), None),
        "good2.jpg": (jpeg(good[2]), None),
        "good3.png": (png(good[3]), None),
        EVIL_NAME: (png(good[0]), None),
        "header-30000.jpg": (jpeg_claiming(30000, 30000), "30000 x 30000 pixels by its header"),
        "header-65500.jpg": (jpeg_claiming(65500, 65500), "65500 x 65500 pixels by its header"),
        "bomb-13000.png": (png_bomb(13000, 13000), "13000 x 13000 pixels by its header"),
        "bomb-20000.png": (png_bomb(20000, 20000), "image too large"),
        "half.jpg": (whole[:len(whole) // 2], "truncated or corrupt JPEG data"),
        "half-with-end.jpg": (whole[:len(whole) // 2] + b"\xff\xd9", "truncated or corrupt JPEG data"),
        "half.png": (whole_png[:len(whole_png) // 2], "truncated"),
        "half-with-end.png": (whole_png[:len(whole_png) // 2] + whole_png[-12:], "truncated"),
        "garbage.jpg": (bytes(rng.integers(0, 256, 3000, dtype=np.uint8)), "not an image format this program reads"),
        "empty.png": (b"", "empty file"),
    }
    expected = {}
    for name, (data, err) in files.items():
        (folder / name).write_bytes(data)
        expected[name] = err
    mp4 = video_mp4(folder / "clip.mp4")
    (folder / "cut.mp4").write_bytes(cut_mp4(mp4.read_bytes()))
    expected["clip.mp4"] = None
    expected["cut.mp4"] = None  # scored, with a warning and LOW confidence
    if special:
        os.mkfifo(folder / "fifo.jpg")
        expected["fifo.jpg"] = "a FIFO (named pipe), not a regular file"
        os.symlink("/dev/zero", folder / "zero.jpg")
        expected["zero.jpg"] = "a character device, not a regular file"
        os.symlink("loop.jpg", folder / "loop.jpg")
        expected["loop.jpg"] = "a loop of symbolic links"
        with open(folder / "sparse.jpg", "wb") as f:
            f.truncate(1536 * 2**20)
        expected["sparse.jpg"] = "file too large: 1536.0 MB"
    return expected


# --- round two: cost in seconds, extreme shapes, a type that lies by its name ---------------
def progressive_jpeg(img: np.ndarray) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.fromarray(img).save(out, "JPEG", progressive=True, quality=90)
    return out.getvalue()


def scan_bomb(img: np.ndarray, repeats: int) -> bytes:
    """A progressive JPEG whose last scan is repeated ``repeats`` times: each repeat is one
    more pass over the whole image for the decoder, and libjpeg warns of none of them."""
    data = progressive_jpeg(img)
    last = data.rindex(b"\xff\xda")
    scan = data[last:-2]  # SOS header and its entropy-coded data, up to EOI
    return data[:last] + scan * repeats + b"\xff\xd9"


def strip_png(width: int, height: int) -> bytes:
    """A valid PNG of ``width x height`` black pixels (tiny: a 1 x 64M strip compresses well)."""
    import struct
    import zlib

    raw = zlib.compress((b"\x00" + b"\x00" * width) * height, 9)  # filter byte + greyscale row

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def make_round_two(folder: Path, seed: int = 0) -> dict[str, str | None]:
    """Round two's files: ``{name: expected error substring, or None for a valid file}``."""
    folder.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (96, 96, 3), np.uint8)
    cut = jpeg(img)
    files = {
        "scan-bomb.jpg": (scan_bomb(img, 400), "scans; at most 100 are decoded"),
        "progressive.jpg": (progressive_jpeg(img), None),
        "strip-1x20000.png": (strip_png(20000, 1), "extreme shape"),
        "really-a-jpeg.mp4": (cut, None),  # decoded as the image it is
        "cut-jpeg-as.mp4": (cut[: len(cut) // 2] + b"\xff\xd9", "truncated or corrupt JPEG data"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: want for name, (_, want) in files.items()}
