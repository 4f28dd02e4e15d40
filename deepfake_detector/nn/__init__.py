"""The from-scratch engine: layers, loss, optimisers, schedules, checkpoint files.

NumPy on the CPU, CuPy on a GPU, with one copy of each layer. On the CPU the memory-bound
passes run as fused Numba kernels where Numba is installed (:mod:`.kernels` chooses; the NumPy
code stays the reference). Importing this package imports neither torch, CuPy nor Numba.
"""

from .backend import DeviceError, device_of, get_array_module, reuse_freed_memory, to_device, to_numpy, xp_for
from .containers import Sequential, flat_layers
from .grad import enable_grad, no_grad
from .im2col import col2im, im2col
from .kernels import KERNEL_SETS, kernels_in_use, use_kernels
from .layers import BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, Layer, LeakyReLU, ReLU
from .losses import log_softmax, softmax, softmax_cross_entropy
from .optim import OPTIMIZERS, SGD, Adam, AdamW, clip_grad_norm, global_norm
from .pooling import AttentionPool, AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .schedules import SCHEDULES, Constant, ExponentialDecay, StepDecay, WarmupCosine

__all__ = [
    "DeviceError", "device_of", "get_array_module", "reuse_freed_memory", "to_device", "to_numpy", "xp_for",
    "AttentionPool", "AvgPool2D", "BatchNorm1D", "BatchNorm2D", "Conv2D", "Dense", "Dropout", "Flatten",
    "GlobalAvgPool2D", "Layer", "LeakyReLU", "MaxPool2D", "ReLU", "Sequential", "flat_layers", "col2im",
    "enable_grad", "im2col", "no_grad", "log_softmax", "softmax", "softmax_cross_entropy", "OPTIMIZERS",
    "SGD", "Adam", "AdamW", "clip_grad_norm", "global_norm", "SCHEDULES", "Constant",
    "ExponentialDecay", "StepDecay", "WarmupCosine", "KERNEL_SETS", "kernels_in_use", "use_kernels",
]
