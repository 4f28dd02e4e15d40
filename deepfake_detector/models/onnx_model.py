"""An exported model run by onnxruntime, behind the :class:`Predictor` interface.

:class:`OnnxModel` reads a .onnx file written by :func:`deepfake_detector.export.export_onnx`
(graph plus metadata: architecture, preprocessing, threshold, temperature...), so the file
alone predicts, with onnxruntime only. It gives no gradients (heatmaps use occlusion).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..nn.backend import DeviceError
from ..nn.io import CheckpointError
from . import onnx_format as fmt
from .checks import bounded_json, check_model_meta, check_onnx_weights
from .predictor import CLASS_NAMES, Abilities, Predictor, Preprocess


class OnnxModelError(CheckpointError):
    """The file is not an ONNX model exported by this program (or cannot be read)."""


def _session(source, threads: int | None, device: str, name: str):
    """An onnxruntime session over ``source`` (a path or the model's bytes)."""
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
        return ort.InferenceSession(source if isinstance(source, bytes) else str(source), so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise OnnxModelError(f"{name}: onnxruntime cannot load it ({e})") from e


class OnnxModel(Predictor):
    """An exported model run by onnxruntime: inference only, thread-safe."""

    kind = "onnx"
    runtime = "onnx"

    def __init__(self, path, threads: int | None = None, device: str = "cpu", *, data: bytes | None = None):
        """``path``: the .onnx file; or ``data``: its bytes (then ``path`` only names it)."""
        self.path = Path(path)
        if data is None and not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: model file not found")
        self._source = data if data is not None else self.path
        self.threads = threads
        self.device = device
        check_onnx_weights(self.path, data if data is not None else self.path.read_bytes())
        self.session = _session(self._source, threads, device, str(self.path))
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        if props.get(fmt.META_FORMAT) != fmt.FORMAT:
            raise OnnxModelError(f"{self.path}: an ONNX file without deepfake_detector metadata "
                                 "(export it with `deepfake-detector export` / export_onnx)")
        try:
            self.arch: str = props[fmt.META_ARCH]
            self.config: dict = bounded_json(self.path, props.get(fmt.META_CONFIG, "{}"))
            pp = bounded_json(self.path, props[fmt.META_PREPROCESS])
            names = bounded_json(self.path, props.get(fmt.META_CLASS_NAMES, "null"))
            self.meta: dict = bounded_json(self.path, props.get(fmt.META_META, "{}"))
            self._num_parameters = int(props[fmt.META_PARAMETERS]) if fmt.META_PARAMETERS in props else None
        except (KeyError, ValueError, TypeError) as e:
            raise OnnxModelError(f"{self.path}: unreadable deepfake_detector metadata ({e})") from e
        self.preprocess: Preprocess = check_model_meta(self.path, self.meta, pp, names or CLASS_NAMES)
        self.class_names: tuple = tuple(names) if names else CLASS_NAMES
        self.metadata = props
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if fmt.INPUT_NAME not in inputs or fmt.OUTPUT_NAME not in outputs:
            raise OnnxModelError(f"{self.path}: expected input {fmt.INPUT_NAME!r} and output {fmt.OUTPUT_NAME!r}")
        shape = list(inputs[fmt.INPUT_NAME].shape)
        want = (3, self.input_size, self.input_size)
        if len(shape) != 4 or any(isinstance(d, int) and d != w for d, w in zip(shape[1:], want)):
            raise OnnxModelError(f"{self.path}: its graph takes {shape}, its metadata says input size "
                                 f"{self.input_size}")
        dim0 = inputs[fmt.INPUT_NAME].shape[0]
        self._fixed_batch = dim0 if isinstance(dim0, int) and dim0 > 0 else None
        self._check_it_sees()

    def _check_it_sees(self) -> None:
        """Refuse a model whose output is not finite, or is the same for a black image and a
        noise image: its verdict would not depend on the input."""
        s = self.input_size
        probe = np.stack([np.zeros((s, s, 3), np.uint8),
                          np.random.default_rng(0).integers(0, 256, (s, s, 3), dtype=np.uint8)])
        try:
            z = np.asarray(self.logits(probe), np.float64)
        except Exception as e:  # noqa: BLE001  onnxruntime raises its own types
            raise OnnxModelError(f"{self.path}: it fails on a probe image ({type(e).__name__}: {e})") from e
        if not np.isfinite(z).all():
            raise OnnxModelError(f"{self.path}: its output is NaN or infinite on a probe image")
        if np.array_equal(z[0], z[1]):
            raise OnnxModelError(f"{self.path}: its output is the same for a black image and a noise image "
                                 "(it does not look at its input)")

    @property
    def abilities(self) -> Abilities:
        return Abilities(thread_safe=True, bundle_part=True, threads=self.threads)

    def bundle_part(self, name: str) -> tuple[dict, bytes]:
        data = self._source if isinstance(self._source, bytes) else Path(self._source).read_bytes()
        return {"name": name, "kind": self.kind, "file": f"{name}.onnx"}, data

    @classmethod
    def from_bundle_part(cls, entry: dict, data: bytes, where: str, threads=None, device: str = "cpu", **_):
        return cls(where, threads, device, data=data)

    # --- the network ---------------------------------------------------------------
    def forward(self, x, training: bool = False) -> np.ndarray:
        """(N, 3, S, S) normalised float32 -> (N, 2) logits (inference only)."""
        if training:
            raise RuntimeError("an onnxruntime model runs inference only")
        x = np.ascontiguousarray(x, dtype=np.float32)
        b = self._fixed_batch
        if b is None:
            return self.session.run([fmt.OUTPUT_NAME], {fmt.INPUT_NAME: x})[0]
        out = []  # a graph exported with a fixed batch: run it in chunks of that size, pad the last
        for i in range(0, len(x), b):
            chunk = x[i : i + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), np.float32)])
            out.append(self.session.run([fmt.OUTPUT_NAME], {fmt.INPUT_NAME: chunk})[0][:n])
        return np.concatenate(out)

    def num_parameters(self) -> int | None:
        return self._num_parameters

    def to(self, device: str):
        if device != self.device:
            self.session = _session(self._source, self.threads, device, str(self.path))
            self.device = device
        return self

    def set_threads(self, n: int | None) -> None:
        if n != self.threads:
            self.session = _session(self._source, n, self.device, str(self.path))
            self.threads = n

    # --- pixels in, probabilities out: normalize, predict_proba, describe from Predictor
    def logits(self, images, batch_size: int = 64) -> np.ndarray:
        """uint8 (N, S, S, 3) -> logits (N, 2) as NumPy."""
        out = [self.forward(self.normalize(images[i : i + batch_size]))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def __repr__(self):
        return f"OnnxModel({str(self.path)!r}, arch={self.arch!r}, input_size={self.input_size})"
