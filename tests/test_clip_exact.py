"""CLIP features that do not depend on the CPU.

The golden test: the encoder reproduces committed embeddings of three probe images made here
(the astronaut, a gradient, seeded noise), computed by the exact path. The saturating u8s8
kernel of CPUs without VNNI is emulated in NumPy on a tiny graph, so that the comparison can
be seen to fail for it on any machine; on a CPU without VNNI the original file fails it too,
and the start-up check must then pick the exact rewrite.

Regenerate the golden file (only when the encoder or the probes change on purpose):
``python -m tests.test_clip_exact --write``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from deepfake_detector.models.clip import encoder as enc  # noqa: E402
from deepfake_detector.models.clip.exact import (  # noqa: E402
    count_u8s8,
    exact_matmul,
    rewrite_u8u8,
    saturating_matmul,
)

GOLDEN = Path(__file__).parent / "golden" / "clip_probes.npz"
MIN_COSINE = 0.9999  # per probe; float rounding across CPUs moves the last digits only
MAX_ABS = 0.02  # on embeddings of norm about 10


def probe_images() -> dict[str, np.ndarray]:
    """uint8 (224, 224, 3) RGB probes, made the same way on every machine."""
    from skimage import data

    a = data.astronaut()  # 512 x 512, public domain, inside scikit-image
    astronaut = np.ascontiguousarray(a[32:480:2, 32:480:2])  # (224, 224, 3): every second pixel of the centre
    ramp = np.linspace(0, 255, 224)
    gradient = np.stack([ramp[None, :].repeat(224, 0), ramp[:, None].repeat(224, 1),
                         np.full((224, 224), 128.0)], -1).round().astype(np.uint8)
    noise = np.random.default_rng(7).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    return {"astronaut": astronaut, "gradient": gradient, "noise": noise}


def encode_probes(encoder) -> dict[str, np.ndarray]:
    """{"embeds": (3, 512), "cls": (3, 768), "patch_mean": (3, 768), "cls_block{k}": (3, 768)
    for each block of BLOCK_CLS}: the pooled embedding, the final hidden state's CLS token and
    its mean patch token, and the CLS token after each intermediate block, of each probe, one
    image per call."""
    from deepfake_detector.models.clip.features import normalize

    rows: dict[str, list] = {}
    names = [o.name for o in encoder.session.get_outputs()]
    for img in probe_images().values():
        out = dict(zip(names, encoder.session.run(None, {enc.INPUT_NAME: normalize(img[None])})))
        tokens = out[names[1]][0]
        rows.setdefault("embeds", []).append(out[names[0]][0])
        rows.setdefault("cls", []).append(tokens[0])
        rows.setdefault("patch_mean", []).append(tokens[1:].mean(0))
        for k in enc.BLOCK_CLS:
            rows.setdefault(f"cls_block{k}", []).append(out[f"cls_block{k}"][0])
    return {key: np.stack(v) for key, v in rows.items()}


def mismatches(got, want) -> list[str]:
    """Rows of ``got`` that do not match ``want`` (cosine and max |delta|), as messages."""
    bad = []
    for i, (g, w) in enumerate(zip(np.asarray(got, np.float64), np.asarray(want, np.float64))):
        cos = float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w) + 1e-30))
        delta = float(np.abs(g - w).max())
        if cos < MIN_COSINE or delta > MAX_ABS:
            bad.append(f"row {i}: cosine {cos:.6f}, max |delta| {delta:.4g}")
    return bad


@pytest.fixture(scope="module")
def real_encoder_path():
    path = enc.default_encoder_path()
    if not path.is_file():
        pytest.skip(f"the CLIP encoder is not at {path} (deepfake-detector fetch-encoder; CI fetches it)")
    return path


def test_the_patch_token_feature_comes_from_the_same_pass_and_is_pinned(real_encoder_path):
    pytest.importorskip("skimage")
    from deepfake_detector.models.clip.features import normalize

    golden = np.load(GOLDEN)
    e = enc.ClipEncoder(real_encoder_path, threads=1)
    assert e.feature_names == ("pooled", "patch-mean", "patch-tokens", *(f"cls-block-{k}" for k in enc.BLOCK_CLS))
    feats = [e.features(normalize(img[None])) for img in probe_images().values()]
    assert e.calls == 3  # one encoder call per image gives them all
    for key, name in (("embeds", "pooled"), ("patch_mean", "patch-mean"),
                      *((f"cls_block{k}", f"cls-block-{k}") for k in enc.BLOCK_CLS)):
        got = np.concatenate([f[name] for f in feats])
        assert not mismatches(got, golden[key]), (name, mismatches(got, golden[key]))


@pytest.mark.parametrize("kernel", ["auto", "exact"])
def test_the_encoder_reproduces_the_golden_embeddings(real_encoder_path, kernel):
    pytest.importorskip("skimage")
    golden = np.load(GOLDEN)
    e = enc.ClipEncoder(real_encoder_path, threads=1, kernel=kernel)
    got = encode_probes(e)
    assert e.kernel in ("u8u8", "u8s8-checked")
    for key in ("embeds", "cls", "patch_mean", *(f"cls_block{k}" for k in enc.BLOCK_CLS)):
        assert not mismatches(got[key], golden[key]), (key, e.kernel, mismatches(got[key], golden[key]))


def test_the_original_file_is_used_only_where_it_is_exact(real_encoder_path):
    """On a CPU with VNNI the original u8s8 file matches the golden embeddings and the
    start-up check keeps it (faster); without VNNI it does not, and the check must have
    picked the rewrite."""
    pytest.importorskip("skimage")
    golden = np.load(GOLDEN)
    original = enc.ClipEncoder(real_encoder_path, threads=1, kernel="original")
    assert original.kernel == "u8s8-unchecked" and original.identity.endswith("u8s8-unchecked")
    exact_here = not mismatches(encode_probes(original)["embeds"], golden["embeds"])
    auto = enc.ClipEncoder(real_encoder_path, threads=1)
    assert auto.kernel == ("u8s8-checked" if exact_here else "u8u8")
    assert auto.identity != original.identity  # unchecked features never share the cache


def test_the_rewrite_keeps_every_integer_and_leaves_no_u8s8_product(real_encoder_path):
    model = onnx.load(str(real_encoder_path), load_external_data=False)
    assert count_u8s8(model) == 73
    ints = {t.name: onnx.numpy_helper.to_array(t).astype(np.int32) for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.INT8}
    rewritten, n = rewrite_u8u8(model)
    assert n == 73 and count_u8s8(rewritten) == 0
    after = {t.name: onnx.numpy_helper.to_array(t) for t in rewritten.graph.initializer if t.name in ints}
    assert all(after[k].dtype == np.uint8 and np.array_equal(after[k].astype(np.int32) - 128, v)
               for k, v in ints.items())


# --- the fault, emulated: runs anywhere, no encoder needed --------------------------------
def tiny_quantized_graph(w: np.ndarray, w_zero: np.ndarray):
    """x float (M, K) -> DynamicQuantizeLinear -> MatMulInteger with int8 ``w`` (K, N) ->
    int32 (M, N): the encoder's pattern, 73 times over there."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["y"])]
    graph = helper.make_graph(nodes, "tiny-u8s8",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", w.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, ["M", w.shape[1]]),
                               helper.make_tensor_value_info("xq", TensorProto.UINT8, ["M", w.shape[0]]),
                               helper.make_tensor_value_info("xz", TensorProto.UINT8, [])],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(w_zero, "wz")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 7
    return model


