"""Export a Hugging Face CLIP vision tower to the encoder file :mod:`.encoder` runs.

Where a network exists, ``openai/clip-vit-base-patch16`` (or any CLIP checkpoint with a
512-d projection at 224 px) is turned into the same kind of file the weights package ships:
an ONNX graph ``pixel_values`` [B, 3, 224, 224] -> ``image_embeds`` [B, 512], by default
int8 dynamically quantised. A local folder saved with ``save_pretrained`` works offline.
No code from the model folder or the hub is executed (``trust_remote_code=False``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .encoder import EMBED_DIM, INPUT_NAME, INPUT_SIZE, OUTPUT_NAME

EXTRA_HINT = "pip install 'deepfake-detector[clip-export]'  (torch and transformers)"


def _load_vision_model(source):
    try:
        from transformers import CLIPVisionModelWithProjection
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"exporting CLIP weights needs transformers and torch: {EXTRA_HINT}") from e
    src = Path(source)
    local = src.is_dir()
    # a local folder: insist on safetensors where it has them (no pickle); a hub id: prefer them
    use_safetensors = True if local and any(src.glob("*.safetensors")) else None
    model = CLIPVisionModelWithProjection.from_pretrained(
        str(src) if local else str(source), trust_remote_code=False, use_safetensors=use_safetensors,
        attn_implementation="eager", local_files_only=local)
    return model.eval()


def export_hf_clip(source, out_path, quantize: bool = True, opset: int = 17) -> Path:
    """Export ``source`` (a Hugging Face model id or a ``save_pretrained`` folder) to ``out_path``.

    The graph's input is ``pixel_values`` float32 [B, 3, 224, 224] (CLIP mean/std normalised),
    its output ``image_embeds`` [B, 512], with a dynamic batch axis. ``quantize``: int8 dynamic
    weight quantisation (``QuantType.QInt8``), like the shipped file. The file is written
    atomically (a temporary file beside it, then ``os.replace``).
    """
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"exporting CLIP weights needs torch and transformers: {EXTRA_HINT}") from e

    model = _load_vision_model(source)
    cfg = model.config
    if int(cfg.image_size) != INPUT_SIZE or int(cfg.projection_dim) != EMBED_DIM:
        raise ValueError(f"{source}: image_size {cfg.image_size}, projection_dim {cfg.projection_dim}; "
                         f"the encoder runs {INPUT_SIZE} px -> {EMBED_DIM}-d embeddings")

    class _ImageEmbeds(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values, return_dict=True).image_embeds

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fp32 = out_path.with_name(f".{out_path.name}.fp32.part")
    part = out_path.with_name(f".{out_path.name}.part")
    try:
        dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.float32)
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter (dynamo=False) is deprecated; the trace's one shape check is
            # constant at 224 px, which is all the encoder feeds
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(_ImageEmbeds(model).eval(), (dummy,), str(fp32), dynamo=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              do_constant_folding=True)
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32), str(part), weight_type=QuantType.QInt8)
            fp32.unlink()
        else:
            os.replace(fp32, part)
        os.replace(part, out_path)
    finally:
        for p in (fp32, part):
            p.unlink(missing_ok=True)
    return out_path
