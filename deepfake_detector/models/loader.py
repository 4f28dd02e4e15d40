"""One way to get a model from a file: :func:`load`, over a registry of model kinds.

A kind (from-scratch, torch, ONNX, ...) says which files are its own, which runtime runs
them and how to load one; :func:`register_kind` adds one. The default model shipped in the
package and the error message when it is missing live here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .predictor import Predictor

DEFAULT_MODELS = ("default.zip", "default.onnx", "default.npz")  # inside deepfake_detector/assets, first found wins
RUNTIMES = ("auto", "numpy", "torch", "onnx")  # auto: the runtime the file's kind runs on


@dataclass(frozen=True)
class ModelKind:
    """A kind of model file: ``claims(path)`` says whether a file is one, ``load(path, device,
    threads)`` returns its :class:`Predictor`, which runs on ``runtime``; ``light``, where the
    kind has one, loads a faster model from the same file (``--fast``, and the default's
    fallback when the full model needs something that is not installed)."""

    name: str
    runtime: str
    claims: Callable[[Path], bool]
    load: Callable[..., Predictor]
    light: Callable[..., Predictor] | None = None


KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    if kind.name in KINDS:
        raise ValueError(f"model kind {kind.name!r} registered twice")
    KINDS[kind.name] = kind
    return kind


def default_model_path() -> Path:
    """The model shipped inside the package."""
    assets = Path(str(resources.files("deepfake_detector") / "assets"))
    for name in DEFAULT_MODELS:
        if (assets / name).exists():
            return assets / name
    return assets / DEFAULT_MODELS[-1]


def model_path(path=None) -> Path:
    """``path``, or the default model's; FileNotFoundError (saying which) where it is missing."""
    default = default_model_path()
    path = Path(path) if path else default
    if not path.exists():
        hint = " (the package ships without its default model; pass --model)" if path == default else ""
        raise FileNotFoundError(f"{path}: model file not found{hint}")
    return path


def kind_of_file(path) -> ModelKind:
    path = Path(path)
    for kind in KINDS.values():
        if kind.claims(path):
            return kind
    raise ValueError(f"{path}: not a model file this program knows; known kinds: {', '.join(KINDS)}")


def load(path=None, runtime: str = "auto", device: str = "cpu", threads: int | None = None,
         fast: bool = False) -> Predictor:
    """The model at ``path``, or the default one shipped in the package, as a :class:`Predictor`.

    ``runtime``: ``auto`` (what the file's kind runs on), or one of :data:`RUNTIMES`. A model
    that can be exported runs on ``onnx`` after an export to a temporary file, removed at
    once; any other runtime that cannot run the file is a ValueError, never a fallback.
    ``fast``: the file's light model (the default's CNN alone). The default model falls back
    to its light model, with ``meta["note"]`` saying why, where its full form cannot load.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    path = model_path(path)
    kind = kind_of_file(path)
    if fast:
        if kind.light is None:
            raise ValueError(f"{path}: a {kind.name} model has no fast variant")
        return kind.light(path, device=device, threads=threads)
    if runtime in ("auto", kind.runtime):
        try:
            return kind.load(path, device=device, threads=threads)
        except FileNotFoundError as e:  # a part the full model needs (the CLIP encoder) is missing
            if kind.light is None or path != default_model_path():
                raise
            model = kind.light(path, device=device, threads=threads)
            model.meta["note"] = f"{e}. Until then the default model runs its fast CNN part alone."
            return model
    if runtime == "onnx":
        model = kind.load(path, device="cpu", threads=threads)
        if model.abilities.exportable:
            return exported(model, threads=threads, device=device)
    raise ValueError(f"{path} is a {kind.name} model, which runs on {kind.runtime}"
                     f"{' (or on onnx, exported on the fly)' if kind.runtime != 'onnx' else ''}; "
                     f"runtime {runtime!r} cannot run it")


def exported(model: Predictor, threads: int | None = None, device: str = "cpu") -> Predictor:
    """``model`` exported to ONNX and run by onnxruntime; the export's temporary folder is
    removed before this returns (the session keeps the graph in memory)."""
    import tempfile

    from ..export import export_onnx
    from .onnx_model import OnnxModel

    with tempfile.TemporaryDirectory(prefix="dfd-onnx-") as tmp:
        data = export_onnx(model, Path(tmp) / f"{model.arch}.onnx").read_bytes()
    return OnnxModel(f"{model.arch} (exported on the fly)", threads, device, data=data)


# --- the kinds this package brings ---------------------------------------------------------
# Checkpoints written before 2026-12-03 name what ran them (``engine``), not their kind.
_LEGACY_ENGINES = {"numpy": "numpy", "torch": "torch", "clip-onnx+numpy": "clip"}


def _kind_in_checkpoint(path: Path) -> str | None:
    """The kind a .npz checkpoint names (``numpy``, ``torch``, ``clip``), or None for any
    other file."""
    if path.suffix.lower() != ".npz":
        return None
    from ..nn.io import CheckpointError, read_meta

    try:
        meta = read_meta(path)
    except CheckpointError:
        return "numpy"  # let the checkpoint loader give its precise error
    return meta.get("kind") or _LEGACY_ENGINES.get(meta.get("engine", "numpy"), meta.get("engine"))


def _load_checkpoint(path, device: str = "cpu", threads: int | None = None) -> Predictor:
    from .scratch import load_model

    model = load_model(path, device)
    if threads is not None:
        model.set_threads(threads)
    return model


def _load_onnx(path, device: str = "cpu", threads: int | None = None) -> Predictor:
    from .onnx_model import OnnxModel

    return OnnxModel(path, threads=threads, device=device)


for _name, _runtime in (("numpy", "numpy"), ("torch", "torch"), ("clip", "onnx")):
    register_kind(ModelKind(_name, _runtime, lambda p, k=_name: _kind_in_checkpoint(p) == k, _load_checkpoint))
def _load_bundle(path, device: str = "cpu", threads: int | None = None, only: str | None = None) -> Predictor:
    from .fusion import load_bundle

    return load_bundle(path, device, threads, only=only)


def _is_bundle(path: Path) -> bool:
    from .fusion import is_bundle

    return is_bundle(path)


register_kind(ModelKind("fused", "onnx", _is_bundle, _load_bundle,
                        light=lambda path, device="cpu", threads=None: _load_bundle(path, device, threads, "fast")))
register_kind(ModelKind("onnx", "onnx", lambda p: p.suffix.lower() == ".onnx", _load_onnx))
