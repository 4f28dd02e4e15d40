"""A model: a network plus everything needed to use it from its file alone.

``Model`` wraps a from-scratch :class:`~deepfake_detector.nn.Sequential` with its
architecture name and config, input size, normalisation and class names. A checkpoint
written by :func:`save_model` rebuilds it through the registry (:func:`load_model`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import nn
from ..nn.backend import to_numpy, xp_for
from ..nn.io import CheckpointError, load_arrays, save_arrays
from .registry import create_model

CLASS_NAMES = ("Real", "Fake")  # label 0 = Real, 1 = Fake, as the original
TTA_KINDS = ("flip",)  # test-time augmentations a model's meta["tta"] may name
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_tta(kind: str | None) -> str | None:
    """``kind`` if it is None or one of :data:`TTA_KINDS`; otherwise a ValueError."""
    if kind not in (None, *TTA_KINDS):
        raise ValueError(f"unknown test-time augmentation {kind!r}; known: {', '.join(TTA_KINDS)}")
    return kind


@dataclass
class Preprocess:
    """How pixels become network input: resize to input_size, /255, (x - mean) / std."""

    input_size: int = 128
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)


class Predictor:
    """What every model offers, whatever engine runs it: its preprocessing and a calibrated
    P(fake). Subclasses set ``arch``, ``preprocess``, ``class_names``, ``meta`` and ``engine``
    and implement ``logits(images)`` and ``num_parameters()``."""

    @property
    def input_size(self) -> int:
        return self.preprocess.input_size

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.5))

    @property
    def face_margin(self) -> float:
        """Margin per side of the face crops the model was trained on (0: tight, as dfdc-faces)."""
        return float(self.meta.get("face_margin", 0.0))

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature", 1.0))

    @property
    def tta(self) -> str | None:
        """Test-time augmentation: None, or "flip" (the image and its mirror image, averaged)."""
        return self.meta.get("tta")

    def normalize(self, images, dtype=np.float32, xp=np):
        """uint8 (N, S, S, 3) RGB at the model's size -> normalised (N, 3, S, S)."""
        x = xp.asarray(images).astype(dtype)
        x = x.transpose(0, 3, 1, 2)  # (N, 3, S, S)
        mean = xp.asarray(self.preprocess.mean, dtype=dtype).reshape(1, 3, 1, 1) * 255
        inv = 1 / (xp.asarray(self.preprocess.std, dtype=dtype).reshape(1, 3, 1, 1) * 255)
        return xp.ascontiguousarray((x - mean) * inv)

    def decision_logits(self, images, batch_size: int = 64) -> np.ndarray:
        """The logits a verdict is made from: ``logits``, or with ``tta == "flip"`` their mean
        over each image and its mirror image (a face is as real mirrored), in one pass."""
        if check_tta(self.tta) is None:
            return self.logits(images, batch_size)
        images = np.asarray(images)
        z = self.logits(np.concatenate([images, images[:, :, ::-1]]), batch_size)
        return (z[: len(images)] + z[len(images):]) / 2

    def predict_proba(self, images, batch_size: int = 64) -> np.ndarray:
        """uint8 (N, S, S, 3) -> P(fake) (N,), calibrated by the stored temperature."""
        z = self.decision_logits(images, batch_size).astype(np.float64) / self.temperature
        return 1.0 / (1.0 + np.exp(z[:, 0] - z[:, 1]))  # softmax over two classes

    def describe(self) -> dict:
        d = {"arch": self.arch, "parameters": self.num_parameters(), "input_size": self.input_size,
             "engine": self.engine, "version": self.meta.get("version", "untrained")}
        return {**d, "tta": self.tta} if self.tta else d


@dataclass
class Model(Predictor):
    net: nn.Sequential
    arch: str
    config: dict
    preprocess: Preprocess
    class_names: tuple = CLASS_NAMES
    meta: dict = field(default_factory=dict)  # training metadata, threshold, temperature...
    device: str = "cpu"
    engine: str = "numpy"

    # --- the network ---------------------------------------------------------------
    def forward(self, x, training=False):
        """(N, 3, S, S) normalised float input -> (N, 2) logits."""
        return self.net.forward(x, training)

    def backward(self, grad, need_input_grad=False):
        return self.net.backward(grad, need_input_grad)

    def zero_grad(self):
        self.net.zero_grad()

    def parameters(self) -> dict:
        return self.net.named_parameters()

    def grads(self) -> dict:
        return self.net.named_grads()

    def buffers(self) -> dict:
        return self.net.named_buffers()

    def num_parameters(self) -> int:
        return self.net.num_parameters()

    def load_state(self, params: dict, buffers: dict) -> None:
        """Copy named arrays (as saved by :func:`save_model`) into the network."""
        self.net.load_arrays("params", params)
        self.net.load_arrays("buffers", buffers)

    def to(self, device: str):
        xp_for(device)  # a clear error where the device is missing
        self.net.to(device)
        self.device = device
        return self

    # --- pixels in, probabilities out ----------------------------------------------
    def normalize(self, images, dtype=np.float32):
        """uint8 (N, S, S, 3) RGB at the model's size -> normalised (N, 3, S, S) on the device."""
        return super().normalize(images, dtype, xp_for(self.device))

    def logits(self, images, batch_size: int = 64) -> np.ndarray:
        """uint8 (N, S, S, 3) -> logits (N, 2) as NumPy, in evaluation mode."""
        out = []
        with nn.no_grad():
            for i in range(0, len(images), batch_size):
                out.append(to_numpy(self.forward(self.normalize(images[i : i + batch_size]))))
        return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def save_model(model: Model, path, extra_meta: dict | None = None, optimizer=None) -> None:
    """Write ``model`` (and optionally an optimiser's state) to a safe .npz checkpoint."""
    meta = dict(model.meta)
    meta.update(extra_meta or {})
    meta.update(arch=model.arch, config=model.config, engine=model.engine,
                class_names=list(model.class_names),
                preprocess={"input_size": model.preprocess.input_size,
                            "mean": list(model.preprocess.mean), "std": list(model.preprocess.std)})
    groups = {"param": model.parameters(), "buffer": model.buffers()}
    if optimizer is not None:
        groups["optim"] = optimizer.state_arrays()
        meta["optim_t"] = optimizer.t
    save_arrays(path, groups, meta)


def model_from_arrays(groups: dict, meta: dict, device: str = "cpu") -> Model:
    try:
        model = create_model(meta["arch"], **meta.get("config", {}))
    except KeyError as e:
        raise CheckpointError(f"checkpoint names an unknown architecture: {e}") from e
    pp = meta["preprocess"]
    model.preprocess = Preprocess(int(pp["input_size"]), tuple(pp["mean"]), tuple(pp["std"]))
    model.class_names = tuple(meta.get("class_names", CLASS_NAMES))
    model.load_state(groups.get("param", {}), groups.get("buffer", {}))
    model.meta = {k: v for k, v in meta.items()
                  if k not in ("arch", "config", "preprocess", "class_names", "format", "format_version")}
    return model.to(device)


def load_model(path, device: str = "cpu") -> Model:
    """Rebuild a model from its checkpoint alone (architecture, weights, preprocessing)."""
    groups, meta = load_arrays(path)
    return model_from_arrays(groups, meta, device)
