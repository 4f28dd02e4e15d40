"""The checkpoint file: a .npz of named arrays plus one JSON header, never a pickle.

Layout of the zip: ``param/<name>``, ``buffer/<name>``, ``optim/<name>/<slot>`` arrays and
``__meta__`` (UTF-8 JSON as uint8). Loading uses ``allow_pickle=False``, so a file that
holds a pickle (or is one) is refused instead of executed. Arrays are stored as NumPy, so
a file written from a GPU loads on a CPU and the other way round. Every member's ``.npy``
header is read (and checked against the member's declared size, their total against
:data:`MAX_CHECKPOINT_BYTES`) before any array data is, and floating-point arrays must be
finite; what the arrays must be for a given architecture is the model loader's check
(:func:`deepfake_detector.models.scratch.load_checkpoint`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile

import numpy as np

from .backend import to_numpy

FORMAT = "deepfake-detector/npz"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a checkpoint this program can load safely."""


def save_arrays(path, groups: dict[str, dict], meta: dict) -> None:
    """Write ``{group: {name: array}}`` and ``meta`` atomically (temp file + rename)."""
    path = os.fspath(path)
    arrays = {}
    for group, named in groups.items():
        for name, a in named.items():
            arrays[f"{group}/{name}"] = to_numpy(a)
    header = dict(meta, format=FORMAT, format_version=FORMAT_VERSION)
    arrays["__meta__"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


MAX_CHECKPOINT_BYTES = 2 << 30  # all the arrays of one checkpoint, as their headers declare them
MAX_META_BYTES = 16 << 20  # the JSON header
ARRAY_KINDS = "biuf"  # bool, integer and floating-point arrays; anything else is refused


def _member_header(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of one ``.npy`` member, from its header alone: no array data is read.

    Refused unless the header's shape and dtype account for exactly the member's declared
    (uncompressed) size, so that reading it can never allocate more than it says."""
    fmt = np.lib.format
    try:
        with z.open(info) as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise CheckpointError(f"{path}: {info.filename}: unsupported .npy version {version}")
            offset = f.tell()
    except CheckpointError:
        raise
    except (ValueError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: {info.filename}: unreadable array header ({e})") from e
    if dtype.hasobject:
        raise CheckpointError(f"{path}: refused, it holds pickled objects ({info.filename} has dtype {dtype})")
    if dtype.kind not in ARRAY_KINDS or dtype.itemsize > 8 or dtype.fields is not None:
        raise CheckpointError(f"{path}: {info.filename}: dtype {dtype} is not a plain numeric array")
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size != offset + nbytes:
        raise CheckpointError(f"{path}: {info.filename}: its header says {tuple(shape)} {dtype} ({nbytes} bytes) "
                              f"but the member holds {info.file_size - offset} bytes")
    return tuple(shape), dtype


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> np.ndarray:
    try:
        with z.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except ValueError as e:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        raise CheckpointError(f"{path}: refused, it holds pickled objects ({e})") from e
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from e


def _members(z: zipfile.ZipFile, path: str) -> dict[str, zipfile.ZipInfo]:
    """{key: info} of every member (``group/name`` or ``__meta__``), each a ``.npy`` array, once."""
    out: dict[str, zipfile.ZipInfo] = {}
    for info in z.infolist():
        key = info.filename[:-4] if info.filename.endswith(".npy") else None
        if key is None or not (key == "__meta__" or "/" in key.strip("/")):
            raise CheckpointError(f"{path}: unexpected member {info.filename!r} (not a group/name array)")
        if key in out:
            raise CheckpointError(f"{path}: member {info.filename!r} appears twice")
        out[key] = info
    return out


def _meta_of(z: zipfile.ZipFile, members: dict, path: str) -> dict:
    info = members.get("__meta__")
    if info is None:
        raise CheckpointError(f"{path}: no __meta__ header; not a deepfake-detector checkpoint")
    shape, dtype = _member_header(z, info, path)
    if dtype != np.uint8 or len(shape) != 1 or info.file_size > MAX_META_BYTES:
        raise CheckpointError(f"{path}: __meta__ must be a 1-D uint8 array of at most {MAX_META_BYTES} bytes, "
                              f"got {shape} {dtype}")
    try:
        meta = json.loads(_read_member(z, info, path).tobytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable __meta__ header ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta


def check_finite(groups: dict[str, dict], path) -> None:
    """CheckpointError naming the first floating-point array that holds a NaN or an infinity."""
    for group, named in groups.items():
        for name, a in named.items():
            a = np.asarray(a)
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise CheckpointError(f"{path}: {group}/{name} holds NaN or infinite values")


def load_arrays(path, check=None) -> tuple[dict[str, dict], dict]:
    """Read a file written by :func:`save_arrays`: ``({group: {name: array}}, meta)``.

    Before any array is read, every member's ``.npy`` header is checked against its declared
    size, their total against :data:`MAX_CHECKPOINT_BYTES`, and ``check(headers, meta)``,
    where given, sees ``headers`` ``{group: {name: (shape, dtype)}}`` and the JSON header
    (it raises CheckpointError to refuse: e.g. arrays the architecture does not have). The
    arrays read are checked finite. Failures are CheckpointError, one line naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a deepfake-detector checkpoint (.npz). Pickle files (.pkl, .pt) are "
            "refused because loading one can run arbitrary code."
        )
    try:
        with zipfile.ZipFile(path) as z:
            members = _members(z, path)
            headers: dict[str, dict] = {}
            total = 0
            for key, info in members.items():
                shape, dtype = _member_header(z, info, path)
                total += info.file_size
                if key != "__meta__":
                    group, name = key.split("/", 1)
                    headers.setdefault(group, {})[name] = (shape, dtype)
            if total > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(f"{path}: its arrays would take {total} bytes once decompressed, over the "
                                      f"{MAX_CHECKPOINT_BYTES}-byte limit; refused")
            meta = _meta_of(z, members, path)
            if check is not None:
                check(headers, meta)
            groups: dict[str, dict] = {}
            for key, info in members.items():
                if key != "__meta__":
                    group, name = key.split("/", 1)
                    groups.setdefault(group, {})[name] = _read_member(z, info, path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from e
    check_finite(groups, path)
    return groups, meta


def read_meta(path) -> dict:
    """The JSON header of a checkpoint, without reading its arrays (CheckpointError if none)."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as z:
            return _meta_of(z, _members(z, path), path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: not a deepfake-detector checkpoint ({e})") from e