def run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def test_saturation_is_caught_by_the_golden_comparison_and_the_rewrite_is_exact():
    rng = np.random.default_rng(0)
    k, n = 256, 64
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)  # large weights, as trained int8 weights have
    zero = np.zeros(n, np.int8)
    x = np.abs(rng.standard_normal((8, k))).astype(np.float32) * 3  # large activations: u8 near 255
    y, xq, xz = run(tiny_quantized_graph(w, zero), x)
    exact = exact_matmul(xq, w, xz, zero)
    saturated = saturating_matmul(xq, w, xz)
    assert (np.abs(xq[:, 0::2].astype(int) * w[0::2].max() * 2) > 32767).any()  # pairs can overflow int16
    assert mismatches(saturated.astype(np.float64), exact.astype(np.float64))  # the comparison fails for it
    assert not mismatches(exact.astype(np.float64), exact.astype(np.float64))

    rewritten, count = rewrite_u8u8(tiny_quantized_graph(w, zero))
    assert count == 1 and count_u8s8(rewritten) == 0
    y_u8u8, xq2, xz2 = run(rewritten, x)
    assert np.array_equal(xq2, xq) and np.array_equal(y_u8u8, exact)  # bit-exact on every CPU
    if cpu_has_vnni():  # with VNNI the original u8s8 graph is exact too (without it, it need not be)
        assert np.array_equal(y, exact)


def cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def test_a_weight_read_by_another_node_is_left_alone():
    from onnx import helper

    model = tiny_quantized_graph(np.ones((4, 2), np.int8), np.zeros(2, np.int8))
    model.graph.node.append(helper.make_node("Cast", ["w"], ["w32"], to=onnx.TensorProto.INT32))
    _, count = rewrite_u8u8(model)
    assert count == 0


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv:
        e = enc.ClipEncoder(threads=1, kernel="exact")
        GOLDEN.parent.mkdir(exist_ok=True)
        np.savez(GOLDEN, **encode_probes(e), names=np.array(list(probe_images())))
        print(f"wrote {GOLDEN} with the {e.kernel} kernel")
