"""Containers of the from-scratch engine: :class:`Sequential` (layers run in order, with
PyTorch-style dotted names for parameters, gradients and buffers) and :func:`flat_layers`,
the one walk over a nested Sequential's leaf layers that other modules share.
"""

from __future__ import annotations

from collections.abc import Iterator

from .backend import get_array_module
from .grad import grad_enabled
from .kernels import fused_for
from .layers import Layer, fuses_with_relu


class Sequential(Layer):
    """Layers run in order; names are '<index or given name>.<param>' as in PyTorch.

    With the fused kernels in use (:mod:`.kernels`), a BatchNorm directly followed by a ReLU
    runs as one step: the BatchNorm computes the ReLU too (and applies its mask in backward);
    the ReLU is passed over in both directions. Each layer called on its own runs unfused.
    """

    def __init__(self, *layers, names=None):
        super().__init__()
        self.layers = list(layers)
        self.names = list(names) if names is not None else [str(i) for i in range(len(layers))]
        self._passed_over = ()  # indices of the ReLUs the last forward fused into their BatchNorm

    def forward(self, x, training=False):
        layers, passed_over = self.layers, []
        i = 0
        while i < len(layers):
            layer = layers[i]
            if i + 1 < len(layers) and fuses_with_relu(layer, layers[i + 1]) and fused_for(x) is not None:
                x = layer.forward_relu(x, training)
                layers[i + 1]._out = None  # the ReLU's own cache, left empty
                passed_over.append(i + 1)
                i += 2
            else:
                x = layer.forward(x, training)
                i += 1
        self._passed_over = tuple(passed_over) if grad_enabled() else ()
        return x

    def backward(self, grad, need_input_grad=True):
        last = len(self.layers) - 1
        passed_over, self._passed_over = self._passed_over, ()
        for i in range(last, -1, -1):
            if i in passed_over:  # fused into the BatchNorm before it, which applies its mask
                continue
            grad = self.layers[i].backward(grad, need_input_grad or i > 0)
        return grad

    def children(self):
        return zip(self.names, self.layers)

    def _named(self, attr):
        for name, layer in self.children():
            if isinstance(layer, Sequential):
                for k, v in layer._named(attr):
                    yield f"{name}.{k}", v
            else:
                for k, v in getattr(layer, attr).items():
                    yield f"{name}.{k}", v

    def named_parameters(self):
        return dict(self._named("params"))

    def named_grads(self):
        return dict(self._named("grads"))

    def named_buffers(self):
        return dict(self._named("buffers"))

    def _owners(self, attr):
        """(layer, dict attr, key) for each named entry, to write values back."""
        for name, layer in self.children():
            if isinstance(layer, Sequential):
                for k, (owner, key) in layer._owners(attr):
                    yield f"{name}.{k}", (owner, key)
            else:
                for key in getattr(layer, attr):
                    yield f"{name}.{key}", (layer, key)

    def load_arrays(self, attr, arrays: dict, strict=True):
        owners = dict(self._owners(attr))
        missing = set(owners) - set(arrays)
        if strict and missing:
            raise KeyError(f"missing {attr}: {sorted(missing)}")
        for k, (layer, key) in owners.items():
            if k not in arrays:
                continue
            cur = getattr(layer, attr)[key]
            new = arrays[k]
            if tuple(new.shape) != tuple(cur.shape):
                raise ValueError(f"{k}: shape {tuple(new.shape)} in file, {tuple(cur.shape)} in model")
            xp = get_array_module(cur)
            getattr(layer, attr)[key] = xp.asarray(new, dtype=cur.dtype)

    def zero_grad(self):
        for layer in self.layers:
            layer.zero_grad()

    def to(self, device):
        for layer in self.layers:
            layer.to(device)
        return self

    def astype(self, dtype):
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.named_parameters().values()))

    def __repr__(self):
        inner = "\n".join(f"  ({n}): {l!r}".replace("\n", "\n  ") for n, l in self.children())
        return f"Sequential(\n{inner}\n)"


def flat_layers(seq, prefix: str = "") -> Iterator[tuple[str, Layer]]:
    """(dotted name, leaf layer) for every leaf layer of a (possibly nested) Sequential, in
    execution order; names are those of :meth:`Sequential.children`, nested ones joined by "."."""
    for name, layer in seq.children():
        full = f"{prefix}{name}"
        if isinstance(layer, Sequential):
            yield from flat_layers(layer, f"{full}.")
        else:
            yield full, layer
