"""Learning-rate schedules as pure functions of the step: ``lr = schedule(step)``.

A step is whatever the caller counts (an optimiser step or an epoch); each schedule is a
small frozen dataclass, so a run's schedule is stored in its config and rebuilt on resume.
``SCHEDULES[name].for_run(lr, steps_per_epoch, epochs, **settings)`` builds one for a training
run from its settings (each schedule takes the ones it needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Constant:
    base_lr: float

    @classmethod
    def for_run(cls, lr: float, steps_per_epoch: int, epochs: int, **_) -> Constant:
        return cls(lr)

    def __call__(self, step: int) -> float:
        return self.base_lr


@dataclass(frozen=True)
class ExponentialDecay:
    """base_lr * gamma ** (step // every); the original recipe is gamma=0.95 per epoch."""

    base_lr: float
    gamma: float = 0.95
    every: int = 1  # steps per decay, e.g. batches per epoch

    @classmethod
    def for_run(cls, lr: float, steps_per_epoch: int, epochs: int, gamma: float = 0.95, **_) -> ExponentialDecay:
        return cls(lr, gamma, every=steps_per_epoch)  # gamma per epoch

    def __call__(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.every)


@dataclass(frozen=True)
class StepDecay:
    """base_lr * gamma ** (step // step_size), as torch's StepLR."""

    base_lr: float
    step_size: int
    gamma: float = 0.1

    @classmethod
    def for_run(cls, lr: float, steps_per_epoch: int, epochs: int, gamma: float = 0.1, step_epochs: int = 10,
                **_) -> StepDecay:
        return cls(lr, step_epochs * steps_per_epoch, gamma)

    def __call__(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up from base_lr*start_factor to base_lr, then cosine down to min_lr."""

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    start_factor: float = 0.1

    @classmethod
    def for_run(cls, lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0.0,
                **_) -> WarmupCosine:
        """Warm-up over ``warmup_epochs``, then cosine down to a hundredth of ``lr`` at the end."""
        return cls(lr, epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch), min_lr=lr * 0.01)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            f = self.start_factor + (1 - self.start_factor) * step / self.warmup_steps
            return self.base_lr * f
        t = min(step - self.warmup_steps, self.total_steps - self.warmup_steps)
        T = max(self.total_steps - self.warmup_steps, 1)
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t / T)) / 2


SCHEDULES = {"constant": Constant, "exponential": ExponentialDecay, "step": StepDecay,
             "cosine": WarmupCosine}
