"""Architectures by name, timm-style: ``@register_model("name", spec=..., needs=...)`` on a
builder records it once, with its default config; ``create_model(name, **config)`` builds one.

An entry's default config is the builder's keyword defaults (``input_size``, ``dropout``...)
and its ``spec``: what the engine behind it needs to know (for a torch architecture, its
:class:`~deepfake_detector.models.torch.model.TorchArch`: head, normalisation, where its
ImageNet weights come from). ``needs`` names the extra to install (``torch``), if any.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable
    defaults: dict = field(default_factory=dict)  # the builder's keyword defaults
    spec: object = None
    needs: str | None = None  # the extra it needs: pip install 'deepfake-detector[<needs>]'

    @property
    def input_size(self) -> int | None:
        return self.defaults.get("input_size")

    @property
    def available(self) -> bool:
        """Whether what it needs is installed."""
        return self.needs is None or importlib.util.find_spec(self.needs) is not None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, spec=None, needs: str | None = None):
    """Record the decorated builder as architecture ``name``, once."""
    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        _REGISTRY[name] = ModelEntry(name, fn, defaults, spec, needs)
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The entry registered as ``name`` (KeyError naming the known ones where none is)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **config):
    """Build a fresh model; ``config`` are the builder's keyword arguments (seed, dropout...)."""
    return model_entry(name).builder(**config)


def builder_of(name: str) -> Callable:
    """The builder registered as ``name`` (KeyError naming the known ones where none is)."""
    return model_entry(name).builder
