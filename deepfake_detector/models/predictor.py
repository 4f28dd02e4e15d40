"""The one interface every model kind implements, and what it declares it can do.

A :class:`Predictor` turns uint8 RGB crops into calibrated P(fake); its :class:`Abilities`
say what else it offers (gradients for heatmaps, training, thread safety). Callers ask
``model.abilities``, never the type, the runtime or the file suffix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.datasets import CLASS_NAMES

TTA_KINDS = ("flip",)  # test-time augmentations a model's meta["tta"] may name
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["CLASS_NAMES", "IMAGENET_MEAN", "IMAGENET_STD", "TTA_KINDS", "Abilities", "Predictor", "Preprocess",
           "check_tta"]


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


@dataclass(frozen=True)
class Abilities:
    """What a predictor can do beyond ``predict_proba``."""

    input_gradients: bool = False  # input_gradient(): d log-odds / d input (saliency maps)
    conv_maps: bool = False  # conv_maps(): last conv block's activations and gradients (Grad-CAM)
    trainable: bool = False  # make_optimizer(), forward/backward in training mode
    thread_safe: bool = False  # predict_proba may run in several threads at once
    exportable: bool = False  # export_onnx() can write it (so --runtime onnx can run it)
    bundle_part: bool = False  # bundle_part() gives it as a part of a fused bundle
    shared_encoder: bool = False  # a head on a frozen encoder: .encoder.features(x), head_logits(features)
    threads: int | None = None  # intra-op threads it runs with (None: its runtime's default)


class Predictor:
    """What every model offers, whatever runs it: its preprocessing and a calibrated P(fake).

    Subclasses set ``kind`` (the registry name of their kind), ``runtime`` (what runs it,
    one of :data:`~deepfake_detector.models.loader.RUNTIMES`), ``arch``,
    ``preprocess``, ``class_names`` and ``meta``, and implement ``logits(images, batch_size)``
    and ``num_parameters()``; they override ``abilities`` and the methods it declares.
    """

    kind = "abstract"
    runtime = "abstract"
    threads: int | None = None

    @property
    def abilities(self) -> Abilities:
        return Abilities(threads=self.threads)

    # --- what the model file says ----------------------------------------------------
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
    def framing(self) -> str:
        """How this model frames a new input, unless told otherwise: ``"face"`` (the largest face,
        cropped with :attr:`face_margin` as its training crops were; no face: ``NoFace``) or
        ``"as-is"`` (the whole image), from ``meta["framing"]``. Every model of this project is
        trained on faces, so ``"face"`` unless its file says otherwise."""
        framing = (getattr(self, "meta", None) or {}).get("framing", "face")
        if framing not in ("face", "as-is"):
            raise ValueError(f"unknown framing {framing!r} in the model file; 'face' or 'as-is'")
        return framing

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature", 1.0))

    @property
    def tta(self) -> str | None:
        """Test-time augmentation: None, or "flip" (the image and its mirror image, averaged)."""
        return self.meta.get("tta")

    # --- pixels in, probabilities out --------------------------------------------------
    def logits(self, images, batch_size: int = 64) -> np.ndarray:
        """uint8 (N, S, S, 3) -> logits (N, 2) as NumPy."""
        raise NotImplementedError

    def num_parameters(self) -> int | None:
        raise NotImplementedError

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
             "kind": self.kind, "runtime": self.runtime, "version": self.meta.get("version", "untrained")}
        return {**d, "tta": self.tta} if self.tta else d

    def file_logits(self, paths, framing: str = "as-is", size: int | None = None, detector=None,
                    batch_size: int = 64) -> tuple[np.ndarray, dict[str, str]]:
        """Decision logits (N, 2) of image files, each framed as ``framing`` says
        (:func:`~deepfake_detector.faces.crop.frame_image`) at ``size`` (default: the model's
        input size; resized to it after), as ``predict`` would frame them; and ``{path: error}``
        for the files that failed (their rows are NaN)."""
        from ..data import ImageDecodeError, load_image, resize
        from ..faces.crop import frame_image

        size = size or self.input_size
        out = np.full((len(paths), 2), np.nan, np.float32)
        errors: dict[str, str] = {}
        for i in range(0, len(paths), batch_size):
            crops, rows = [], []
            for j, p in enumerate(paths[i : i + batch_size], start=i):
                try:
                    crop = frame_image(load_image(p), framing, size, detector, self.face_margin)
                except ImageDecodeError as e:
                    errors[str(p)] = str(e)
                    continue
                crops.append(crop if size == self.input_size else resize(crop, self.input_size))
                rows.append(j)
            if crops:
                out[rows] = self.decision_logits(np.stack(crops), batch_size)
        return out, errors

    # --- abilities (each declared in ``abilities``) -------------------------------------
    def set_threads(self, n: int | None) -> None:
        """Run with ``n`` intra-op threads (None: the runtime's default)."""
        self.threads = n

    def input_gradient(self, x):
        """d(z_fake - z_real) / d x for normalised input x (N, 3, S, S); parameter gradients
        untouched. Needs ``abilities.input_gradients``."""
        raise NotImplementedError(f"a {self.kind} model gives no input gradients")

    def conv_maps(self, x):
        """(activations, gradients of the log-odds), each (C, h, w), at the output of the last
        convolution block for one normalised input x (1, 3, S, S). Needs ``abilities.conv_maps``."""
        raise NotImplementedError(f"a {self.kind} model gives no convolution maps")

    def export_onnx(self, out_path, opset: int = 17, dynamic_batch: bool = True, **options):
        """Write this model's graph to ``out_path`` as ONNX (use
        :func:`deepfake_detector.export.export_onnx`, which checks the opset and can halve the
        weights). Needs ``abilities.exportable``."""
        raise NotImplementedError(f"a {self.kind} model cannot be exported to ONNX")

    def bundle_part(self, name: str) -> tuple[dict, bytes]:
        """(manifest entry, ONNX bytes) of this model as part ``name`` of a fused bundle
        (:mod:`deepfake_detector.models.fusion`). Needs ``abilities.bundle_part``."""
        raise ValueError(f"part {name!r}: a {self.kind} model cannot go into a bundle "
                         "(export it to ONNX first: deepfake-detector export)")

    def make_optimizer(self, name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        """An optimiser over the trainable parameters. Needs ``abilities.trainable``."""
        raise NotImplementedError(f"a {self.kind} model cannot be trained")
