"""Models: the predictor interface, the architectures by name, and the one loader.

``load(path)`` gives any model file as a :class:`Predictor`; ``create_model(name)`` builds a
fresh architecture (each declares its input size and normalisation).
"""

from . import cnn  # noqa: F401  (registers the from-scratch models)
from .clip import ClipHeadModel  # registers the CLIP heads; the encoder is opened on first use
from .loader import KINDS, RUNTIMES, ModelKind, default_model_path, load, model_path, register_kind
from .predictor import CLASS_NAMES, TTA_KINDS, Abilities, Predictor, Preprocess, check_tta
from .registry import create_model, list_models, register_model
from .scratch import Model, load_model, model_from_arrays, save_model
from .torch import TorchModel  # registers the torch models; imports torch only when one is built

__all__ = ["CLASS_NAMES", "KINDS", "RUNTIMES", "TTA_KINDS", "Abilities", "ClipHeadModel", "Model", "ModelKind",
           "Predictor", "Preprocess", "TorchModel", "check_tta", "create_model", "default_model_path", "list_models",
           "load", "load_model", "model_path", "model_from_arrays", "register_kind", "register_model", "save_model"]
