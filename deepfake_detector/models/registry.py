"""Models by name: ``@register_model("name")`` on a builder, ``create_model(name, **config)``."""

from __future__ import annotations

from collections.abc import Callable

_REGISTRY: dict[str, Callable] = {}


def register_model(name: str):
    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **config):
    """Build a fresh model; ``config`` are the builder's keyword arguments (seed, dropout...)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name](**config)


def builder_of(name: str) -> Callable:
    """The builder registered as ``name`` (KeyError naming the known ones where none is)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name]
