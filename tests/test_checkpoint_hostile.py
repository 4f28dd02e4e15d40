"""Hostile model files: each is refused with a one-line CheckpointError naming the file and what
is wrong, before its arrays are allocated, and loading never reaches the network. Resume
leaves no orphan temporary checkpoints and its interrupted epoch's metrics are whole."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from deepfake_detector.cli import main
from deepfake_detector.models import create_model, load, load_model, save_model
from deepfake_detector.models.checks import MAX_INPUT_SIZE
from deepfake_detector.nn.io import MAX_CHECKPOINT_BYTES, CheckpointError, load_arrays, save_arrays

MiB = 1 << 20


# --- crafting files -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small real checkpoint: seed-cnn at 16 px (conv1..3, bn1..3, fc)."""
    path = tmp_path_factory.mktemp("good") / "good.npz"
    model = create_model("seed-cnn", input_size=16, seed=3)
    save_model(model, path, extra_meta={"threshold": 0.4, "temperature": 1.5})
    return path


def tampered(src, dst, meta=None, arrays=None, drop=(), edit=None):
    """``src`` rewritten to ``dst``: ``meta`` keys replaced, ``arrays`` ({"group/name": a})
    set, ``drop`` keys removed, ``edit(meta)`` applied in place."""
    groups, m = load_arrays(src)
    m.update(meta or {})
    if edit:
        edit(m)
    for key, a in (arrays or {}).items():
        g, n = key.split("/", 1)
        groups.setdefault(g, {})[n] = a
    for key in drop:
        g, n = key.split("/", 1)
        del groups[g][n]
    save_arrays(dst, groups, {k: v for k, v in m.items() if k not in ("format", "format_version")})
    return dst


def npy_header(shape, descr="<f4") -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return b.getvalue()


