"""Grad mode of the from-scratch engine: one process-wide flag saying whether layers cache
what their backward needs. :func:`no_grad` turns it off for inference, :func:`enable_grad`
back on inside (saliency maps), and :func:`grad_enabled` reads it.
"""

from __future__ import annotations

import contextlib

_GRAD_ENABLED = True


@contextlib.contextmanager
def _grad_mode(enabled: bool):
    global _GRAD_ENABLED
    previous, _GRAD_ENABLED = _GRAD_ENABLED, enabled
    try:
        yield
    finally:
        _GRAD_ENABLED = previous


def no_grad():
    """Inference without caches: forward passes inside keep nothing for backward."""
    return _grad_mode(False)


def enable_grad():
    """Caches on inside, even within a :func:`no_grad` block (for saliency maps)."""
    return _grad_mode(True)


def grad_enabled() -> bool:
    return _GRAD_ENABLED
