"""Integer matrix products that give the same numbers on every CPU.

The int8 encoder's ``MatMulInteger`` nodes are *u8s8*: uint8 activations (from
``DynamicQuantizeLinear``) times int8 weights. onnxruntime computes u8s8 exactly only on CPUs
with VNNI; elsewhere its AVX2/AVX-512 kernel (``vpmaddubsw``) adds each pair of u8 x s8
products into a *saturating* int16, and the embeddings come out different (cosine 0.35-0.44
with the exact ones on face crops). Storing every int8 weight as uint8 with its zero point
moved by 128 keeps the same integers (``(b + 128) - (zp + 128) = b - zp``) and sends
onnxruntime to its u8u8 kernels, which never saturate. :func:`rewrite_u8u8` does that;
:func:`saturating_matmul` is the faulty kernel in NumPy, so that the fault can be shown on
any machine.
"""

from __future__ import annotations

import numpy as np

REWRITE_ID = "u8u8-v1"  # names the rewrite below; part of the exact file's name


def rewrite_u8u8(model):
    """An ``onnx.ModelProto`` -> (the same model with every int8 ``MatMulInteger`` weight and
    weight zero point stored as uint8 + 128, the number of nodes rewritten). The model is
    changed in place. A weight that is not an initializer, or that another kind of node also
    reads, is left alone (and counted as not rewritten)."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, set] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    done, n = set(), 0
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or len(node.input) < 2:
            continue
        names = [node.input[1]] + ([node.input[3]] if len(node.input) > 3 and node.input[3] else [])
        tensors = [inits.get(name) for name in names]
        if any(t is None or t.data_type != TensorProto.INT8 or readers[t.name] != {"MatMulInteger"}
               for t in tensors):
            continue
        if len(names) == 1:  # no zero point given means 0: give the uint8 one explicitly (128)
            zp = f"{names[0]}_u8_zero_point"
            b = numpy_helper.to_array(tensors[0])
            model.graph.initializer.append(numpy_helper.from_array(np.full(b.shape[-1:], 128, np.uint8), zp))
            while len(node.input) < 4:
                node.input.append("")
            node.input[3] = zp
        for t in tensors:
            if t.name not in done:
                moved = (numpy_helper.to_array(t).astype(np.int16) + 128).astype(np.uint8)
                t.CopyFrom(numpy_helper.from_array(moved, t.name))
                done.add(t.name)
        n += 1
    return model, n


def count_u8s8(model) -> int:
    """How many ``MatMulInteger`` nodes of ``model`` take an int8 weight initializer."""
    from onnx import TensorProto

    inits = {t.name: t for t in model.graph.initializer}
    return sum(1 for node in model.graph.node if node.op_type == "MatMulInteger" and len(node.input) > 1
               and node.input[1] in inits and inits[node.input[1]].data_type == TensorProto.INT8)


def exact_matmul(a, b, a_zero=0, b_zero=0) -> np.ndarray:
    """``MatMulInteger`` as its specification says: (a - a_zero) @ (b - b_zero) in int32."""
    return (np.asarray(a, np.int32) - np.int32(a_zero)) @ (np.asarray(b, np.int32) - np.asarray(b_zero, np.int32))


def saturating_matmul(a, b, a_zero=0) -> np.ndarray:
    """u8 (M, K) x s8 (K, N) -> int32 (M, N) as the non-VNNI kernel computes it: products of
    neighbouring k in pairs, each pair summed into an int16 with saturation, then added up in
    int32. (The weight zero point is 0 here, as in a symmetric int8 weight.)"""
    a = np.asarray(a, np.int32)
    b = np.asarray(b, np.int32)
    k = a.shape[1]
    if k % 2:
        a, b = np.pad(a, ((0, 0), (0, 1))), np.pad(b, ((0, 1), (0, 0)))
    pairs = a[:, 0::2, None] * b[None, 0::2] + a[:, 1::2, None] * b[None, 1::2]  # (M, K/2, N)
    out = np.clip(pairs, -32768, 32767).sum(1, dtype=np.int64)
    # the zero-point correction is applied exactly, after the saturated sums
    return (out - np.int64(a_zero) * b.sum(0)).astype(np.int32)


def saturating_u8s8(model):
    """An ``onnx.ModelProto`` -> the same model with every u8s8 ``MatMulInteger`` computed as
    :func:`saturating_matmul` does, in plain onnxruntime ops (a ``(..., K/2, N)`` tensor of
    pair sums per product: slow and memory-hungry, for showing the fault, never for use).
    Weight zero points must be 0, as in the shipped encoder. Changed in place; returns it."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes, extra = [], []
    for node in model.graph.node:
        b = inits.get(node.input[1]) if node.op_type == "MatMulInteger" else None
        if b is None or b.data_type != TensorProto.INT8:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(b).astype(np.int32)
        if len(node.input) > 3 and node.input[3] and numpy_helper.to_array(inits[node.input[3]]).any():
            raise ValueError(f"{node.name}: a non-zero weight zero point is not emulated")
        if w.shape[0] % 2:
            raise ValueError(f"{node.name}: an odd inner dimension is not emulated")
        p = f"{node.output[0]}__sat"
        k = w.shape[0]
        extra += [numpy_helper.from_array(w[0::2], f"{p}_be"), numpy_helper.from_array(w[1::2], f"{p}_bo"),
                  numpy_helper.from_array(w.sum(0).astype(np.int32), f"{p}_colsum"),
                  numpy_helper.from_array(np.array([0], np.int64), f"{p}_0"),
                  numpy_helper.from_array(np.array([1], np.int64), f"{p}_1"),
                  numpy_helper.from_array(np.array([k], np.int64), f"{p}_k"),
                  numpy_helper.from_array(np.array([-1], np.int64), f"{p}_last"),
                  numpy_helper.from_array(np.array([-2], np.int64), f"{p}_pairs"),
                  numpy_helper.from_array(np.array([2], np.int64), f"{p}_2"),
                  numpy_helper.from_array(np.array(-32768, np.int32), f"{p}_lo"),
                  numpy_helper.from_array(np.array(32767, np.int32), f"{p}_hi")]
        a, a_zero = node.input[0], node.input[2] if len(node.input) > 2 and node.input[2] else None
        nodes += [helper.make_node("Cast", [a], [f"{p}_a"], to=TensorProto.INT32)]
        nodes += [
            helper.make_node("Slice", [f"{p}_a", f"{p}_0", f"{p}_k", f"{p}_last", f"{p}_2"], [f"{p}_ae"]),
            helper.make_node("Slice", [f"{p}_a", f"{p}_1", f"{p}_k", f"{p}_last", f"{p}_2"], [f"{p}_ao"]),
            helper.make_node("Unsqueeze", [f"{p}_ae", f"{p}_last"], [f"{p}_ae1"]),  # (..., K/2, 1)
            helper.make_node("Unsqueeze", [f"{p}_ao", f"{p}_last"], [f"{p}_ao1"]),
            helper.make_node("Mul", [f"{p}_ae1", f"{p}_be"], [f"{p}_me"]),  # (..., K/2, N)
            helper.make_node("Mul", [f"{p}_ao1", f"{p}_bo"], [f"{p}_mo"]),
            helper.make_node("Add", [f"{p}_me", f"{p}_mo"], [f"{p}_pair"]),
            helper.make_node("Clip", [f"{p}_pair", f"{p}_lo", f"{p}_hi"], [f"{p}_sat"]),  # int16 saturation
            helper.make_node("ReduceSum", [f"{p}_sat", f"{p}_pairs"], [f"{p}_sum"], keepdims=0),  # (..., N)
        ]
        if a_zero:
            nodes += [helper.make_node("Cast", [a_zero], [f"{p}_az"], to=TensorProto.INT32),
                      helper.make_node("Mul", [f"{p}_az", f"{p}_colsum"], [f"{p}_corr"]),
                      helper.make_node("Sub", [f"{p}_sum", f"{p}_corr"], [node.output[0]])]
        else:
            nodes += [helper.make_node("Identity", [f"{p}_sum"], [node.output[0]])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(extra)
    return model