def raw_deflate(data: bytes) -> bytes:
    """A raw deflate block of ``data`` ending in a full flush: copies of it can be concatenated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)


def write_zip(path, members):
    """A zip of ``members`` [(name, stored_bytes, crc, size, method)], written by hand so that a
    member can be a pre-made deflate stream (method 8)."""
    out, central = bytearray(), bytearray()
    for name, data, crc, size, method in members:
        n = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size, len(n), 0)
        out += n + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(data), size,
                               len(n), 0, 0, 0, 0, 0, offset) + n
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + eocd))
    return path


def with_member(src, dst, name, data=None, crc=None, size=None, method=0):
    """``src`` with member ``name`` replaced (or added): stored ``data``, or a deflate stream."""
    members = []
    with zipfile.ZipFile(src) as z:
        for info in z.infolist():
            if info.filename != name:
                raw = z.read(info)
                members.append((info.filename, raw, zlib.crc32(raw), len(raw), 0))
    members.append((name, data, zlib.crc32(data) if crc is None else crc, len(data) if size is None else size,
                    method))
    return write_zip(dst, members)


def bomb(src, dst, name, nbytes):
    """``src`` with ``name`` a deflated float32 array of ``nbytes`` zero bytes (about 1 KB a MiB)."""
    k = nbytes // MiB
    header = npy_header((k * MiB // 4,))
    stream = raw_deflate(header) + raw_deflate(bytes(MiB)) * k + b"\x03\x00"  # ends with an empty final block
    crc, zeros = zlib.crc32(header), bytes(MiB)
    for _ in range(k):
        crc = zlib.crc32(zeros, crc)
    return with_member(src, dst, name, stream, crc, len(header) + k * MiB, method=8)


def refused(path, match, loader=load_model):
    with pytest.raises(CheckpointError) as e:
        loader(path)
    msg = str(e.value)
    assert match in msg, msg
    assert "\n" not in msg and str(path) in msg  # one line, naming the file
    return msg


# --- the header: temperature, threshold, input size... ---------------------------------------
BAD_META = [
    ("temperature-0", {"temperature": 0.0}, None, "temperature 0.0 is not a finite number > 0"),
    ("temperature-nan", {"temperature": float("nan")}, None, "temperature nan is not a finite number > 0"),
    ("temperature-negative", {"temperature": -1.0}, None, "temperature -1.0 is not a finite number > 0"),
    ("threshold-nan", {"threshold": float("nan")}, None, "threshold nan is not a finite number in [0, 1]"),
    ("threshold-2", {"threshold": 2.0}, None, "threshold 2.0 is not a finite number in [0, 1]"),
    ("threshold-string", {"threshold": "0.5"}, None, "threshold '0.5' is not a finite number"),
    ("input-size-huge", None, lambda m: (m["preprocess"].update(input_size=100000),
                                         m["config"].update(input_size=100000)),
     f"input size 100000 is not an integer in 16..{MAX_INPUT_SIZE}"),
    ("input-size-0", None, lambda m: m["preprocess"].update(input_size=0), "input size 0 is not an integer in 16.."),
    ("input-size-config", None, lambda m: m["config"].update(input_size=100000), "input size 100000 is not"),
    ("input-size-differs", None, lambda m: m["config"].update(input_size=32),
     "config input_size 32 differs from preprocess input_size 16"),
    ("std-0", None, lambda m: m["preprocess"].update(std=[1.0, 0.0, 1.0]), "preprocess std must be > 0"),
    ("mean-nan", None, lambda m: m["preprocess"].update(mean=[0.0, float("nan"), 0.0]),
     "preprocess mean must be 3 finite numbers"),
    ("no-preprocess", None, lambda m: m.pop("preprocess"), "preprocess must give input_size, mean and std"),
    ("class-names", {"class_names": ["Real", "Fake", "Other"]}, None, "class_names must be two strings"),
    ("tta", {"tta": "rotate"}, None, "unknown test-time augmentation 'rotate'"),
    ("face-margin", {"face_margin": float("inf")}, None, "face_margin inf is not a finite number"),
    ("unknown-arch", {"arch": "no-such-net"}, None, "unknown architecture 'no-such-net'"),
    ("unknown-config-key", None, lambda m: m["config"].update(evil=1),
     "config names arguments ['evil'] that architecture 'seed-cnn' does not take"),
    ("config-not-finite", {"arch": "df-cnn", "config": {"dropout": float("nan")}}, None, "config dropout=nan"),
    ("config-huge-int", {"arch": "df-cnn", "config": {"widths": [8, 1 << 40]}}, None, "out of range"),
    ("config-type", {"arch": "df-cnn", "config": {"widths": {"a": 1}}}, None, "is not a number, string, or list"),
]


@pytest.mark.parametrize("case,meta,edit,match", BAD_META, ids=[c[0] for c in BAD_META])
def test_a_bad_header_is_refused(good, tmp_path, case, meta, edit, match):
    refused(tampered(good, tmp_path / f"{case}.npz", meta=meta, edit=edit), match)


def test_the_good_checkpoint_loads_and_none_means_unset(good, tmp_path):
    m = load_model(good)
    assert (m.threshold, m.temperature, m.input_size) == (0.4, 1.5, 16)
    m = load_model(tampered(good, tmp_path / "unset.npz", meta={"threshold": None, "temperature": None}))
    assert m.meta["threshold"] is None


# --- the arrays: finite, and exactly the architecture's ---------------------------------------
def _weights(good):
    groups, _ = load_arrays(good)
    return groups


def test_nan_or_infinite_weights_and_buffers_are_refused(good, tmp_path):
    groups = _weights(good)
    w = groups["param"]["conv1.weight"].copy()
    w[0, 0, 0, 0] = np.nan
    refused(tampered(good, tmp_path / "nan.npz", arrays={"param/conv1.weight": w}),
            "param/conv1.weight holds NaN or infinite values")
    v = groups["buffer"]["bn2.running_var"].copy()
    v[-1] = np.inf
    refused(tampered(good, tmp_path / "inf.npz", arrays={"buffer/bn2.running_var": v}),
            "buffer/bn2.running_var holds NaN or infinite values")
    m = np.full_like(w, np.nan)  # optimiser state too (a resume would train on it)
    refused(tampered(good, tmp_path / "optim.npz", arrays={"optim/conv1.weight/m": m}),
            "optim/conv1.weight/m holds NaN")


def test_arrays_that_do_not_match_the_architecture_are_refused(good, tmp_path):
    groups = _weights(good)
    fc = groups["param"]["fc.weight"]
    cases = [
        ("extra", {"arrays": {"param/extra.weight": np.zeros(3, np.float32)}}, "unexpected ['extra.weight']"),
        ("missing", {"drop": ["param/fc.bias"]}, "missing ['fc.bias']"),
        ("shape", {"arrays": {"param/fc.weight": np.zeros((2, 10), np.float32)}},
         f"param/fc.weight is (2, 10) float32, the seed-cnn architecture has {fc.shape} float32"),
        ("dtype", {"arrays": {"param/fc.weight": fc.astype(np.int32)}}, "param/fc.weight is (2, 256) int32"),
        ("group", {"arrays": {"evil/x": np.zeros(1, np.float32)}}, "unexpected array groups ['evil']"),
        ("optim-slot", {"arrays": {"optim/fc.weight/evil": fc}}, "unexpected ['fc.weight/evil']"),
        ("optim-shape", {"arrays": {"optim/fc.weight/m": fc[:1]}}, "optim/fc.weight/m is (1, 256)"),
    ]
    for name, kw, match in cases:
        refused(tampered(good, tmp_path / f"{name}.npz", **kw), match)
    with zipfile.ZipFile(good) as z:  # a member that is no .npy array at all
        z2 = zipfile.ZipFile(tmp_path / "odd.npz", "w")
        for info in z.infolist():
            z2.writestr(info, z.read(info))
        z2.writestr("notes.txt", b"hello")
        z2.close()
    refused(tmp_path / "odd.npz", "unexpected member 'notes.txt'")


def test_a_header_claiming_a_2_to_the_40_shape_is_refused_unread(good, tmp_path):
    data = npy_header((1 << 40,)) + bytes(64)
    bad = with_member(good, tmp_path / "huge.npz", "param/fc.weight.npy", data)
    refused(bad, "param/fc.weight.npy: its header says (1099511627776,) float32 (4398046511104 bytes) "
                 "but the member holds 64 bytes")
    refused(bad, "but the member holds 64 bytes", loader=load_arrays)  # the generic reader too


def test_a_compression_bomb_is_refused_by_the_size_cap_and_by_the_architecture(good, tmp_path):
    big = bomb(good, tmp_path / "bomb.npz", "param/fc.weight.npy", MAX_CHECKPOINT_BYTES + 64 * MiB)
    assert big.stat().st_size < 5 * MiB
    msg = refused(big, f"over the {MAX_CHECKPOINT_BYTES}-byte limit", loader=load_arrays)
    assert "decompressed" in msg
    refused(big, f"over the {MAX_CHECKPOINT_BYTES}-byte limit")
    small = bomb(good, tmp_path / "bomb-512.npz", "param/fc.weight.npy", 512 * MiB)  # under the cap
    refused(small, "param/fc.weight is (134217728,) float32, the seed-cnn architecture has (2, 256) float32")


def test_hostile_sizes_allocate_nothing(good, tmp_path):
    """In a fresh process (its peak RSS is its own): the 2^40 header, both bombs and a config
    that would build a 2-GB network are refused with the process's peak memory under 300 MB more."""
    files = {
        "huge": with_member(good, tmp_path / "huge.npz", "param/fc.weight.npy", npy_header((1 << 40,)) + bytes(64)),
        "bomb": bomb(good, tmp_path / "bomb.npz", "param/fc.weight.npy", MAX_CHECKPOINT_BYTES + 64 * MiB),
        "bomb-512": bomb(good, tmp_path / "bomb-512.npz", "param/fc.weight.npy", 512 * MiB),
        "wide": tampered(create_model_file(tmp_path / "df.npz"), tmp_path / "wide.npz",
                         edit=lambda m: m["config"].update(widths=[4096] * 5)),
    }
    script = textwrap.dedent("""
        import json, resource, sys
        from deepfake_detector.models import load_model
        from deepfake_detector.nn.io import CheckpointError
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = {}
        for name, path in json.loads(sys.argv[1]).items():
            try:
                load_model(path)
                out[name] = "loaded"
            except CheckpointError as e:
                out[name] = str(e)
        out["grew_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", script, json.dumps({k: str(v) for k, v in files.items()})],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "but the member holds 64 bytes" in out["huge"]
    assert "byte limit" in out["bomb"]
    assert "the seed-cnn architecture has (2, 256)" in out["bomb-512"]
    assert "its config does not build a df-cnn: the architecture needs more than" in out["wide"]
    assert out["grew_kb"] < 300 * 1024, out


def create_model_file(path):
    save_model(create_model("df-cnn", input_size=16, widths=[4, 4, 8, 8, 8], depths=[1, 1, 1, 1, 1]), path)
    return path


# --- no network, nor any other file, at load time ----------------------------------------------
def test_pretrained_and_weights_in_a_checkpoint_s_config_are_not_followed(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import socket

    src = create_model("mobilenet-v2", input_size=32, pretrained=False, dropout=0.0, seed=4)
    save_model(src, tmp_path / "m.npz")
    bad = tampered(tmp_path / "m.npz", tmp_path / "hub.npz",
                   edit=lambda m: m["config"].update(pretrained="torchvision:mobilenet_v2",
                                                     weights=str(tmp_path / "no-such-weights.pt")))

    def no_network(*a, **k):
        raise AssertionError("loading a checkpoint reached for the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    model = load(bad)
    assert model.kind == "torch" and model.config["pretrained"] is False and model.config["weights"] is None
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(model.predict_proba(images), src.predict_proba(images))  # the file's weights
    wide = tampered(tmp_path / "m.npz", tmp_path / "wide.npz", edit=lambda m: m["config"].update(input_size=4096))
    refused(wide, "input size 4096 is not an integer")


def test_a_torch_architecture_bigger_than_its_file_is_refused_before_it_is_built(tmp_path):
    pytest.importorskip("torch")
    save_model(create_model("vit-tiny", input_size=32, patch_size=8, depth=1, seed=1), tmp_path / "v.npz")
    bad = tampered(tmp_path / "v.npz", tmp_path / "deep.npz", edit=lambda m: m["config"].update(depth=400))
    refused(bad, "its config does not build a vit-tiny: the architecture needs more than")


# --- every other kind: ONNX export, CLIP head, bundle -------------------------------------------
@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    pytest.importorskip("onnx")
    from deepfake_detector.export import export_onnx

    return export_onnx(create_model("seed-cnn", input_size=16, seed=3), tmp_path_factory.mktemp("onnx") / "m.onnx")


def onnx_with(src, dst, edit):
    """``src`` with its deepfake_detector metadata edited: ``edit(props)`` on {key: JSON value}."""
    import onnx

    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    parsed = {k: json.loads(props[k]) for k in ("meta", "preprocess")}
    edit(parsed)
    for p in proto.metadata_props:
        if p.key in parsed:
            p.value = json.dumps(parsed[p.key])
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize("case,edit,match", [
    ("temperature", lambda p: p["meta"].update(temperature=0.0), "temperature 0.0 is not a finite number > 0"),
    ("threshold", lambda p: p["meta"].update(threshold=float("nan")), "threshold nan is not a finite number in"),
    ("input-size", lambda p: p["preprocess"].update(input_size=100000), "input size 100000 is not an integer"),
    ("graph", lambda p: p["preprocess"].update(input_size=32), "its metadata says input size 32"),
])
def test_an_onnx_file_is_checked_alike(onnx_file, tmp_path, case, edit, match):
    refused(onnx_with(onnx_file, tmp_path / f"{case}.onnx", edit), match, loader=load)


def onnx_weights_with(src, dst, edit):
    """``src`` with ``edit(name, array) -> array or None`` applied to every initializer."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    for t in proto.graph.initializer:
        new = edit(t.name, numpy_helper.to_array(t).copy())
        if new is not None:
            t.CopyFrom(numpy_helper.from_array(new, t.name))
    onnx.save(proto, str(dst))
    return dst


def _first_weight(value):
    done = []

    def edit(name, a):
        if a.dtype.kind == "f" and a.ndim >= 2 and not done:
            done.append(name)
            a.flat[0] = value
            return a
        return None
    return edit


def _zero_all_weights(name, a):
    return np.zeros_like(a) if a.dtype.kind == "f" else None


@pytest.mark.parametrize("case,edit,match", [
    ("nan-weight", _first_weight(np.nan), "holds NaN or infinite values"),
    ("inf-weight", _first_weight(np.inf), "holds NaN or infinite values"),
    ("blind", _zero_all_weights, "the same for a black image and a noise image"),
])
def test_an_onnx_graph_is_checked_to_its_weights(onnx_file, tmp_path, case, edit, match):
    refused(onnx_weights_with(onnx_file, tmp_path / f"{case}.onnx", edit), match, loader=load)


def test_deeply_nested_metadata_json_is_one_line_not_a_recursion_error(onnx_file, tmp_path):
    deep = onnx_with(onnx_file, tmp_path / "deep.onnx", lambda p: p["meta"].update(x="PLACEHOLDER"))
    import onnx

    proto = onnx.load(str(deep))
    for prop in proto.metadata_props:
        if prop.key == "meta":
            prop.value = prop.value.replace('"PLACEHOLDER"', "[" * 100000 + "]" * 100000)
    onnx.save(proto, str(deep))
    refused(deep, "nests deeper than", loader=load)


def test_a_clip_head_checkpoint_is_checked_alike(tmp_path):
    save_model(create_model("clip-logistic"), tmp_path / "head.npz", extra_meta={"temperature": 0.0})
    refused(tmp_path / "head.npz", "temperature 0.0 is not a finite number > 0", loader=load)


def _bundle(onnx_file, tmp_path):
    from deepfake_detector.models.fusion import FusedModel, save_bundle
    from deepfake_detector.models.onnx_model import OnnxModel

    fused = FusedModel({"cnn": OnnxModel(onnx_file)}, [1.0], 0.0, meta={"threshold": 0.5, "temperature": 1.0})
    return save_bundle(fused, tmp_path / "b.zip")


def bundle_with(src, dst, edit):
    with zipfile.ZipFile(src) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    manifest = json.loads(members["bundle.json"])
    edit(manifest, members)
    members["bundle.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return dst


def _clip_part(manifest, members):
    members["clip.onnx"] = members["cnn.onnx"]
    manifest["parts"].append({"name": "clip", "kind": "clip-head", "file": "clip.onnx", "arch": "clip-logistic",
                              "config": {}, "meta": {"threshold": 7.0}})


@pytest.mark.parametrize("case,edit,match", [
    ("temperature", lambda m, _: m["meta"].update(temperature=0), "temperature 0 is not a finite number > 0"),
    ("threshold", lambda m, _: m["meta"].update(threshold=2.0), "threshold 2.0 is not a finite number in [0, 1]"),
    ("weights", lambda m, _: m.update(weights=[float("nan")]), "the stack's weights must be finite numbers"),
    ("bias", lambda m, _: m.update(bias=float("inf")), "the stack's bias must be finite numbers"),
    ("clip-part", _clip_part, "b2.zip:clip.onnx: threshold 7.0 is not a finite number in [0, 1]"),
    ("onnx-part", None, "b2.zip:cnn.onnx: threshold 2.0"),
])
def test_a_bundle_and_its_parts_are_checked_alike(onnx_file, tmp_path, case, edit, match):
    good_bundle = _bundle(onnx_file, tmp_path)
    assert load(good_bundle).threshold == 0.5
    if case == "onnx-part":
        part = onnx_with(onnx_file, tmp_path / "p.onnx", lambda p: p["meta"].update(threshold=2.0))
        edit = lambda m, members: members.update({"cnn.onnx": part.read_bytes()})  # noqa: E731
    with pytest.raises(CheckpointError, match=None) as e:
        load(bundle_with(good_bundle, tmp_path / "b2.zip", edit))
    assert match in str(e.value) and "\n" not in str(e.value)


def test_the_shipped_default_model_still_loads():
    from deepfake_detector.models import default_model_path

    if not default_model_path().exists():
        pytest.skip("the package ships without its default model here")
    fast = load(fast=True)
    assert 0 < fast.threshold < 1 and fast.temperature > 0


# --- through the command line: one line, exit 2, no traceback -----------------------------------
@pytest.mark.parametrize("case,meta,edit,match", [
    ("temperature", {"temperature": 0.0}, None, "temperature 0.0 is not a finite number > 0"),
    ("threshold", {"threshold": float("nan")}, None, "threshold nan"),
    ("input-size", None, lambda m: m["preprocess"].update(input_size=100000), "input size 100000"),
])
def test_the_cli_prints_one_error_line_and_exits_2(good, tmp_path, capsys, case, meta, edit, match):
    bad = tampered(good, tmp_path / f"{case}.npz", meta=meta, edit=edit)
    Image.fromarray(np.full((20, 20, 3), 120, np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", "--model", str(bad), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0] and str(bad) in err[0], err


def test_the_cli_refuses_nan_weights_too(good, tmp_path, capsys):
    w = _weights(good)["param"]["fc.weight"].copy()
    w[:] = np.nan
    bad = tampered(good, tmp_path / "nan.npz", arrays={"param/fc.weight": w})
    Image.fromarray(np.full((20, 20, 3), 120, np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", "--model", str(bad), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1 and "holds NaN or infinite values" in err


# --- resume: no orphan temporary files, whole-epoch metrics -----------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from deepfake_detector.train import TrainConfig, train

    from .synthetic import make_dataset

    root = tmp_path_factory.mktemp("resume")
    data = make_dataset(root / "data", n_per_class=(24, 8, 8), size=16)

    def cfg(out):
        return TrainConfig(data=str(data), out=str(out), arch="df-cnn", epochs=2, batch_size=8, lr=3e-3,
                           model_config={"input_size": 16, "widths": [4, 4, 8, 8, 8], "depths": [1] * 5,
                                         "dropout": 0.2},
                           augment={"jpeg_p": 0.0}, workers=1, checkpoint_every=2, early_stopping=None)

    train(cfg(root / "full"), progress=False)
    part = cfg(root / "part")
    assert train(part, progress=False, stop_after_steps=8)["stopped"] == "stop_after_steps"  # 6 batches an epoch
    (root / "part" / ".tmp-x.npz").write_bytes(b"half a checkpoint")  # a write killed by kill -9
    (root / "part" / ".tmp-abc123.npz").write_bytes(b"")
    orphans_before = sorted(p.name for p in (root / "part").glob(".tmp-*.npz"))
    train(part, resume=True, progress=False)
    return root, orphans_before


def test_resume_removes_orphan_temporary_checkpoints(runs):
    root, before = runs
    assert before == [".tmp-abc123.npz", ".tmp-x.npz"]
    assert not list((root / "part").glob(".tmp-*"))
    load_model(root / "part" / "last.npz")  # and the run's own checkpoints are whole


def test_the_interrupted_epoch_s_metrics_cover_the_whole_epoch(runs):
    root, _ = runs
    rows = {name: [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("full", "part")}
    assert [r["epoch"] for r in rows["part"]] == [0, 1]
    timing = ("seconds", "images_per_s")
    for full, part in zip(rows["full"], rows["part"]):
        assert {k: v for k, v in full.items() if k not in timing} == {k: v for k, v in part.items() if k not in timing}
    a, _ = load_arrays(root / "full" / "last.npz")
    b, _ = load_arrays(root / "part" / "last.npz")
    for g in ("param", "buffer", "optim"):
        for k in a[g]:
            np.testing.assert_array_equal(a[g][k], b[g][k], err_msg=f"{g}/{k}")
