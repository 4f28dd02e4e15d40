"""A from-scratch model: an engine network plus everything needed to use it from its file.

``Model`` wraps an :class:`~deepfake_detector.nn.Sequential` with its architecture name and
config, input size, normalisation and class names. :func:`save_model` writes a safe .npz
checkpoint; :func:`load_model` rebuilds any checkpoint through the architecture registry.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np

from .. import nn
from ..nn.backend import set_num_threads, to_numpy, xp_for
from ..nn.io import CheckpointError, load_arrays, save_arrays
from .predictor import (  # noqa: F401  (re-exported: the names a model file speaks)
    CLASS_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TTA_KINDS,
    Abilities,
    Predictor,
    Preprocess,
    check_tta,
)
from .registry import create_model


class EngineOptimizer:
    """The engine's optimiser over a model's parameters, with the interface the training
    loop uses for every trainable kind: ``clip_grad_norm``, ``step(lr)``, state arrays."""

    def __init__(self, model: Model, name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        if name not in nn.OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(nn.OPTIMIZERS)}")
        self.model = model
        kw = {"momentum": momentum} if name == "sgd" else {}
        self.opt = nn.OPTIMIZERS[name](model.parameters(), lr, weight_decay=weight_decay, **kw)

    @property
    def t(self) -> int:
        return self.opt.t

    def clip_grad_norm(self, max_norm: float) -> float:
        return nn.clip_grad_norm(self.model.grads(), max_norm)

    def step(self, lr: float | None = None):
        self.opt.step(self.model.grads(), lr=lr)

    def state_arrays(self) -> dict:
        return self.opt.state_arrays()

    def load_state_arrays(self, arrays: dict, t: int):
        self.opt.load_state_arrays(arrays, t)


@dataclass
class Model(Predictor):
    net: nn.Sequential
    arch: str
    config: dict
    preprocess: Preprocess
    class_names: tuple = CLASS_NAMES
    meta: dict = field(default_factory=dict)  # training metadata, threshold, temperature...
    device: str = "cpu"
    kind = "numpy"
    runtime = "numpy"

    def export_onnx(self, out_path, opset: int = 17, dynamic_batch: bool = True, fold_bn: bool = True, **_):
        """The network's layers as ONNX nodes, batch norms folded into the layer before
        (``fold_bn``)."""
        from ..export import export_sequential

        return export_sequential(self, out_path, opset, dynamic_batch, fold_bn=fold_bn)

    @property
    def abilities(self) -> Abilities:
        return Abilities(input_gradients=True, conv_maps=self._last_conv_block_end() is not None, trainable=True,
                         thread_safe=False, exportable=True, threads=self.threads)

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

    def set_threads(self, n: int | None) -> None:
        if n is not None:
            set_num_threads(n)  # the engine's pool of batch slices (BLAS is limited by the caller)
        self.threads = n

    # --- training ------------------------------------------------------------------
    def make_optimizer(self, name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        return EngineOptimizer(self, name, lr, momentum, weight_decay)

    def reseed(self, key) -> None:
        """Dropout masks drawn from ``key`` (e.g. [run seed, step]): a resumed run draws the same."""
        for i, layer in enumerate(l for l in self.net.layers if isinstance(l, nn.Dropout)):
            layer.reseed([*key, i])

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

    # --- gradients for heatmaps ----------------------------------------------------
    def _layers(self) -> list:
        return [layer for _, layer in nn.flat_layers(self.net)]

    def _last_conv_block_end(self) -> int | None:
        """Index of the last layer of the last convolution block: the last Conv2D and the
        BatchNorm and activation layers right after it (what the next stage sees)."""
        layers = self._layers()
        convs = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2D)]
        if not convs:
            return None
        k = convs[-1]
        while k + 1 < len(layers) and isinstance(layers[k + 1], (nn.BatchNorm2D, nn.ReLU, nn.LeakyReLU)):
            k += 1
        return k

    def input_gradient(self, x):
        return _log_odds_input_grad(self._layers(), x)

    def conv_maps(self, x):
        layers = self._layers()
        k = self._last_conv_block_end()
        if k is None:
            raise ValueError("this network has no Conv2D layer: no convolution maps")
        with nn.no_grad():  # the head of the network: no caches needed
            for layer in layers[: k + 1]:
                x = layer.forward(x, False)
        acts = np.asarray(to_numpy(x), np.float32).copy()  # (1, C, h, w); an in-place layer may overwrite x
        g = _log_odds_input_grad(layers[k + 1 :], x)
        return acts[0], np.asarray(to_numpy(g), np.float32)[0]  # (C, h, w) each


def log_odds_grad(logits):
    """d(z_fake - z_real)/d logits for (N, 2) logits, on the logits' device."""
    xp = nn.get_array_module(logits)
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError(f"expected (N, 2) logits, got shape {tuple(logits.shape)}")
    g = xp.zeros_like(logits)
    g[:, 1] = 1.0
    g[:, 0] = -1.0
    return g


