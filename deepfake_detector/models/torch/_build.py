"""What every torch architecture's builder shares: a seeded network, its ``pretrained=`` and
``weights=`` loaded into it, the linear-probe freeze, and the :class:`TorchModel` with a
config that rebuilds it from its checkpoint alone. An architecture file calls :func:`_build`.
"""

from __future__ import annotations

import logging
import os

from deepfake_detector.models.predictor import Preprocess
from deepfake_detector.models.torch.model import MODES, TorchModel, arch_spec, require_torch
from deepfake_detector.models.torch.weights import _load_into, _resolve_pretrained, load_state_dict_file
from deepfake_detector.nn.layers import budgeted, reserve_params

log = logging.getLogger(__name__)


_SHAPE_CHANGING = {"requires_grad_", "resize_", "resize_as_", "set_", "share_memory_", "squeeze_", "unsqueeze_",
                   "t_", "transpose_", "swapdims_", "swapaxes_", "as_strided_"}


def _shapes_only(make_net) -> list[tuple]:
    """The state-dict shapes of ``make_net()``, built on the meta device (no memory) with its
    in-place initialisation skipped (it changes no shape; on meta tensors it would go through
    torch's slow Python reference kernels, seconds on first use)."""
    torch = require_torch()
    from torch.overrides import TorchFunctionMode

    class ShapesOnly(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            t = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if (name.endswith("_") and not name.startswith("__") and name not in _SHAPE_CHANGING
                    and isinstance(t, torch.Tensor) and t.is_meta):
                return t
            return func(*args, **kwargs)

    with torch.device("meta"), ShapesOnly():
        return [tuple(t.shape) for t in make_net().state_dict().values()]


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


def _build(arch, make_net, *, seed, input_size, mode, pretrained, weights, config, mean=None, std=None,
           adapt=None) -> TorchModel:
    """``make_net()`` under ``seed``, initialised from ``pretrained`` then ``weights``, as a TorchModel.

    ``arch``'s :class:`~deepfake_detector.models.torch.model.TorchArch` (its ``arch_spec``)
    gives its head and default normalisation; weights loaded from ``pretrained`` bring the
    normalisation they were trained with, and an explicit ``mean``/``std`` wins over both.
    ``adapt(name, value, target)`` may reshape loaded tensors of another shape. Files are
    read with ``torch.load(..., weights_only=True)`` (or as safetensors): never unpickled as
    objects. The model's stored ``config`` has ``pretrained=False, weights=None`` (its
    checkpoint holds every weight: rebuilding needs neither the package nor the network) and
    the sources are kept in ``meta["weights_source"]``.
    """
    torch = require_torch()
    spec = arch_spec(arch)
    heads = spec.heads
    if budgeted():  # rebuilding a checkpoint's architecture: its size first, on no memory
        reserve_params(*_shapes_only(make_net))
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, the global generator left as it was
        torch.manual_seed(int(seed))
        net = make_net()
    mean_std = (spec.mean, spec.std)
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
