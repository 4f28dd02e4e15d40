"""A trained head on the frozen CLIP encoder, behind the :class:`Predictor` interface.

The encoder (onnxruntime) turns each 224-px crop into a 512-d embedding, L2-normalised; the
head (a from-scratch engine network: logistic or a small MLP) turns it into two logits.
The checkpoint is a .npz of the head alone; it names the encoder by its hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ... import nn
from ...nn.backend import to_numpy
from ..predictor import CLASS_NAMES, Abilities, Predictor, Preprocess
from ..registry import register_model
from .encoder import CLIP_MEAN, CLIP_STD, ENCODER_NAME, FEATURE_SHAPES, INPUT_SIZE, ClipEncoder, check_feature


@dataclass
class ClipHeadModel(Predictor):
    head: nn.Sequential  # (N, dim) unit feature vectors (config["feature"], pooled: 512) -> (N, 2) logits
    arch: str
    config: dict
    preprocess: Preprocess = field(default_factory=lambda: Preprocess(INPUT_SIZE, CLIP_MEAN, CLIP_STD))
    class_names: tuple = CLASS_NAMES
    meta: dict = field(default_factory=dict)
    device: str = "cpu"
    kind = "clip"
    runtime = "onnx"  # the encoder; its small head runs on the from-scratch engine

    def __post_init__(self):
        self._encoder: ClipEncoder | None = None
        self.encoder_path = None  # None: the cache / $DEEPFAKE_DETECTOR_CLIP_ENCODER

    @property
    def abilities(self) -> Abilities:
        return Abilities(thread_safe=False, bundle_part=True, shared_encoder=True, threads=self.threads)

    def bundle_part(self, name: str) -> tuple[dict, bytes]:
        from ...export import head_onnx_bytes

        data = head_onnx_bytes(self.head, FEATURE_SHAPES[self.feature]) if hasattr(self.head, "layers") \
            else self.head.data
        return {"name": name, "kind": self.kind, "file": f"{name}.onnx", "arch": self.arch,
                "config": self.config, "meta": self.meta, "parameters": self.num_parameters()}, data

    @classmethod
    def from_bundle_part(cls, entry: dict, data: bytes, where: str, threads=None, device: str = "cpu",
                         encoder: ClipEncoder | None = None) -> ClipHeadModel:
        """A head from a bundle, on ``encoder`` when given (the bundle's heads share one)."""
        from ..checks import check_model_meta, check_onnx_weights
        from ..fusion import OnnxHead

        check_onnx_weights(where, data)
        check_model_meta(where, entry.get("meta", {}))
        part = cls(OnnxHead(data, threads, entry.get("parameters")), entry["arch"], entry.get("config", {}),
                   meta=entry.get("meta", {}))
        part.threads = threads
        # the encoder is opened now, so that a missing one is a clear error at load
        return part.use_encoder(encoder if encoder is not None else part.encoder)

    @property
    def encoder(self) -> ClipEncoder:
        if self._encoder is None:
            self._encoder = ClipEncoder(self.encoder_path, threads=1, workers=self.threads or 2)
            self.check_encoder(self._encoder)
        return self._encoder

    def check_encoder(self, encoder: ClipEncoder) -> None:
        """Refuse an encoder other than the one this head was fitted on, or features other
        than its (a head fitted on a saturating CPU's features is another model elsewhere)."""
        info = self.meta.get("encoder", {})
        want = info.get("sha256")
        if want and want != encoder.sha256:
            raise ValueError(f"{encoder.path} is not the encoder this head was trained on "
                             f"(SHA-256 {encoder.sha256[:16]}..., the head wants {want[:16]}...)")
        if self.feature not in encoder.feature_names:
            raise ValueError(f"this head reads the {self.feature!r} feature, which {encoder.path} does not give")
        got = encoder.describe()["features"]
        if want and info.get("features") != got:
            raise ValueError(f"this head was fitted on {info.get('features') or 'CPU-dependent (saturated int8)'} "
                             f"CLIP features, the encoder gives {got}; retrain it with train-head")

    @property
    def feature(self) -> str:
        """Which encoder output the head reads (:data:`~.encoder.FEATURE_SHAPES`): ``pooled``,
        ``patch-mean``, ``cls-block-k`` or ``patch-tokens``."""
        return check_feature(self.config.get("feature", "pooled"))

    def use_encoder(self, encoder: ClipEncoder) -> ClipHeadModel:
        self.check_encoder(encoder)
        self._encoder = encoder
        return self

    # --- the head ------------------------------------------------------------------
    def parameters(self) -> dict:
        return self.head.named_parameters()

    def grads(self) -> dict:
        return self.head.named_grads()

    def buffers(self) -> dict:
        return self.head.named_buffers()

    def num_parameters(self) -> int:
        return self.head.num_parameters()

    def load_state(self, params: dict, buffers: dict) -> None:
        self.head.load_arrays("params", params)
        self.head.load_arrays("buffers", buffers)

    def to(self, device: str):
        if device != "cpu":
            raise ValueError("a CLIP-head model runs on the CPU (onnxruntime + the NumPy engine)")
        return self

    def set_threads(self, n: int | None) -> None:
        self.threads = n
        if self._encoder is not None:  # one image per session call: n calls side by side
            self._encoder.workers = max(1, n or 2)

    def head_logits(self, embeddings, training: bool = False, chunk: int = 256):
        """(N, dim) raw feature vectors, or (N, tokens, dim) patch tokens -> (N, 2) logits;
        each vector (each token) unit-normalised first. Inference runs ``chunk`` rows at a
        time, so a split of patch tokens never becomes float32 all at once."""
        def unit(e):
            e = np.asarray(e, np.float32)
            return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)

        if training:
            return self.head.forward(unit(embeddings), True)
        with nn.no_grad():
            parts = [to_numpy(self.head.forward(unit(embeddings[i : i + chunk]), False))
                     for i in range(0, len(embeddings), chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, 2), np.float32)

    # --- pixels in, probabilities out ----------------------------------------------
    def embed(self, images) -> np.ndarray:
        """uint8 (N, 224, 224, 3) crops -> (N, dim) feature vectors, one encoder call per image."""
        x = self.normalize(images)
        return self.encoder.embed(x) if self.feature == "pooled" else self.encoder.features(x)[self.feature]

    def logits(self, images, batch_size: int = 64) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, 2), np.float32)
        return self.head_logits(self.embed(images))

    def file_logits(self, paths, framing: str = "as-is", size: int | None = None, detector=None,
                    batch_size: int = 64):
        """As :meth:`Predictor.file_logits`, through the embedding cache (the same pixels reach
        the encoder as in ``predict``, so a cached file costs no encoder call)."""
        if (size or INPUT_SIZE) != INPUT_SIZE or detector is not None:
            return super().file_logits(paths, framing, size, detector, batch_size)
        from .cache import EmbeddingCache
        from .encoder import cache_dir
        from .features import embed_files

        cache = EmbeddingCache(cache_dir() / "embeddings.sqlite")
        try:
            emb, errors = embed_files([str(p) for p in paths], self.encoder, cache, framing,
                                      workers=max(1, self.encoder.workers), feature=self.feature)
        finally:
            cache.close()
        z = np.asarray(self.head_logits(emb), np.float32)
        z[[i for i, p in enumerate(paths) if str(p) in errors]] = np.nan
        return z, errors

    def describe(self) -> dict:
        enc = self.meta.get("encoder", {})
        out = {**super().describe(), "encoder": enc.get("name", ENCODER_NAME),
               "encoder_sha256": (enc.get("sha256") or "")[:16], "features": enc.get("features")}
        if self._encoder is not None:
            out["encoder_kernel"] = self._encoder.kernel
        return out


