"""Optimisers that update parameters in place, and clipping by global norm.

Each optimiser holds the model's parameter dict (name -> array) and its own state per
name; ``step(grads, lr)`` applies one update. The formulas are torch.optim's, step for step.
"""

from __future__ import annotations

import math

from .backend import get_array_module
from .kernels import fused_for


def global_norm(grads: dict) -> float:
    return math.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads.values()))


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place so that their joint L2 norm is at most ``max_norm``.

    Same rule as ``torch.nn.utils.clip_grad_norm_``: scale = max_norm / (norm + 1e-6),
    applied only when below 1. Returns the norm before clipping.
    """
    norm = global_norm(grads)
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        for g in grads.values():
            g *= scale
    return norm


class Optimizer:
    def __init__(self, params: dict, lr: float):
        self.params, self.lr = params, lr
        self.state: dict = {}  # name -> dict of arrays
        self.t = 0

    def step(self, grads: dict, lr: float | None = None):
        lr = self.lr if lr is None else lr
        self.t += 1
        for name, p in self.params.items():
            g = grads.get(name)
            if g is not None:
                self._update(name, p, g, lr)

    def _update(self, name, p, g, lr):
        raise NotImplementedError

    def state_arrays(self) -> dict:
        """Flat name -> array view of the state, for checkpoints."""
        return {f"{n}/{k}": v for n, s in self.state.items() for k, v in s.items()}

    def load_state_arrays(self, arrays: dict, t: int):
        self.t = t
        self.state = {}
        for key, v in arrays.items():
            n, k = key.rsplit("/", 1)
            xp = get_array_module(self.params[n])
            self.state.setdefault(n, {})[k] = xp.asarray(v, dtype=self.params[n].dtype)


class SGD(Optimizer):
    """SGD with momentum, Nesterov momentum and L2 weight decay (torch.optim.SGD)."""

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    def _update(self, name, p, g, lr):
        fk = fused_for(p)
        if fk is not None and fk.optim.sgd_update(p, g, self.state.setdefault(name, {}) if self.momentum else {},
                                                  lr, self.momentum, self.nesterov, self.weight_decay):
            return
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            s = self.state.setdefault(name, {})
            if "momentum" not in s:
                s["momentum"] = g.copy()
            else:
                s["momentum"] *= self.momentum
                s["momentum"] += g
            g = g + self.momentum * s["momentum"] if self.nesterov else s["momentum"]
        p -= lr * g


class Adam(Optimizer):
    """Adam (torch.optim.Adam); ``weight_decay`` adds L2 to the gradient."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def _update(self, name, p, g, lr):
        fk = fused_for(p)
        if fk is not None and fk.optim.adam_update(p, g, self.state.setdefault(name, {}), lr, self.t, self.betas,
                                                   self.eps, self.weight_decay, self.decoupled):
            return
        xp = get_array_module(p)
        b1, b2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                p *= 1 - lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        s = self.state.setdefault(name, {})
        if "m" not in s:
            s["m"], s["v"] = xp.zeros_like(p), xp.zeros_like(p)
        m, v = s["m"], s["v"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
        denom = xp.sqrt(v) / math.sqrt(bc2) + self.eps
        p -= (lr / bc1) * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW)."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
