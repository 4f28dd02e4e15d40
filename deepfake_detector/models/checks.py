"""What a model file may say about itself, checked in one place for every kind of model file.

:func:`check_model_meta` checks the numbers a prediction is made with (temperature,
threshold, input size and normalisation, class names, test-time augmentation, face margin)
for a .npz checkpoint, an .onnx export, a CLIP head and a bundle alike;
:func:`checked_config` checks the builder arguments a checkpoint names before its
architecture is built. Every failure is a :class:`~deepfake_detector.nn.io.CheckpointError`,
one line naming the file and what is wrong.
"""

from __future__ import annotations

import inspect
import math
from numbers import Real

from ..nn.io import CheckpointError
from .predictor import TTA_KINDS, Preprocess

MIN_INPUT_SIZE, MAX_INPUT_SIZE = 16, 2048  # pixels per side a model file may ask for
MAX_CONFIG_INT = 1 << 16  # any integer builder argument but the seed (widths, depths, hidden units...)
MAX_CONFIG_ITEMS = 64  # entries of a list argument (widths per stage...)
MAX_FACE_MARGIN = 2.0  # margin per side of the face crops, in face sizes
NO_DOWNLOAD = {"pretrained": False, "weights": None}  # a checkpoint holds every weight: nothing else is read


def finite_number(v) -> bool:
    """A real number (not a bool) that is finite as a float."""
    if not isinstance(v, Real) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def check_input_size(name, size) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        raise CheckpointError(f"{name}: input size {size!r} is not an integer in "
                              f"{MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}")
    return size


def _checked_preprocess(name, pp) -> Preprocess:
    if isinstance(pp, Preprocess):
        pp = {"input_size": pp.input_size, "mean": pp.mean, "std": pp.std}
    if not isinstance(pp, dict) or not {"input_size", "mean", "std"} <= set(pp):
        raise CheckpointError(f"{name}: preprocess must give input_size, mean and std, got {pp!r}")
    size = check_input_size(name, pp["input_size"])
    out = []
    for key in ("mean", "std"):
        v = pp[key]
        if (not isinstance(v, (list, tuple)) or len(v) != 3
                or not all(finite_number(x) for x in v)):
            raise CheckpointError(f"{name}: preprocess {key} must be 3 finite numbers, got {v!r}")
        out.append(tuple(float(x) for x in v))
    if min(out[1]) <= 0:
        raise CheckpointError(f"{name}: preprocess std must be > 0, got {list(out[1])}")
    return Preprocess(size, out[0], out[1])


