"""From-scratch architectures on the NumPy/CuPy engine."""

from __future__ import annotations

import numpy as np

from .. import nn
from .predictor import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .registry import register_model
from .scratch import Model


def _conv_bn_relu(cin, cout, rng, stride=1):
    return [nn.Conv2D(cin, cout, 3, stride=stride, padding=1, bias=False, rng=rng),
            nn.BatchNorm2D(cout), nn.ReLU(inplace=True)]


@register_model("seed-cnn")
def seed_cnn(seed: int = 0, input_size: int = 128) -> Model:
    """The original network, exactly: 3 x (Conv3x3 -> BN -> ReLU -> MaxPool2) + Dense.

    Channels 3 -> 16 -> 32 -> 64, spatial 128 -> 64 -> 32 -> 16, Flatten 16,384 -> 2.
    56,578 parameters. Input scaled by 1/255 only, as the original.
    """
    rng = np.random.default_rng(seed)
    layers, names = [], []
    cin = 3
    for b, cout in enumerate((16, 32, 64), start=1):
        layers += [nn.Conv2D(cin, cout, 3, padding=1, rng=rng), nn.BatchNorm2D(cout),
                   nn.ReLU(inplace=True), nn.MaxPool2D(2)]
        names += [f"conv{b}", f"bn{b}", f"relu{b}", f"pool{b}"]
        cin = cout
    side = input_size // 8  # 128 -> 16 after three 2x2 pools
    layers += [nn.Flatten(), nn.Dense(64 * side * side, 2, rng=rng)]  # 16,384 -> 2
    names += ["flatten", "fc"]
    net = nn.Sequential(*layers, names=names)
    return Model(net, "seed-cnn", {"seed": seed, "input_size": input_size},
                 Preprocess(input_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))


DF_CNN_WIDTHS = (16, 32, 64, 128, 256)  # channels per stage; spatial 128 -> 64 -> 32 -> 16 -> 8
DF_CNN_DEPTHS = (1, 1, 2, 2, 1)  # convs per stage: depth where maps are small (cheap), ~0.24 GFLOP


@register_model("df-cnn")
def df_cnn(seed: int = 0, input_size: int = 128, widths=DF_CNN_WIDTHS, depths=DF_CNN_DEPTHS,
           dropout: float = 0.3) -> Model:
    """A deeper from-scratch detector: VGG-style stages, global average pooling, dropout.

    Stage 1 keeps full resolution for one conv (blending and resampling artefacts are
    fine-grained); the 32- and 16-px stages have two convs each; the head is
    GAP -> Dropout -> Dense, so the parameter count does not grow with the input size.
    Normalised with ImageNet statistics (zero-centred input trains faster than /255).
    """
    rng = np.random.default_rng(seed)
    layers, names = [], []

    def add(prefix, items, labels):
        layers.extend(items)
        names.extend(f"{prefix}.{lab}" for lab in labels)

    cin = 3
    for s, cout in enumerate(widths, start=1):
        for c in range(depths[s - 1]):
            add(f"s{s}", _conv_bn_relu(cin, cout, rng), (f"conv{c + 1}", f"bn{c + 1}", f"relu{c + 1}"))
            cin = cout
        if s < len(widths):
            add(f"s{s}", [nn.MaxPool2D(2)], ("pool",))
    add("head", [nn.GlobalAvgPool2D(), nn.Dropout(dropout, seed=seed), nn.Dense(cin, 2, rng=rng)],
        ("gap", "drop", "fc"))
    net = nn.Sequential(*layers, names=names)
    config = {"seed": seed, "input_size": input_size, "widths": list(widths), "depths": list(depths),
              "dropout": dropout}
    return Model(net, "df-cnn", config, Preprocess(input_size, IMAGENET_MEAN, IMAGENET_STD))