def _log_odds_input_grad(layers, x):
    """d(z_fake - z_real)/d x through ``layers`` in evaluation mode; the layers' parameter
    gradients are left untouched."""
    with nn.enable_grad(), _isolated_grads(layers):
        out = x
        for layer in layers:
            out = layer.forward(out, False)
        grad = log_odds_grad(out)
        for layer in reversed(layers):
            grad = layer.backward(grad, True)
    return grad


@contextlib.contextmanager
def _isolated_grads(layers):
    """Parameter gradients computed inside go to throw-away dicts, not the model's."""
    saved = [(layer, layer.grads) for layer in layers if hasattr(layer, "grads")]
    for layer, _ in saved:
        layer.grads = {}
    try:
        yield
    finally:
        for layer, grads in saved:
            layer.grads = grads


def save_model(model, path, extra_meta: dict | None = None, optimizer=None) -> None:
    """Write ``model`` (and optionally an optimiser's state) to a safe .npz checkpoint."""
    meta = dict(model.meta)
    meta.update(extra_meta or {})
    meta.update(arch=model.arch, config=model.config, kind=model.kind,
                class_names=list(model.class_names),
                preprocess={"input_size": model.preprocess.input_size,
                            "mean": list(model.preprocess.mean), "std": list(model.preprocess.std)})
    groups = {"param": model.parameters(), "buffer": model.buffers()}
    if optimizer is not None:
        groups["optim"] = optimizer.state_arrays()
        meta["optim_t"] = optimizer.t
    save_arrays(path, groups, meta)


OPTIM_SLOTS = ("m", "v", "momentum")  # optimiser state per trainable parameter (Adam/AdamW; SGD)


def _build_from_meta(meta: dict, name, values: int):
    """The architecture ``meta`` names, built after its meta and config are checked, with no
    download and at most about twice the ``values`` (parameters and buffers) the file declares."""
    from ..nn.layers import param_budget
    from .checks import check_model_meta, checked_config

    arch = meta.get("arch")
    if not isinstance(arch, str):
        raise CheckpointError(f"{name}: no architecture name (arch) in its header")
    pp = check_model_meta(name, meta, meta.get("preprocess") or {}, meta.get("class_names", CLASS_NAMES))
    config = checked_config(name, arch, meta.get("config", {}))
    if "input_size" in config and config["input_size"] != pp.input_size:
        raise CheckpointError(f"{name}: config input_size {config['input_size']} differs from preprocess "
                              f"input_size {pp.input_size}")
    try:  # room for twice the file's values: a missing array gets its own message, not a build error
        with param_budget(2 * values + (1 << 20)):
            model = create_model(arch, **config)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, ArithmeticError, RuntimeError) as e:
        raise CheckpointError(f"{name}: its config does not build a {arch}: {e}") from e
    model.preprocess = pp
    return model


