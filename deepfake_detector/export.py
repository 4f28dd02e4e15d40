"""Export a model to ONNX, so that the .onnx file alone predicts (onnxruntime, no torch).

File contract: input ``image`` float32 (N, 3, S, S), already normalised (``Model.normalize``
makes it from uint8 pixels), output ``logits`` float32 (N, 2); the architecture, config,
preprocessing, class names and ``meta`` go into ``metadata_props`` (:func:`metadata_of`),
which :class:`deepfake_detector.models.onnx_model.OnnxModel` reads back. Main names:
:func:`export_onnx` (which asks the model to write its own graph: ``model.export_onnx``,
through :func:`export_sequential` for the from-scratch engine and :func:`export_torch` for
torch), :func:`verify_export`, :func:`sequential_graph` (the layer -> ONNX rules); ``onnx`` is
imported only when exporting.
Near 500 lines because the engine's layer-by-layer converter lives beside the writer it feeds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import __version__
from .models.onnx_format import (
    FORMAT,
    FORMAT_VERSION,
    INPUT_NAME,
    META_ARCH,
    META_BN_FOLDED,
    META_CLASS_NAMES,
    META_CONFIG,
    META_FORMAT,
    META_FORMAT_VERSION,
    META_META,
    META_PARAMETERS,
    META_PREPROCESS,
    META_SOURCE_KIND,
    OUTPUT_NAME,
)

MIN_OPSET = 13  # Gemm without C, Flatten and the pooling attributes used here are all older


class ExportError(ValueError):
    """The model cannot be exported (an unsupported layer, an unknown engine...)."""


class UnsupportedLayerError(ExportError, TypeError):
    """A layer with no ONNX rule."""


def _require_onnx():
    try:
        import onnx  # noqa: PLC0415 - optional, only for exporting
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ExportError("exporting to ONNX needs the onnx package: pip install 'deepfake-detector[onnx]' "
                          "(or pip install onnx)") from e
    return onnx


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _dumps(o) -> str:
    return json.dumps(o, default=_json_default)


def metadata_of(model, bn_folded: bool | None = None) -> dict[str, str]:
    """The ``metadata_props`` written into the .onnx file for ``model`` (all strings)."""
    pp = model.preprocess
    num_params = model.num_parameters()
    props = {
        META_FORMAT: FORMAT,
        META_FORMAT_VERSION: str(FORMAT_VERSION),
        META_ARCH: str(model.arch),
        META_CONFIG: _dumps(model.config),
        META_PREPROCESS: _dumps({"input_size": int(pp.input_size), "mean": [float(v) for v in pp.mean],
                                 "std": [float(v) for v in pp.std]}),
        META_CLASS_NAMES: _dumps([str(c) for c in model.class_names]),
        META_META: _dumps(dict(model.meta)),
        META_SOURCE_KIND: str(model.kind),
    }
    if num_params is not None:
        props[META_PARAMETERS] = str(int(num_params))
    if bn_folded is not None:
        props[META_BN_FOLDED] = "1" if bn_folded else "0"
    return props


def write_metadata(onnx_model, model, bn_folded: bool | None = None):
    """Set ``onnx_model.metadata_props`` (replacing ours, keeping others) and the producer fields.

    Shared by every exporter: a torch exporter loads what ``torch.onnx.export`` wrote,
    calls this and saves again.
    """
    props = metadata_of(model, bn_folded)
    kept = [(p.key, p.value) for p in onnx_model.metadata_props if p.key not in props]
    del onnx_model.metadata_props[:]
    for k, v in [*kept, *props.items()]:
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx_model.producer_name = "deepfake_detector"
    onnx_model.producer_version = __version__
    onnx_model.doc_string = (f"deepfake_detector {model.arch}: input '{INPUT_NAME}' float32 (N, 3, S, S) "
                             f"normalised, output '{OUTPUT_NAME}' (N, {len(model.class_names)}) logits; "
                             "see metadata_props")
    return onnx_model


# --- the from-scratch engine ---------------------------------------------------------------


class _Graph:
    """Nodes and initialisers being built, with unique names and the running shape (no batch)."""

    def __init__(self, onnx, fold_bn: bool):
        self.onnx, self.helper, self.fold_bn = onnx, onnx.helper, fold_bn
        self.nodes: list = []
        self.inits: list = []
        self._used: set = set()

    def unique(self, name: str) -> str:
        base = name.replace("/", ".") or "t"
        out, i = base, 1
        while out in self._used:
            i += 1
            out = f"{base}_{i}"
        self._used.add(out)
        return out

    def const(self, name: str, array) -> str:
        name = self.unique(name)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list, name: str, **attrs) -> str:
        out = self.unique(f"{name}.out" if name else op)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=self.unique(f"{name}.{op}"), **attrs))
        return out


def _host(a) -> np.ndarray:
    from .nn.backend import to_numpy

    return np.asarray(to_numpy(a))


def _bn_scale_shift(bn):
    """Per-channel (scale, shift) of an inference-mode batch norm, in float64."""
    gamma = _host(bn.params["weight"]).astype(np.float64)
    beta = _host(bn.params["bias"]).astype(np.float64)
    mean = _host(bn.buffers["running_mean"]).astype(np.float64)
    var = _host(bn.buffers["running_var"]).astype(np.float64)
    scale = gamma / np.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _conv(g: _Graph, layer, name, x, shape, bn=None):
    C, H, W = shape
    if C != layer.in_channels:
        raise ExportError(f"{name}: Conv2D expects {layer.in_channels} channels, gets {C}")
    w = _host(layer.params["weight"])
    b = _host(layer.params["bias"]) if "bias" in layer.params else None
    if bn is not None:
        scale, shift = _bn_scale_shift(bn)
        w = (w.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
        b = ((0.0 if b is None else b.astype(np.float64)) * scale + shift).astype(np.float32)
    inputs = [x, g.const(f"{name}.weight", w.astype(np.float32))]
    if b is not None:
        inputs.append(g.const(f"{name}.bias", b.astype(np.float32)))
    s, p = int(layer.stride), int(layer.padding)
    y = g.node("Conv", inputs, name, kernel_shape=[layer.kh, layer.kw], strides=[s, s], pads=[p, p, p, p],
               dilations=[1, 1], group=1)
    Ho, Wo = (H + 2 * p - layer.kh) // s + 1, (W + 2 * p - layer.kw) // s + 1
    return y, (layer.out_channels, Ho, Wo)


def _dense(g: _Graph, layer, name, x, shape, bn=None):
    if len(shape) != 1:
        raise ExportError(f"{name}: Dense needs (N, features) input, gets (N, {', '.join(map(str, shape))}); "
                          "add a Flatten or GlobalAvgPool2D before it")
    if shape[0] != layer.in_features:
        raise ExportError(f"{name}: Dense expects {layer.in_features} features, gets {shape[0]}")
    w = _host(layer.params["weight"])
    b = _host(layer.params["bias"]) if "bias" in layer.params else None
    if bn is not None:
        scale, shift = _bn_scale_shift(bn)
        w = (w.astype(np.float64) * scale[:, None]).astype(np.float32)
        b = ((0.0 if b is None else b.astype(np.float64)) * scale + shift).astype(np.float32)
    inputs = [x, g.const(f"{name}.weight", w.astype(np.float32))]
    if b is not None:
        inputs.append(g.const(f"{name}.bias", b.astype(np.float32)))
    return g.node("Gemm", inputs, name, alpha=1.0, beta=1.0, transA=0, transB=1), (layer.out_features,)


def _batchnorm(g: _Graph, layer, name, x, shape):
    if shape[0] != layer.num_features:
        raise ExportError(f"{name}: batch norm over {layer.num_features} channels, input has {shape[0]}")
    inputs = [x] + [g.const(f"{name}.{k}", _host(d[k]).astype(np.float32))
                    for d, k in ((layer.params, "weight"), (layer.params, "bias"),
                                 (layer.buffers, "running_mean"), (layer.buffers, "running_var"))]
    return g.node("BatchNormalization", inputs, name, epsilon=float(layer.eps)), shape


def _pool(op, **extra):
    def convert(g: _Graph, layer, name, x, shape):
        if len(shape) != 3:
            raise ExportError(f"{name}: {type(layer).__name__} needs (N, C, H, W) input")
        C, H, W = shape
        k, s, p = int(layer.k), int(layer.s), int(layer.p)
        y = g.node(op, [x], name, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], ceil_mode=0,
                   **extra)
        return y, (C, (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1)

    return convert


def _global_avg(g: _Graph, layer, name, x, shape):
    if len(shape) != 3:
        raise ExportError(f"{name}: GlobalAvgPool2D needs (N, C, H, W) input")
    y = g.node("GlobalAveragePool", [x], name)
    return g.node("Flatten", [y], name, axis=1), (shape[0],)


def _flatten(g: _Graph, layer, name, x, shape):
    return g.node("Flatten", [x], name, axis=1), (int(np.prod(shape)),)


def _attention_pool(g: _Graph, layer, name, x, shape):
    """(N, T, D) -> (N, D): the scores by MatMul/Add/Tanh/MatMul, Softmax over the tokens,
    then the weighted sum as Mul and ReduceSum."""
    if len(shape) != 2 or shape[1] != layer.dim:
        raise ExportError(f"{name}: AttentionPool needs (N, tokens, {layer.dim}) input, gets "
                          f"(N, {', '.join(map(str, shape))})")
    h = g.node("MatMul", [x, g.const(f"{name}.weight_t", _host(layer.params["weight"]).T.astype(np.float32))], name)
    h = g.node("Add", [h, g.const(f"{name}.bias", _host(layer.params["bias"]).astype(np.float32))], name)
    h = g.node("Tanh", [h], name)
    s = g.node("MatMul", [h, g.const(f"{name}.score", _host(layer.params["score"]).astype(np.float32)[:, None])],
               name)  # (N, T, 1)
    a = g.node("Softmax", [s], name, axis=1)
    y = g.node("Mul", [a, x], name)
    return g.node("ReduceSum", [y, g.const(f"{name}.axes", np.array([1], np.int64))], name, keepdims=0), \
        (shape[1],)


def _relu(g, layer, name, x, shape):
    return g.node("Relu", [x], name), shape


def _leaky(g, layer, name, x, shape):
    return g.node("LeakyRelu", [x], name, alpha=float(layer.negative_slope)), shape


def _identity(g, layer, name, x, shape):
    return x, shape


def _layer_rules() -> dict[type, Callable]:
    from . import nn

    return {nn.Conv2D: _conv, nn.Dense: _dense, nn.BatchNorm2D: _batchnorm, nn.BatchNorm1D: _batchnorm,
            nn.ReLU: _relu, nn.LeakyReLU: _leaky, nn.MaxPool2D: _pool("MaxPool"),
            nn.AvgPool2D: _pool("AveragePool", count_include_pad=1), nn.GlobalAvgPool2D: _global_avg,
            nn.Flatten: _flatten, nn.Dropout: _identity, nn.AttentionPool: _attention_pool}


def _flat_layers(seq, prefix=""):
    """(dotted name, layer) for every leaf layer of a (nested) Sequential, in order."""
    from . import nn

    for name, layer in seq.children():
        full = f"{prefix}{name}"
        if isinstance(layer, nn.Sequential):
            yield from _flat_layers(layer, f"{full}.")
        else:
            yield full, layer


def sequential_graph(seq, input_size: int, in_channels: int = 3, fold_bn: bool = True,
                     dynamic_batch: bool = True, graph_name: str = "deepfake_detector",
                     input_shape: tuple | None = None):
    """An ``onnx.GraphProto`` computing ``seq`` in inference mode on (N, C, S, S) input, or on
    (N, *input_shape) (a head on (N, features) vectors, say).

    From-scratch (NumPy/CuPy engine) layers are converted one by one with the ``onnx`` helper
    API, no torch involved. Layer -> ONNX:

    =================  ===========================================================
    Conv2D             Conv (pads from ``padding``, strides from ``stride``)
    BatchNorm2D/1D     folded into the preceding Conv2D / Dense (``fold_bn=True``,
                       the default: the same maths in one op, faster); otherwise, or
                       where no Conv2D / Dense precedes it, BatchNormalization in
                       inference mode with the running statistics
    ReLU / LeakyReLU   Relu / LeakyRelu(alpha=negative_slope)
    MaxPool2D          MaxPool (pads = padding; padded cells never win, as in the engine)
    AvgPool2D          AveragePool(count_include_pad=1): zero padding counts in the mean
    GlobalAvgPool2D    GlobalAveragePool + Flatten
    Flatten            Flatten(axis=1) (C-order, as the engine's reshape)
    Dense              Gemm(transB=1), weight (out, in) as stored
    Dropout            nothing (identity at inference)
    AttentionPool      MatMul, Add, Tanh, MatMul, Softmax(axis=1), Mul, ReduceSum
    Sequential         its layers, in order
    =================  ===========================================================

    Folding uses float64 for the arithmetic: ``w' = w * gamma / sqrt(var + eps)`` per output
    channel, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``, then float32. A layer
    with no rule raises :class:`UnsupportedLayerError`.
    """
    onnx = _require_onnx()
    from . import nn

    rules = _layer_rules()
    g = _Graph(onnx, fold_bn)
    layers = list(_flat_layers(seq))
    unsupported = [(n, l) for n, l in layers if type(l) not in rules]
    if unsupported:
        n, l = unsupported[0]
        raise UnsupportedLayerError(
            f"cannot export layer {n!r} ({type(l).__name__}) to ONNX; supported layers: "
            f"{', '.join(sorted(t.__name__ for t in rules))}")
    shape = tuple(input_shape) if input_shape else (in_channels, input_size, input_size)
    x = INPUT_NAME
    i = 0
    while i < len(layers):
        name, layer = layers[i]
        nxt = layers[i + 1][1] if i + 1 < len(layers) else None
        foldable = (isinstance(layer, nn.Conv2D) and isinstance(nxt, nn.BatchNorm2D)) or \
                   (isinstance(layer, nn.Dense) and isinstance(nxt, nn.BatchNorm1D))
        if fold_bn and foldable:
            width = layer.out_channels if isinstance(layer, nn.Conv2D) else layer.out_features
            if nxt.num_features != width:
                raise ExportError(f"{layers[i + 1][0]}: batch norm over {nxt.num_features} channels after "
                                  f"{name!r} with a different width")
            x, shape = rules[type(layer)](g, layer, name, x, shape, bn=nxt)
            i += 2
            continue
        x, shape = rules[type(layer)](g, layer, name, x, shape)
        i += 1
    if len(shape) != 1:
        raise ExportError(f"the network ends with shape (N, {', '.join(map(str, shape))}), not (N, classes)")
    if x == INPUT_NAME:  # an all-identity network still needs a node between input and output
        x = g.node("Identity", [x], "identity")
    g.nodes[-1].output[0] = OUTPUT_NAME  # the last node writes the graph's output
    batch = "N" if dynamic_batch else 1
    h = onnx.helper
    inp = h.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT,
                                   [batch, *(input_shape or (in_channels, input_size, input_size))])
    out = h.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, [batch, shape[0]])
    return h.make_graph(g.nodes, graph_name, [inp], [out], initializer=g.inits)


def export_sequential(model, out_path: Path, opset: int, dynamic_batch: bool, fold_bn: bool = True) -> None:
    onnx = _require_onnx()
    from . import nn

    if not isinstance(getattr(model, "net", None), nn.Sequential):
        raise ExportError(f"{type(model).__name__}: a {model.kind} model but no nn.Sequential in .net")
    graph = sequential_graph(model.net, model.input_size, fold_bn=fold_bn, dynamic_batch=dynamic_batch,
                             graph_name=str(model.arch))
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = onnx.helper.find_min_ir_version_for(opsets)  # the oldest IR: widest runtime support
    write_metadata(proto, model, bn_folded=fold_bn)
    onnx.checker.check_model(proto, full_check=True)  # also runs shape inference
    _save_atomic(onnx, proto, out_path)


def head_onnx_bytes(head, in_shape, opset: int = 17) -> bytes:
    """A from-scratch head (a Sequential on (N, *in_shape) features: vectors, or tokens for an
    attention pooling) as ONNX bytes: input ``image`` (N, *in_shape), output ``logits`` (N, 2);
    no metadata (a bundle carries it)."""
    onnx = _require_onnx()
    in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
    graph = sequential_graph(head, 0, input_shape=in_shape, graph_name="head")
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def _save_atomic(onnx, proto, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".tmp-{os.getpid()}-{out_path.name}")
    try:
        onnx.save_model(proto, str(tmp))
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()


def export_torch(model, out_path: Path, opset: int, dynamic_batch: bool, **options) -> None:
    """A torch-engine model (``model.net``: a ``torch.nn.Module``) through ``torch.onnx.export``,
    then our metadata added, so the .onnx file alone predicts (without torch)."""
    import tempfile

    import torch

    onnx = _require_onnx()
    module = model.net.eval()
    S = model.input_size
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(module, torch.zeros(1, 3, S, S), str(raw), opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamo=False,
                          dynamic_axes=({INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}} if dynamic_batch else None))
        proto = onnx.load(str(raw))
    write_metadata(proto, model)
    onnx.checker.check_model(proto)
    _save_atomic(onnx, proto, out_path)



def half_weights(proto, min_size: int = 16):
    """Store each float32 initialiser of ``min_size`` or more values as float16, cast back to
    float32 by a Cast node at the head of the graph: half the file, the same graph and
    float32 arithmetic (onnxruntime folds the casts when the session loads). Weights lose
    precision (about 3 significant digits), so logits move by ~1e-3 relative."""
    import onnx
    from onnx import numpy_helper

    graph = proto.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(init)
        if w.size < min_size:
            continue
        if np.abs(w).max(initial=0) > np.finfo(np.float16).max:
            raise ExportError(f"initialiser {init.name!r} overflows float16; export without half weights")
        name = init.name
        init.CopyFrom(numpy_helper.from_array(w.astype(np.float16), f"{name}.fp16"))
        casts.append(onnx.helper.make_node("Cast", [f"{name}.fp16"], [name], to=onnx.TensorProto.FLOAT,
                                           name=f"{name}.to_float"))
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return proto


def rewrite_metadata(path, model) -> None:
    """Replace our metadata in an exported file with ``model``'s (its meta updated after export:
    Test metrics measured on the file itself, say); the graph is untouched."""
    onnx = _require_onnx()
    proto = onnx.load(str(path))
    write_metadata(proto, model)
    _save_atomic(onnx, proto, Path(path))


def export_onnx(model, out_path, opset: int = 17, dynamic_batch: bool = True, fold_bn: bool = True,
                half: bool = False) -> Path:
    """Write ``model`` to ``out_path`` as ONNX (graph + metadata); returns the path.

    ``dynamic_batch=False`` fixes the batch dimension at 1. ``fold_bn=False`` keeps each
    batch norm as its own BatchNormalization node (useful to inspect the graph). ``half``
    stores the weights as float16 (:func:`half_weights`).
    """
    onnx = _require_onnx()
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(f"opset {opset} not supported: choose {MIN_OPSET}..{newest}")
    if not model.abilities.exportable:
        raise ExportError(f"a {model.kind} model (runtime {model.runtime}) cannot be exported to ONNX")
    out_path = Path(out_path)
    model.export_onnx(out_path, opset, dynamic_batch, fold_bn=fold_bn)  # each model writes its own graph
    if half:
        proto = half_weights(onnx.load(str(out_path)))
        onnx.checker.check_model(proto)
        _save_atomic(onnx, proto, out_path)
    return out_path


def verify_export(model, path, half: bool = False, n: int = 4, seed: int = 0) -> dict:
    """Run the exported file and ``model`` on the same ``n`` random images: the largest
    logit difference, the tolerance it must stay under (float16 weights keep about 3
    significant digits) and whether it does."""
    from .models.onnx_model import OnnxModel

    om = OnnxModel(path)
    images = np.random.default_rng(seed).integers(0, 256, (n, model.input_size, model.input_size, 3), np.uint8)
    diff = float(np.abs(om.logits(images) - model.logits(images)).max())
    tolerance = 0.05 if half else 1e-4
    return {"onnx": str(path), **om.describe(), "max_abs_logit_diff": diff, "tolerance": tolerance,
            "ok": diff < tolerance}
