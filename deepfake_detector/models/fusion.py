"""Several models as one: a logistic stack of their logit differences, and the bundle file
(a zip of ONNX parts and a JSON manifest) that runs it on onnxruntime alone.

``FusedModel`` takes crops at its largest part's input size and gives each part its own
size. The bundle is read as data: a manifest, ONNX graphs and numbers, never code.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np

from .predictor import CLASS_NAMES, Abilities, Predictor, Preprocess

BUNDLE_FORMAT = "deepfake-detector/bundle"
BUNDLE_VERSION = 1
MANIFEST = "bundle.json"
MAX_MEMBER_BYTES = 256 << 20  # a bundle member larger than this is refused (memory per file is bounded)
MAX_BUNDLE_BYTES = 1 << 30  # all members together, as the zip declares them (checked before reading any)


class FusedModel(Predictor):
    """P(fake) = sigmoid((w . f + b) / T) over features ``f`` of the parts' logit differences
    ``s`` (z_fake - z_real): ``s`` itself, or, with a ``gate`` part (a domain classifier:
    P(like the gate's first domain) = g), ``[s * g, s * (1 - g), g]`` over the other parts,
    so that each expert can count where it is at home and not elsewhere."""

    kind = "fused"
    runtime = "onnx"

    def __init__(self, parts: dict[str, Predictor], weights, bias: float, meta: dict | None = None,
                 arch: str = "fused", gate: str | None = None):
        self.parts = dict(parts)
        self.gate = gate
        if gate is not None and gate not in self.parts:
            raise ValueError(f"gate {gate!r} is not one of the parts {list(self.parts)}")
        self.weights = np.asarray(weights, np.float64).reshape(-1)
        n_experts = len(self.parts) - (gate is not None)
        want = 2 * n_experts + 1 if gate else n_experts
        if len(self.weights) != want:
            raise ValueError(f"{len(self.weights)} weights for {want} stack features")
        self.bias = float(bias)
        self.arch, self.config, self.class_names = arch, {"parts": list(self.parts)}, CLASS_NAMES
        self.meta = dict(meta or {})
        self.preprocess = Preprocess(max(p.input_size for p in self.parts.values()))

    @property
    def abilities(self) -> Abilities:
        return Abilities(thread_safe=all(p.abilities.thread_safe for p in self.parts.values()), threads=self.threads)

    @property
    def face_margin(self) -> float:
        return float(self.meta.get("face_margin", next(iter(self.parts.values())).face_margin))

    def set_threads(self, n: int | None) -> None:
        for p in self.parts.values():
            p.set_threads(n)
        self.threads = n

    def num_parameters(self) -> int | None:
        counts = [p.num_parameters() for p in self.parts.values()]
        return None if None in counts else int(sum(counts)) + len(self.weights) + 1

    def part_scores(self, images, batch_size: int = 64) -> np.ndarray:
        """uint8 (N, S, S, 3) -> (N, parts) logit differences, each part at its own input size;
        heads on one CLIP encoder share its features (one encoder call per image, whatever
        feature each head reads)."""

        images = np.asarray(images)
        cols, embedded = [], {}
        for part in self.parts.values():
            x = images
            if len(x) and x.shape[1] != part.input_size:
                x = np.stack([cv2.resize(im, (part.input_size,) * 2, interpolation=cv2.INTER_AREA) for im in x])
            if part.abilities.shared_encoder and part.tta is None:
                key = id(part.encoder)
                if key not in embedded:
                    embedded[key] = part.encoder.features(part.normalize(x))
                z = np.asarray(part.head_logits(embedded[key][part.feature]), np.float64)
            else:
                z = np.asarray(part.decision_logits(x, batch_size), np.float64)
            cols.append(z[:, 1] - z[:, 0])
        return np.stack(cols, 1) if cols else np.zeros((len(images), 0))

    def features(self, scores) -> np.ndarray:
        """(N, parts) logit differences -> (N, features) the stack weighs (see the class)."""
        return stack_features(scores, list(self.parts), self.gate)

    def logits(self, images, batch_size: int = 64) -> np.ndarray:
        s = self.features(self.part_scores(images, batch_size)) @ self.weights + self.bias  # (N,)
        return np.stack([np.zeros_like(s), s], 1).astype(np.float32)

    def file_logits(self, paths, framing: str = "as-is", size: int | None = None, detector=None,
                    batch_size: int = 64):
        """Each part's own :meth:`file_logits` (framed at this model's input size, as ``predict``
        gives it crops), stacked."""
        size = size or self.input_size
        cols, errors = [], {}
        for part in self.parts.values():
            z, err = part.file_logits(paths, framing, size, detector, batch_size)
            cols.append(np.asarray(z, np.float64)[:, 1] - np.asarray(z, np.float64)[:, 0])
            errors.update(err)
        s = self.features(np.stack(cols, 1)) @ self.weights + self.bias
        return np.stack([np.zeros_like(s), s], 1).astype(np.float32), errors

    def describe(self) -> dict:
        keys = ("arch", "input_size", "kind", "runtime", "version", "encoder", "tta")
        parts = {name: {k: v for k, v in p.describe().items() if k in keys}
                 for name, p in self.parts.items()}
        return {**super().describe(), "parts": parts,
                "stack": {"weights": [round(float(w), 6) for w in self.weights], "bias": round(self.bias, 6),
                          "gate": self.gate}}


def stack_features(scores, names: list[str], gate: str | None = None) -> np.ndarray:
    """(N, parts) logit differences -> the stack's (N, features): the scores, or with a gate
    part ``[s * g, s * (1 - g), g]`` over the other parts, ``g`` = sigmoid(the gate's score)."""
    s = np.asarray(scores, np.float64)
    if gate is None:
        return s
    j = names.index(gate)
    g = 1.0 / (1.0 + np.exp(-s[:, j : j + 1]))  # (N, 1)
    experts = np.delete(s, j, axis=1)
    return np.concatenate([experts * g, experts * (1 - g), g], 1)


def fit_stack(scores, labels, cells=None, C: float = 1.0) -> tuple[np.ndarray, float]:
    """Logistic regression of ``labels`` on ``scores`` (N, parts), each (source x class) cell
    of ``cells`` weighted equally (sklearn's LogisticRegression). Returns (weights, bias)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels)
    w = None
    if cells is not None:
        keys, inv, counts = np.unique(np.asarray(cells, dtype=object).astype(str), return_inverse=True,
                                      return_counts=True)
        w = (len(y) / len(keys)) / counts[inv]
    lr = LogisticRegression(C=C, max_iter=1000).fit(np.asarray(scores, np.float64), y, sample_weight=w)
    return lr.coef_[0].copy(), float(lr.intercept_[0])


# --- the bundle file ----------------------------------------------------------------------
def save_bundle(model: FusedModel, path) -> Path:
    """Write ``model`` as one zip: ``bundle.json`` and one ONNX graph per part."""
    path = Path(path)
    entries, blobs = [], {}
    for name, part in model.parts.items():
        entry, data = part.bundle_part(name)
        entries.append(entry)
        blobs[entry["file"]] = data
    manifest = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "arch": model.arch,
                "parts": entries, "weights": model.weights.tolist(), "bias": model.bias, "gate": model.gate,
                "fast": model.meta.get("fast_part", next(iter(model.parts))), "meta": model.meta}
    tmp = path.with_name(f".tmp-{path.name}")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(MANIFEST, json.dumps(manifest, indent=1, default=float))
        for name, data in blobs.items():
            z.writestr(name, data)
    tmp.replace(path)
    return path


def is_bundle(path: Path) -> bool:
    if path.suffix.lower() != ".zip" or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return MANIFEST in z.namelist()


def _read(z: zipfile.ZipFile, name: str) -> bytes:
    info = z.getinfo(name)
    if info.file_size > MAX_MEMBER_BYTES:
        raise ValueError(f"{z.filename}: bundle member {name} is {info.file_size} bytes; refused")
    return z.read(name)


class OnnxHead:
    """A head graph on (N, features) vectors, run by onnxruntime (the bundle's CLIP head)."""

    def __init__(self, data: bytes, threads: int | None = 1, parameters: int | None = None):
        import onnxruntime as ort

        self.parameters = parameters  # as the manifest records it (reading the graph needs the onnx package)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or 1)
        so.log_severity_level = 3
        self.data = data
        self.session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])

    def forward(self, x, training: bool = False):
        if training:
            raise RuntimeError("an ONNX head runs inference only")
        return self.session.run(["logits"], {"image": np.ascontiguousarray(x, np.float32)})[0]

    def num_parameters(self) -> int | None:
        return self.parameters


def part_loaders() -> dict:
    """A part's kind (its model's ``kind``, as the manifest records it) -> the class method that
    reads it back: the other half of each part's ``bundle_part``. Bundles written before
    2026-12-03 name a CLIP head ``clip-head``."""
    from .clip.head import ClipHeadModel
    from .onnx_model import OnnxModel

    loaders = {cls.kind: cls.from_bundle_part for cls in (OnnxModel, ClipHeadModel)}
    return {**loaders, "clip-head": loaders[ClipHeadModel.kind]}


def load_bundle(path, device: str = "cpu", threads: int | None = None, only: str | None = None) -> Predictor:
    """The model in a bundle file; ``only``: one part of it alone, or ``"fast"``: the part the
    manifest names as the fast variant (default: the first)."""
    from ..nn.io import CheckpointError
    from .checks import bounded_json, check_model_meta, finite_number

    path = Path(path)
    with zipfile.ZipFile(path) as z:
        total = sum(i.file_size for i in z.infolist())
        if total > MAX_BUNDLE_BYTES:
            raise CheckpointError(f"{path}: its members would take {total} bytes once decompressed, over the "
                                  f"{MAX_BUNDLE_BYTES}-byte limit; refused")
        manifest = bounded_json(path, _read(z, MANIFEST), MANIFEST)
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path}: not a deepfake-detector bundle")
        check_model_meta(path, manifest.get("meta", {}))
        for key, v in (("weights", manifest.get("weights")), ("bias", [manifest.get("bias")])):
            if not isinstance(v, list) or not all(finite_number(w) for w in v):
                raise CheckpointError(f"{path}: the stack's {key} must be finite numbers, got {v!r}")
        parts_ok = isinstance(manifest.get("parts"), list) and manifest["parts"] and all(
            isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("name", "kind", "file"))
            for e in manifest["parts"])
        if not parts_ok:
            raise CheckpointError(f"{path}: {MANIFEST} must list its parts, each with a name, kind and file")
        if only == "fast":
            only = manifest.get("fast") or manifest["parts"][0]["name"]
        parts, encoder = {}, None
        for entry in manifest["parts"]:
            if only and entry["name"] != only:
                continue
            data = _read(z, entry["file"])
            loader = part_loaders().get(entry["kind"])
            if loader is None:
                raise ValueError(f"{path}: part {entry['name']!r} of unknown kind {entry['kind']!r}")
            part = loader(entry, data, f"{path}:{entry['file']}", threads=threads, device=device, encoder=encoder)
            if part.abilities.shared_encoder and encoder is None:
                encoder = part.encoder  # one encoder (one session, one hash of its file) for every head
            parts[entry["name"]] = part
    if only:
        if only not in parts:
            raise ValueError(f"{path}: no part named {only!r}")
        part = parts[only]
        part.meta = {**part.meta, "note": f"the {only!r} part of {path.name} alone"}
        return part
    return FusedModel(parts, manifest["weights"], manifest["bias"], manifest.get("meta", {}), manifest.get("arch"),
                      gate=manifest.get("gate"))