def _array_specs(model) -> dict[str, dict]:
    """{group: {name: (shape, dtype)}} of the arrays a checkpoint of ``model`` holds; ``optim``
    lists every slot an optimiser may keep for a trainable parameter."""
    params = {n: (tuple(a.shape), np.dtype(a.dtype)) for n, a in model.parameters().items()}
    buffers = {n: (tuple(a.shape), np.dtype(a.dtype)) for n, a in model.buffers().items()}
    optim = {f"{n}/{slot}": spec for n, spec in params.items() for slot in OPTIM_SLOTS}
    return {"param": params, "buffer": buffers, "optim": optim}


def _check_fit(model, headers: dict, name) -> None:
    """CheckpointError unless ``headers`` ({group: {name: (shape, dtype)}}) are exactly the
    model's parameters and buffers (and optimiser state for its parameters), shape for shape,
    of the same kind of dtype."""
    want = _array_specs(model)
    unknown = sorted(set(headers) - set(want))
    if unknown:
        raise CheckpointError(f"{name}: unexpected array groups {unknown}")
    for group, specs in want.items():
        have = headers.get(group, {})
        extra = sorted(set(have) - set(specs))
        missing = [] if group == "optim" else sorted(set(specs) - set(have))
        if extra or missing:
            raise CheckpointError(f"{name}: its {group} arrays do not match the {model.arch} architecture "
                                  f"(unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}, "
                                  f"missing {missing[:3]}{'...' if len(missing) > 3 else ''})")
        for key, (shape, dtype) in have.items():
            wshape, wdtype = specs[key]
            same_kind = dtype.kind == wdtype.kind or (dtype.kind in "iu" and wdtype.kind in "iu")
            if tuple(shape) != wshape or not same_kind:
                raise CheckpointError(f"{name}: {group}/{key} is {tuple(shape)} {dtype}, the {model.arch} "
                                      f"architecture has {wshape} {wdtype}")


def _values(headers: dict) -> int:
    return sum(math.prod(shape) for g in ("param", "buffer") for shape, _ in headers.get(g, {}).values())


def _finish(model, groups: dict, meta: dict, device: str):
    model.class_names = tuple(meta.get("class_names", CLASS_NAMES))
    model.load_state(groups.get("param", {}), groups.get("buffer", {}))
    model.meta = {k: v for k, v in meta.items()
                  if k not in ("arch", "config", "preprocess", "class_names", "format", "format_version")}
    return model.to(device)


def model_from_arrays(groups: dict, meta: dict, device: str = "cpu", name="checkpoint"):
    """The model of a checkpoint's arrays and header (as :func:`~deepfake_detector.nn.io.load_arrays`
    gives them), checked as :func:`load_model` checks a file."""
    from ..nn.io import check_finite

    headers = {g: {n: (tuple(np.shape(a)), np.asarray(a).dtype) for n, a in named.items()}
               for g, named in groups.items()}
    model = _build_from_meta(meta, name, _values(headers))
    _check_fit(model, headers, name)
    check_finite(groups, name)
    return _finish(model, groups, meta, device)


def load_checkpoint(path, device: str = "cpu"):
    """(model, arrays, meta) of a .npz checkpoint. Its header is checked (temperature, threshold,
    input size, config) before the architecture is built, and the built architecture's
    parameters, buffers and optimiser slots against the arrays' .npy headers before any array
    is read: a file that declares other arrays, or more data, is refused without reading it."""
    built = {}

    def check(headers, meta):
        built["model"] = _build_from_meta(meta, path, _values(headers))
        _check_fit(built["model"], headers, path)

    groups, meta = load_arrays(path, check)
    return _finish(built["model"], groups, meta, device), groups, meta


def load_model(path, device: str = "cpu"):
    """Rebuild a model from its .npz checkpoint alone (architecture, weights, preprocessing):
    a from-scratch one, or a torch one where its architecture is a torch one. Nothing else is
    read: ``pretrained``/``weights`` in its config are not followed (the file holds every weight)."""
    return load_checkpoint(path, device)[0]
