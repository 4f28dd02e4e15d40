"""The checkpoint file: a .npz of named arrays plus one JSON header, never a pickle.

Layout of the zip: ``param/<name>``, ``buffer/<name>``, ``optim/<name>/<slot>`` arrays and
``__meta__`` (UTF-8 JSON as uint8). Loading uses ``allow_pickle=False``, so a file that
holds a pickle (or is one) is refused instead of executed. Arrays are stored as NumPy, so
a file written from a GPU loads on a CPU and the other way round.
"""

from __future__ import annotations

import json
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


def load_arrays(path) -> tuple[dict[str, dict], dict]:
    """Read a file written by :func:`save_arrays`: ``({group: {name: array}}, meta)``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a deepfake-detector checkpoint (.npz). Pickle files (.pkl, .pt) are "
            "refused because loading one can run arbitrary code."
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            if "__meta__" not in z.files:
                raise CheckpointError(f"{path}: no __meta__ header; not a deepfake-detector checkpoint")
            meta = json.loads(z["__meta__"].tobytes().decode("utf-8"))
            groups: dict[str, dict] = {}
            for key in z.files:
                if key == "__meta__":
                    continue
                group, name = key.split("/", 1)
                groups.setdefault(group, {})[name] = z[key]
    except CheckpointError:
        raise
    except ValueError as e:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        raise CheckpointError(f"{path}: refused, it holds pickled objects ({e})") from e
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {meta.get('format')!r}")
    return groups, meta


def read_meta(path) -> dict:
    """The JSON header of a checkpoint, without reading its arrays (CheckpointError if none)."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as z, z.open("__meta__.npy") as f:
            meta = json.loads(np.lib.format.read_array(f, allow_pickle=False).tobytes().decode("utf-8"))
    except (KeyError, ValueError, zipfile.BadZipFile, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a deepfake-detector checkpoint ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {meta.get('format')!r}")
    return meta