def _build(arch: str, layers: list, config: dict) -> ClipHeadModel:
    return ClipHeadModel(nn.Sequential(*layers), arch, config)


def _config(seed: int, feature: str, **rest) -> dict:
    """The builder's keywords as saved; ``feature`` only where it is not the default (old files stay equal)."""
    return {"seed": seed, **rest, **({"feature": feature} if check_feature(feature) != "pooled" else {})}


@register_model("clip-logistic")
def clip_logistic(seed: int = 0, feature: str = "pooled") -> ClipHeadModel:
    """Logistic regression on a unit CLIP feature vector (``feature``: see FEATURE_SHAPES)."""
    rng = np.random.default_rng(seed)
    return _build("clip-logistic", [nn.Dense(_vector_dim(feature), 2, rng=rng)],
                  _config(seed, feature))


@register_model("clip-mlp")
def clip_mlp(seed: int = 0, hidden: int = 256, dropout: float = 0.2, feature: str = "pooled") -> ClipHeadModel:
    """One hidden layer of ``hidden`` ReLU units, dropout ``dropout``, on a unit CLIP feature vector."""
    rng = np.random.default_rng(seed)
    layers = [nn.Dense(_vector_dim(feature), hidden, rng=rng), nn.ReLU(),
              nn.Dropout(dropout, seed=seed), nn.Dense(hidden, 2, rng=rng)]
    return _build("clip-mlp", layers, _config(seed, feature, hidden=hidden, dropout=dropout))


@register_model("clip-attn")
def clip_attn(seed: int = 0, attn_hidden: int = 64, hidden: int = 256, dropout: float = 0.2,
              feature: str = "patch-tokens") -> ClipHeadModel:
    """Attention pooling over the 196 unit patch tokens of the encoder's last block (a score
    per token from ``attn_hidden`` tanh units, a softmax over the tokens), then the
    :func:`clip_mlp` head on the pooled vector."""
    shape = FEATURE_SHAPES[check_feature(feature)]
    if len(shape) != 2:
        raise ValueError(f"clip-attn pools tokens; {feature!r} is one vector an image (use clip-mlp)")
    rng = np.random.default_rng(seed)
    layers = [nn.AttentionPool(shape[1], attn_hidden, rng=rng), nn.Dense(shape[1], hidden, rng=rng), nn.ReLU(),
              nn.Dropout(dropout, seed=seed), nn.Dense(hidden, 2, rng=rng)]
    return _build("clip-attn", layers, {"seed": seed, "attn_hidden": attn_hidden, "hidden": hidden,
                                        "dropout": dropout, "feature": feature})


def _vector_dim(feature: str) -> int:
    shape = FEATURE_SHAPES[check_feature(feature)]
    if len(shape) != 1:
        raise ValueError(f"{feature!r} is {shape[0]} tokens an image; a head on it pools them (clip-attn)")
    return shape[0]
