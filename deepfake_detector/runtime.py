"""Run an exported model with onnxruntime, behind the interface of :class:`~deepfake_detector.models.Model`.

:class:`OnnxModel` loads a .onnx file written by :func:`deepfake_detector.export.export_onnx`
and reads its metadata back (architecture, config, preprocessing, class names, ``meta``),
so ``predict``, ``evaluate``, the video code and the web app can take it in place of a
``Model``: same ``normalize``, ``logits``, ``predict_proba``, ``threshold``,
``temperature``, ``face_margin`` and ``describe``. It has no gradients (no ``backward``;
``supports_gradients`` is False), so explanations use occlusion sensitivity with it.

:func:`load_any` picks the loader from the file's extension. Only onnxruntime is needed
here, not the ``onnx`` package.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import export as _fmt
from .models.base import CLASS_NAMES, Predictor, Preprocess
from .nn.backend import DeviceError
from .nn.io import CheckpointError

INPUT_NAME, OUTPUT_NAME = _fmt.INPUT_NAME, _fmt.OUTPUT_NAME


class OnnxModelError(CheckpointError):
    """The file is not an ONNX model exported by this program (or cannot be read)."""


def _session(path: Path, threads: int | None, device: str):
    import onnxruntime as ort  # noqa: PLC0415 - keeps importing this module cheap

    if device == "cpu":
        providers = ["CPUExecutionProvider"]
    elif device == "gpu":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DeviceError("device='gpu' with an .onnx model needs onnxruntime-gpu "
                              "(CUDAExecutionProvider); use device='cpu'")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        raise DeviceError(f"unknown device {device!r}; choose 'cpu' or 'gpu'")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or 0)  # 0: onnxruntime's default (one per physical core)
    so.inter_op_num_threads = 1  # a chain of ops: nothing to run side by side
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise OnnxModelError(f"{path}: onnxruntime cannot load it ({e})") from e


class OnnxModel(Predictor):
    """An exported model run by onnxruntime; the inference half of ``Model``'s interface."""

    engine = "onnxruntime"
    supports_gradients = False

    def __init__(self, path, threads: int | None = None, device: str = "cpu"):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: model file not found")
        self.threads = threads
        self.device = device
        self.session = _session(self.path, threads, device)
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        if props.get(_fmt.META_FORMAT) != _fmt.FORMAT:
            raise OnnxModelError(f"{self.path}: an ONNX file without deepfake_detector metadata "
                                 "(export it with `deepfake-detector export` / export_onnx)")
        try:
            self.arch: str = props[_fmt.META_ARCH]
            self.config: dict = json.loads(props.get(_fmt.META_CONFIG, "{}"))
            pp = json.loads(props[_fmt.META_PREPROCESS])
            self.preprocess = Preprocess(int(pp["input_size"]), tuple(pp["mean"]), tuple(pp["std"]))
            names = json.loads(props.get(_fmt.META_CLASS_NAMES, "null"))
            self.class_names: tuple = tuple(names) if names else CLASS_NAMES
            self.meta: dict = json.loads(props.get(_fmt.META_META, "{}"))
            self._num_parameters = int(props[_fmt.META_PARAMETERS]) if _fmt.META_PARAMETERS in props else None
        except (KeyError, ValueError, TypeError) as e:
            raise OnnxModelError(f"{self.path}: unreadable deepfake_detector metadata ({e})") from e
        self.metadata = props
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise OnnxModelError(f"{self.path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}")
        dim0 = inputs[INPUT_NAME].shape[0]
        self._fixed_batch = dim0 if isinstance(dim0, int) and dim0 > 0 else None

    # --- the network ---------------------------------------------------------------
    def forward(self, x, training: bool = False) -> np.ndarray:
        """(N, 3, S, S) normalised float32 -> (N, 2) logits (inference only)."""
        if training:
            raise RuntimeError("an onnxruntime model runs inference only")
        x = np.ascontiguousarray(x, dtype=np.float32)
        b = self._fixed_batch
        if b is None:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        out = []  # a graph exported with a fixed batch: run it in chunks of that size, pad the last
        for i in range(0, len(x), b):
            chunk = x[i : i + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), np.float32)])
            out.append(self.session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0][:n])
        return np.concatenate(out)

    def num_parameters(self) -> int | None:
        return self._num_parameters

    def to(self, device: str):
        if device != self.device:
            self.session = _session(self.path, self.threads, device)
            self.device = device
        return self

    # --- pixels in, probabilities out: normalize, predict_proba, describe from Predictor
    def logits(self, images, batch_size: int = 64) -> np.ndarray:
        """uint8 (N, S, S, 3) -> logits (N, 2) as NumPy."""
        out = [self.forward(self.normalize(images[i : i + batch_size]))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def __repr__(self):
        return f"OnnxModel({str(self.path)!r}, arch={self.arch!r}, input_size={self.input_size})"


def load_any(path, device: str = "cpu", threads: int | None = None):
    """``.onnx`` -> :class:`OnnxModel` (onnxruntime); anything else -> ``models.load_model`` (.npz)."""
    if Path(path).suffix.lower() == ".onnx":
        return OnnxModel(path, threads=threads, device=device)
    from .models import load_model

    return load_model(path, device)
