"""Architectures by name. Each model declares its input size and normalisation."""

from . import cnn  # noqa: F401  (registers the from-scratch models)
from .base import CLASS_NAMES, TTA_KINDS, Model, Preprocess, check_tta, load_model, model_from_arrays, save_model
from .registry import create_model, list_models, register_model
from .torch_models import TorchModel  # registers the torch models; imports torch only when one is built

__all__ = ["CLASS_NAMES", "TTA_KINDS", "Model", "Preprocess", "check_tta", "create_model", "list_models",
           "load_model", "model_from_arrays", "register_model", "save_model", "TorchModel"]
