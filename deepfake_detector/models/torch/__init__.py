"""The optional PyTorch engine and its ImageNet-initialised architectures: ``efficientnet-lite0``,
``mobilenet-v2`` and ``vit-tiny`` (builders take ``seed``, ``input_size``, ``mode``, ``dropout``,
``pretrained``, ``weights``). Importing it imports no torch: the builders do, on first use.
To add an architecture: one file here (its TorchArch, module and builder, registered together by
``@register_model(name, spec=..., needs="torch")``) and its import below.
"""

from __future__ import annotations

from deepfake_detector.models.predictor import IMAGENET_MEAN, IMAGENET_STD
from deepfake_detector.models.torch import efficientnet_lite0, mobilenet_v2, vit_tiny  # registers them
from deepfake_detector.models.torch.efficientnet_lite0 import TF_LITE_MEAN, TF_LITE_STD
from deepfake_detector.models.torch.model import (
    INSTALL_HINT,
    MODES,
    TorchArch,
    TorchModel,
    TorchOptimizer,
    TorchUnavailableError,
    arch_spec,
    require_torch,
)
from deepfake_detector.models.torch.vit_tiny import INCEPTION_MEAN, INCEPTION_STD
from deepfake_detector.models.torch.weights import load_state_dict_file, packaged_weights

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_MEAN", "INCEPTION_STD", "INSTALL_HINT",
           "MODES", "TF_LITE_MEAN", "TF_LITE_STD", "TorchArch", "TorchModel", "TorchOptimizer",
           "TorchUnavailableError", "efficientnet_lite0", "load_state_dict_file", "mobilenet_v2", "packaged_weights",
           "arch_spec", "require_torch", "vit_tiny"]
