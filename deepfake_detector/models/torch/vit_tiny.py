"""ViT-Tiny (DeiT-Tiny geometry: width 192, depth 12, 3 heads, MLP 768; 5.5M parameters) with
timm's parameter names, so DeiT/timm ViT-Tiny state dicts load as they are. No ViT weights
ship in any package: it trains from scratch, or from ``weights=`` (a local file) or
``pretrained=`` (a known name, downloaded once where a network exists).
"""

from __future__ import annotations

import functools

from deepfake_detector.models.predictor import IMAGENET_MEAN, IMAGENET_STD
from deepfake_detector.models.registry import register_model
from deepfake_detector.models.torch._build import _build
from deepfake_detector.models.torch.model import TorchArch, TorchModel, require_torch

INCEPTION_MEAN = (0.5, 0.5, 0.5)  # timm's augreg ViTs: (x - 0.5) / 0.5
INCEPTION_STD = (0.5, 0.5, 0.5)
_DEIT_TI = ("https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth", IMAGENET_MEAN, IMAGENET_STD)
_VIT_TI_AUGREG = ("https://huggingface.co/timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k/resolve/main/"
                  "model.safetensors", INCEPTION_MEAN, INCEPTION_STD)

SPEC = TorchArch(
    heads=("head_drop", "head"),  # top-level modules trained in linear-probe mode
    mean=IMAGENET_MEAN, std=IMAGENET_STD,
    pretrained_urls={
        "timm:deit_tiny_patch16_224": _DEIT_TI,
        "deit_tiny_patch16_224.fb_in1k": _DEIT_TI,
        "timm:vit_tiny_patch16_224": _VIT_TI_AUGREG,
        "vit_tiny_patch16_224.augreg_in21k_ft_in1k": _VIT_TI_AUGREG,
    },
)


@functools.cache
def net_class():
    """The ``VisionTransformer`` module class, defined on first use so that importing this file needs no torch."""
    torch = require_torch()
    from torch import nn
    from torch.nn import functional as F

    class Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            B, N, C = x.shape
            q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
            x = F.scaled_dot_product_attention(q, k, v)
            return self.proj(x.transpose(1, 2).reshape(B, N, C))

    class Mlp(nn.Module):
        def __init__(self, dim, hidden):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self, dim, heads, mlp_ratio):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
            self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, int(dim * mlp_ratio))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class PatchEmbed(nn.Module):
        def __init__(self, patch, dim):
            super().__init__()
            self.proj = nn.Conv2d(3, dim, patch, patch)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)

    class VisionTransformer(nn.Module):
        """ViT with a class token, pre-norm blocks and timm's parameter names."""

        def __init__(self, img_size=224, patch_size=16, dim=192, depth=12, heads=3, mlp_ratio=4.0,
                     num_classes=1000, dropout=0.0):
            super().__init__()
            if img_size % patch_size:
                raise ValueError(f"input_size {img_size} is not a multiple of patch_size {patch_size}")
            self.grid = img_size // patch_size
            self.patch_embed = PatchEmbed(patch_size, dim)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, dim))
            self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head_drop = nn.Dropout(dropout)
            self.head = nn.Linear(dim, num_classes)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            for m in self.modules():  # timm's "jax"-free default: trunc-normal linears, zero biases
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            x = self.patch_embed(x)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
            x = self.norm(self.blocks(x))
            return self.head(self.head_drop(x[:, 0]))

    return VisionTransformer


def adapt_vit(name, v, t):
    """Resample position embeddings (bicubic) and patch kernels (area) to this network's grid."""
    torch = require_torch()
    from torch.nn import functional as F

    if name == "pos_embed" and v.ndim == 3 and v.shape[2] == t.shape[2]:
        g0, g1 = int(round((v.shape[1] - 1) ** 0.5)), int(round((t.shape[1] - 1) ** 0.5))
        if g0 * g0 + 1 != v.shape[1] or g1 * g1 + 1 != t.shape[1]:
            return v
        grid = v[:, 1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(g1, g1), mode="bicubic", align_corners=False, antialias=g1 < g0)
        return torch.cat([v[:, :1].float(), grid.permute(0, 2, 3, 1).reshape(1, g1 * g1, -1)], dim=1)
    if name == "patch_embed.proj.weight" and v.ndim == 4 and v.shape[:2] == t.shape[:2]:
        k0, k1 = v.shape[-1], t.shape[-1]
        mode = "area" if k1 < k0 else "bilinear"
        w = F.interpolate(v.float(), size=(k1, k1), mode=mode, **({} if mode == "area" else
                                                                 {"align_corners": False}))
        return w * (k0 / k1) ** 2  # the same response to an image resampled by k1 / k0
    return v


@register_model("vit-tiny", spec=SPEC, needs="torch")
def vit_tiny(seed: int = 0, input_size: int = 224, patch_size: int = 16, mode: str = "finetune",
             pretrained=False, weights: str | None = None, dropout: float = 0.0, dim: int = 192,
             depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0, mean=None, std=None) -> TorchModel:
    """ViT-Tiny (DeiT-Tiny geometry, timm names): patch 16 at 224 (or patch 8 at 112/128).

    Patch 16 at 224 px gives 196 tokens; ``patch_size=8, input_size=112`` the same 196 tokens
    at half the resolution. From scratch by default; ``weights=`` a local state dict (DeiT/timm
    ViT-Ti files load as they are; other grids and patch sizes are resampled: position
    embeddings bicubic, patch kernels by area), or ``pretrained=`` a known name.
    ImageNet mean/std (the augreg names switch to 0.5/0.5, as they were trained).
    """
    require_torch()
    VisionTransformer = net_class()

    def make():
        return VisionTransformer(int(input_size), int(patch_size), int(dim), int(depth), int(heads),
                                 float(mlp_ratio), num_classes=2, dropout=float(dropout))

    config = {"seed": seed, "input_size": input_size, "patch_size": patch_size, "mode": mode, "dropout": dropout,
              "dim": dim, "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio}
    return _build("vit-tiny", make, seed=seed, input_size=input_size, mode=mode, pretrained=pretrained,
                  weights=weights, config=config, adapt=adapt_vit, mean=mean, std=std)