def check_model_meta(name, meta, preprocess=None, class_names=None) -> Preprocess | None:
    """Check what a model file says (``meta``: its threshold, temperature...; ``preprocess``:
    a dict or :class:`Preprocess`, None for a model that has none of its own; ``class_names``)
    and return the checked :class:`Preprocess`. ``None`` threshold or temperature: not set."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{name}: its metadata is not a JSON object")
    t = meta.get("temperature")
    if t is not None and not (finite_number(t) and t > 0):
        raise CheckpointError(f"{name}: temperature {t!r} is not a finite number > 0")
    th = meta.get("threshold")
    if th is not None and not (finite_number(th) and 0 <= th <= 1):
        raise CheckpointError(f"{name}: threshold {th!r} is not a finite number in [0, 1]")
    m = meta.get("face_margin")
    if m is not None and not (finite_number(m) and 0 <= m <= MAX_FACE_MARGIN):
        raise CheckpointError(f"{name}: face_margin {m!r} is not a finite number in [0, {MAX_FACE_MARGIN}]")
    if meta.get("tta") not in (None, *TTA_KINDS):
        raise CheckpointError(f"{name}: unknown test-time augmentation {meta.get('tta')!r}; known: "
                              f"{', '.join(TTA_KINDS)}")
    if class_names is not None and (not isinstance(class_names, (list, tuple)) or len(class_names) != 2
                                    or not all(isinstance(c, str) for c in class_names)):
        raise CheckpointError(f"{name}: class_names must be two strings, got {class_names!r}")
    return None if preprocess is None else _checked_preprocess(name, preprocess)


def _check_value(name, key, v, depth=0) -> None:
    if v is None or isinstance(v, (bool, str)):
        if isinstance(v, str) and len(v) > 4096:
            raise CheckpointError(f"{name}: config {key} is a string of {len(v)} characters")
        return
    if isinstance(v, int):
        if key != "seed" and not -MAX_CONFIG_INT <= v <= MAX_CONFIG_INT:
            raise CheckpointError(f"{name}: config {key}={v} is out of range (|value| <= {MAX_CONFIG_INT})")
        if key == "seed" and not 0 <= v < 1 << 63:
            raise CheckpointError(f"{name}: config seed={v} is not in 0..2^63-1")
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise CheckpointError(f"{name}: config {key}={v} is not finite")
        return
    if isinstance(v, (list, tuple)) and depth == 0:
        if len(v) > MAX_CONFIG_ITEMS:
            raise CheckpointError(f"{name}: config {key} has {len(v)} items (at most {MAX_CONFIG_ITEMS})")
        for x in v:
            _check_value(name, key, x, depth + 1)
        return
    raise CheckpointError(f"{name}: config {key}={v!r} is not a number, string, or list of them")


def checked_config(name, arch, config) -> dict:
    """The builder arguments of architecture ``arch`` from a checkpoint's ``config``, checked
    (known arguments only; numbers finite and bounded; ``input_size`` as
    :func:`check_input_size`) and with ``pretrained``/``weights`` turned off, so that
    rebuilding never reads another file nor the network: the checkpoint holds every weight."""
    from .registry import builder_of

    try:
        build = builder_of(arch)
    except KeyError as e:
        raise CheckpointError(f"{name}: {e.args[0]}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{name}: config must be a JSON object, got {type(config).__name__}")
    params = inspect.signature(build).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in config if k not in params) if not takes_any else []
    if unknown:
        raise CheckpointError(f"{name}: config names arguments {unknown} that architecture {arch!r} does not take")
    if "input_size" in config:
        check_input_size(name, config["input_size"])
    for k, v in config.items():
        _check_value(name, k, v)
    return {**config, **{k: v for k, v in NO_DOWNLOAD.items() if k in params or takes_any}}


MAX_META_JSON = 1 << 20  # bytes of one JSON metadata value (ONNX metadata, a bundle manifest)
MAX_META_DEPTH = 32  # nesting of lists and objects in it


def bounded_json(name, text, what: str = "metadata"):
    """``json.loads(text)`` with a size and a nesting limit: a CheckpointError, never a
    RecursionError or a multi-GB parse."""
    import json

    if len(text) > MAX_META_JSON:
        raise CheckpointError(f"{name}: its {what} JSON is {len(text)} bytes (at most {MAX_META_JSON})")
    depth = best = 0
    in_string = escaped = False
    for ch in text if isinstance(text, str) else text.decode("utf-8", "replace"):  # nesting, before parsing
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
            if best > MAX_META_DEPTH:
                raise CheckpointError(f"{name}: its {what} JSON nests deeper than {MAX_META_DEPTH} levels")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{name}: unreadable {what} JSON ({type(e).__name__}: {str(e)[:200]})") from e


def check_onnx_weights(name, data: bytes) -> None:
    """Every floating-point initializer and constant of the ONNX graph in ``data`` is finite
    (a NaN weight makes every verdict the same; an infinite one, "Fake 1.0000")."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001  protobuf raises its own types
        raise CheckpointError(f"{name}: not a readable ONNX graph ({type(e).__name__})") from e

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    yield from tensors(g)

    for t in tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise CheckpointError(f"{name}: tensor {t.name} lives in an external file; a model file must hold "
                                  "every weight")
        arr = numpy_helper.to_array(t)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise CheckpointError(f"{name}: weight {t.name} holds NaN or infinite values")
