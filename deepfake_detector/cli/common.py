"""What several commands share: the model and face flags, the input limits, loading the model
the flags name."""

from __future__ import annotations

import sys


def add_model_args(p, with_faces=True, with_device=True):
    from ..models import RUNTIMES
    from ..nn.backend import DEVICES

    p.add_argument("--model", help="model file (.npz checkpoint, .onnx export...); default: the shipped model")
    if with_device:
        p.add_argument("--device", default="cpu", choices=DEVICES, help="gpu needs CuPy")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="what runs the model: auto (the file's own), or numpy / torch / onnx (a checkpoint "
                        "is exported to ONNX on the fly); a runtime that cannot run the file is an error")
    p.add_argument("--threads", type=int, help="intra-op threads of the model's runtime (default: its own)")
    p.add_argument("--detector", help="face detector (see `deepfake-detector models`); default: the best installed")
    p.add_argument("--fast", action="store_true",
                   help="the model file's fast variant (the default model's CNN part alone, without CLIP)")
    if with_faces:  # None: the model's own framing (the default model: the largest face, NoFace without one)
        g = p.add_mutually_exclusive_group()
        g.add_argument("--faces", dest="faces", action="store_const", const=True, default=None,
                       help="crop the largest face first (what the default model does anyway)")
        g.add_argument("--whole-image", dest="faces", action="store_const", const=False,
                       help="score the whole image, not the face the model would crop")


def add_limit_args(p):
    """The decoding gate's limits (data.limits): what one input file may cost."""
    from ..data.limits import (
        DEFAULT_DECODE_SECONDS,
        DEFAULT_MAX_DECODED_MB,
        DEFAULT_MAX_IMAGE_MB,
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_VIDEO_MB,
    )

    g = p.add_argument_group("input limits", "files over these are refused with an Error row, never decoded")
    g.add_argument("--max-pixels", type=int, metavar="N",
                   help=f"largest image or video frame, by its header (default {DEFAULT_MAX_PIXELS:,})")
    g.add_argument("--max-image-mb", type=float, metavar="MB",
                   help=f"largest image file, read whole into memory (default {DEFAULT_MAX_IMAGE_MB:g})")
    g.add_argument("--max-video-mb", type=float, metavar="MB",
                   help=f"largest video file, streamed (default {DEFAULT_MAX_VIDEO_MB:g})")
    g.add_argument("--max-decoded-mb", type=float, metavar="MB",
                   help=f"largest decoded image: width x height x channels x bytes per sample "
                        f"(default {DEFAULT_MAX_DECODED_MB:g})")
    g.add_argument("--decode-seconds", type=float, metavar="S",
                   help="longest decode of one image (every format but JPEG runs in a worker process, "
                        f"stopped at this deadline; default {DEFAULT_DECODE_SECONDS:g})")
    g.add_argument("--follow-links", action="store_true",
                   help="read file links inside a folder that point out of it (default: skipped and counted)")


def apply_limits(args) -> None:
    if getattr(args, "follow_links", False):
        import os

        from ..data.media import ENV_FOLLOW_LINKS

        os.environ[ENV_FOLLOW_LINKS] = "1"  # the walk, and scan workers, read it
    keys = ("max_pixels", "max_image_mb", "max_video_mb", "max_decoded_mb", "decode_seconds")
    if any(getattr(args, k, None) is not None for k in keys):
        from ..data.limits import set_limits

        set_limits(args.max_image_mb, args.max_video_mb, args.max_pixels, getattr(args, "max_decoded_mb", None),
                   getattr(args, "decode_seconds", None))


def lost_inputs(ignored) -> int:
    """1 (and an error line) where a walk could not read folders: inputs were lost."""
    if not ignored.lost:
        return 0
    print(f"error: {ignored.lost} folder(s) could not be read; the files in them were not looked at", file=sys.stderr)
    return 1


def load_model(args):
    from ..models import load

    model = load(args.model, getattr(args, "runtime", "auto"), getattr(args, "device", "cpu"),
                 getattr(args, "threads", None), fast=getattr(args, "fast", False))
    if model.meta.get("note"):
        print(f"note: {model.meta['note']}", file=sys.stderr)
    return model


def detector(args):
    """The face detector named by ``--detector`` (None: the default one, made when needed)."""
    if not args.detector:
        return None
    from ..faces import get_detector

    return get_detector(args.detector)


def pretrained_value(text: str):
    """--pretrained: true/imagenet (the packaged ImageNet weights), none/false (random
    initialisation), a known name (torchvision:mobilenet_v2...) or a weights file path."""
    low = text.lower()
    if low in ("true", "yes", "imagenet", "package"):
        return True
    if low in ("false", "no", "none", "scratch"):
        return False
    return text

