"""``deepfake-detector``: parses arguments and calls the library functions, nothing more."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys

from . import __version__


def _add_model_args(p, with_faces=True):
    p.add_argument("--model", help="checkpoint (.npz) or exported model (.onnx); default: the shipped model")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="gpu needs CuPy")
    p.add_argument("--runtime", choices=["numpy", "onnx"], default="numpy",
                   help="onnx: run on onnxruntime (a .onnx --model always does)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: its own)")
    if with_faces:
        p.add_argument("--faces", action="store_true", help="detect and crop the largest face first")


def cmd_train(args) -> int:
    from .train import TrainConfig, train

    cfg = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    if args.resume:
        from pathlib import Path

        saved = Path(args.resume) / "config.json"
        if not saved.exists():
            print(f"error: {saved} not found; nothing to resume", file=sys.stderr)
            return 2
        cfg = TrainConfig(**json.loads(saved.read_text()))
        cfg.out = args.resume
    overrides = {"data": args.data, "arch": args.arch, "epochs": args.epochs, "batch_size": args.batch_size,
                 "lr": args.lr, "schedule": args.schedule, "optimizer": args.optimizer, "out": args.out,
                 "batches_per_epoch": args.batches_per_epoch, "seed": args.seed, "device": args.device,
                 "early_stopping": args.early_stopping, "balance": args.balance, "workers": args.workers}
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    if args.real_dir or args.fake_dir:
        cfg.real_dirs, cfg.fake_dirs, cfg.data = args.real_dir or [], args.fake_dir or [], None
    if args.pretrained is not None:
        cfg.model_config = dict(cfg.model_config, pretrained=_pretrained_value(args.pretrained))
    if args.mode is not None:
        cfg.model_config = dict(cfg.model_config, mode=args.mode)
    if args.synthesize_fakes is not None:
        cfg.synthesize_fakes = None if args.synthesize_fakes == "none" else args.synthesize_fakes
    if args.sbi_probability is not None:
        cfg.sbi = dict(cfg.sbi, probability=args.sbi_probability)
    if args.no_augment:
        cfg.augment = None
    if args.no_cache:
        cfg.cache = False
    if args.faces:
        cfg.faces = True
    if args.whole_if_no_face:
        cfg.whole_if_no_face = True
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
    from .evaluate import evaluate
    from .metrics import metrics_table
    from .predict import get_model

    model = get_model(args.model, args.device, runtime=args.runtime, threads=args.threads)
    results = []
    for i, d in enumerate(args.data):
        report = None
        if args.report_dir:
            report = args.report_dir if len(args.data) == 1 else f"{args.report_dir}/{i}"
        results.append(evaluate(model, d, faces=args.faces, report_dir=report, workers=args.workers,
                                limit=args.limit))
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
        return 0
    for r in results:
        print(f"{r['split']}: n={r['n']} (skipped {r['skipped']})  threshold {r['threshold']:.4f} (validation)")
        print(f"  accuracy {r['accuracy']:.4f}  balanced {r['balanced_accuracy']:.4f}  precision "
              f"{r['precision']:.4f}  recall {r['recall']:.4f}  F1 {r['f1']:.4f}")
        print(f"  ROC-AUC {r['roc_auc']:.4f}  AP {r['average_precision']:.4f}  EER {r['eer']:.4f}  "
              f"log loss {r['log_loss']:.4f}  ECE {r['ece']:.4f}")
        print(f"  accuracy real {r['accuracy_real']:.4f}  fake {r['accuracy_fake']:.4f}  "
              f"confusion [[TN, FP], [FN, TP]] = {r['confusion_matrix']}")
        a = r["at_0.5"]
        print(f"  at 0.5: accuracy {a['accuracy']:.4f}  F1 {a['f1']:.4f}  confusion {a['confusion_matrix']}")
        if r.get("report"):
            print(f"  report: {r['report']}")
    if len(results) > 1:
        print(metrics_table(results, [r["split"] for r in results]))
    return 0


def cmd_predict(args) -> int:
    from .predict import get_model, predict_paths

    model = get_model(args.model, args.device, runtime=args.runtime, threads=args.threads)
    rows = []
    failed = videos_done = 0
    out = sys.stdout
    writer = None
    for row in predict_paths(args.paths, model, faces=args.faces, whole_if_no_face=args.whole_if_no_face,
                             n_frames=args.frames, every=args.every, all_faces=args.all_faces):
        failed += row.get("error") is not None and row.get("label") != "NoFace"
        if row.get("kind") == "video" and row.get("p_fake") is not None:
            _video_outputs(row, args, videos_done)
            videos_done += 1
        if args.format == "json":
            rows.append(row)
        elif args.format == "csv":
            flat = {k: row.get(k) for k in ("path", "kind", "p_fake", "label", "confidence", "error")}
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(flat))
                writer.writeheader()
            writer.writerow(flat)
        else:
            p = "-" if row.get("p_fake") is None else f"{row['p_fake']:.4f}"
            note = row.get("error") or row.get("message")
            extra = f"  ({note})" if note else ""
            print(f"{row.get('label') or 'ERROR':7} {p:>7} {row.get('confidence') or '-':7} {row['path']}{extra}")
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    return 1 if failed else 0


def _numbered(path: str, video: str, n: int) -> str:
    """The first video writes to ``path``; later ones to ``path`` with the video's name added."""
    if n == 0:
        return path
    from pathlib import Path

    p = Path(path)
    return str(p.with_name(f"{p.stem}-{Path(video).stem}{p.suffix}"))


def _video_outputs(row, args, n: int):
    if args.annotate:
        from .video.render import annotate_video

        annotate_video(row["path"], row, _numbered(args.annotate, row["path"], n))
    if args.timeline:
        from .video.render import plot_timeline

        plot_timeline(row, _numbered(args.timeline, row["path"], n))


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
                       progress=not args.quiet, n_frames=args.frames, runtime=args.runtime)
    except ScanInterrupted as e:  # Ctrl-C: the finished rows are committed
        print(format_summary(e.summary), file=sys.stderr)
        return 130
    except RuntimeError as e:  # another scan writes to --out; the workers could not start
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0


def cmd_watch(args) -> int:
    from .predict import get_model
    from .video.live import format_summary, format_update, watch

    model = get_model(args.model, args.device, runtime=args.runtime, threads=args.threads)
    last = [0.0]

    def show(update):
        import time

        if time.time() - last[0] >= args.print_every:
            last[0] = time.time()
            print(format_update(update), flush=True)

    summary = watch(args.source, model, max_seconds=args.seconds, window=args.window, on_update=show)
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
    from .train import release

    meta = release(args.run, args.out, args.test, workers=args.workers, calibrate_on=args.calibrate_on,
                   tta=args.tta, half=args.half)
    print(json.dumps({k: meta.get(k) for k in ("version", "threshold", "temperature", "validation", "test")},
                     indent=2))
    return 0


def cmd_export(args) -> int:
    import numpy as np

    from .export import export_onnx
    from .predict import get_model
    from .runtime import OnnxModel

    model = get_model(args.model)
    path = export_onnx(model, args.onnx, opset=args.opset, dynamic_batch=not args.fixed_batch,
                       fold_bn=not args.no_fold_bn, half=args.half)
    om = OnnxModel(path)
    images = np.random.default_rng(0).integers(0, 256, (4, model.input_size, model.input_size, 3), np.uint8)
    diff = float(np.abs(om.logits(images) - model.logits(images)).max())
    tolerance = 0.05 if args.half else 1e-4  # float16 weights: about 3 significant digits
    print(json.dumps({"onnx": str(path), **om.describe(), "max_abs_logit_diff": diff, "tolerance": tolerance}))
    return 0 if diff < tolerance else 1


def cmd_serve(args) -> int:
    import importlib.util

    missing = [m for m in ("fastapi", "gradio", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: the web app needs the web extra ({', '.join(missing)} missing): "
              "pip install 'deepfake-detector[web]'", file=sys.stderr)
        return 2
    from .web import serve

    serve(model_path=args.model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          runtime=args.runtime, device=args.device, threads=args.threads)
    return 0


def cmd_models(args) -> int:
    from .models import list_models

    for name in list_models():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="deepfake-detector", description="Tell real faces from deepfakes.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on ROOT/{Train,Validation,Test}/{Fake,Real}")
    t.add_argument("--config", help="JSON config (see configs/); flags below override it")
    t.add_argument("--data")
    t.add_argument("--real-dir", action="append", help="a folder of real images (repeatable)")
    t.add_argument("--fake-dir", action="append", help="a folder of fake images (repeatable)")
    t.add_argument("--arch", help="see `deepfake-detector models`; torch ones need: pip install "
                   "'deepfake-detector[torch]'")
    t.add_argument("--pretrained", metavar="NAME|FILE",
                   help="torch architectures: imagenet (packaged weights, the default where a package ships them), "
                        "none, a known name (torchvision:mobilenet_v2, timm:deit_tiny_patch16_224...; downloaded "
                        "once) or a local .pt/.pth/.safetensors state dict")
    t.add_argument("--mode", choices=["finetune", "linear-probe"],
                   help="torch architectures: train everything, or only the head on a frozen backbone")
    t.add_argument("--synthesize-fakes", choices=["sbi", "none"],
                   help="sbi: real training faces become self-blended pseudo-fakes (Shiohara & Yamasaki 2022)")
    t.add_argument("--sbi-probability", type=float, metavar="P",
                   help="with --synthesize-fakes sbi: chance per real sample (default 0.5)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--batches-per-epoch", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    t.add_argument("--schedule", choices=["constant", "exponential", "step", "cosine"])
    t.add_argument("--balance", choices=["undersample", "weighted"])
    t.add_argument("--early-stopping", type=int, help="patience in epochs")
    t.add_argument("--workers", type=int)
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--no-cache", action="store_true")
    t.add_argument("--faces", action="store_true", help="crop the largest face of each image first")
    t.add_argument("--whole-if-no-face", action="store_true", help="with --faces: keep faceless images whole")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", choices=["cpu", "gpu"])
    t.add_argument("--out", help="run folder")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR where it stopped")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="metrics and a report on a labelled folder")
    e.add_argument("--data", action="append", required=True,
                   help="a folder with Fake/ and Real/, or a dataset root (its Test split); repeat to compare")
    _add_model_args(e)
    e.add_argument("--report-dir", help="write plots and index.html here")
    e.add_argument("--json", action="store_true", help="print one JSON object (a list for several --data)")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--limit", type=int, help="evaluate a seeded random subset of this size")
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images, folders and videos")
    p.add_argument("paths", nargs="+")
    _add_model_args(p)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--whole-if-no-face", action="store_true", help="with --faces: classify the whole image")
    p.add_argument("--all-faces", action="store_true", help="score every face, not only the largest (max wins)")
    p.add_argument("--frames", type=int, default=32, help="frames sampled evenly per video")
    p.add_argument("--every", type=int, help="sample every k-th frame instead")
    p.add_argument("--annotate", metavar="OUT.mp4", help="write the video with boxes and scores")
    p.add_argument("--timeline", metavar="OUT.png", help="plot the video's scores over time")
    p.set_defaults(func=cmd_predict)

    c = sub.add_parser("scan", help="classify a whole collection into a Parquet/CSV table; resumable")
    c.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folder (recursive), image or video file, glob pattern (quote it: 'clips/**/*.mp4'), "
                        "text file listing paths, or - (paths on standard input)")
    c.add_argument("--out", required=True, metavar="RESULTS",
                   help="results folder: Parquet parts (e.g. results.parquet) or CSV parts (a name ending .csv); "
                        "run again to resume")
    c.add_argument("--model", help="checkpoint (.npz) or exported model (.onnx); default: the shipped model")
    c.add_argument("--runtime", choices=["numpy", "onnx"], default="numpy",
                   help="onnx: run on onnxruntime (a .onnx --model always does)")
    c.add_argument("--faces", action="store_true", help="detect and crop the largest face of each image first")
    c.add_argument("--workers", type=int,
                   help="worker processes, one thread each (default: one per core; 0: in this process); "
                        "with --ray: model actors (default: one per CPU of the cluster)")
    c.add_argument("--batch-size", type=int, default=32, help="files per inference task")
    c.add_argument("--frames", type=int, default=32, help="frames sampled evenly per video")
    c.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: auto or HOST:PORT (needs the ray extra)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_scan)

    w = sub.add_parser("watch", help="analyse a camera, stream or file live")
    w.add_argument("--source", default="0", help="camera index, video file or stream URL")
    _add_model_args(w, with_faces=False)
    w.add_argument("--seconds", type=float, help="stop after this many seconds")
    w.add_argument("--window", type=int, default=30, help="frames in the rolling verdict")
    w.add_argument("--print-every", type=float, default=1.0, help="seconds between status lines")
    w.add_argument("--json", action="store_true", help="also print the summary as JSON")
    w.set_defaults(func=cmd_watch)

    d = sub.add_parser("demo", help="predict on a public-domain face photo (needs scikit-image)")
    d.add_argument("--model")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("release", help="ship a run's best checkpoint (weights only), tested once on Test")
    r.add_argument("--run", required=True, help="run folder holding best.npz")
    r.add_argument("--out", required=True, help="where to write the shipped model (.npz)")
    r.add_argument("--test", help="labelled folder or dataset root to evaluate once (its Test split)")
    r.add_argument("--calibrate-on", metavar="VAL_DIR",
                   help="refit temperature and threshold on this labelled Validation folder first")
    r.add_argument("--tta", choices=["flip"],
                   help="test-time augmentation: score each image with its mirror image (needs --calibrate-on)")
    r.add_argument("--half", action="store_true", help="with an .onnx --out: float16 weights (half the file)")
    r.add_argument("--workers", type=int, default=2)
    r.set_defaults(func=cmd_release)

    x = sub.add_parser("export", help="export a checkpoint to ONNX (needs: pip install onnx)")
    x.add_argument("--model", help="checkpoint (.npz); default: the model shipped with the package")
    x.add_argument("--onnx", required=True, metavar="OUT.onnx")
    x.add_argument("--opset", type=int, default=17)
    x.add_argument("--fixed-batch", action="store_true", help="batch dimension fixed at 1")
    x.add_argument("--no-fold-bn", action="store_true", help="keep BatchNormalization nodes")
    x.add_argument("--half", action="store_true", help="store the weights as float16: half the file, "
                   "logits within ~1e-3 relative")
    x.set_defaults(func=cmd_export)

    s = sub.add_parser("serve", help="the web app and HTTP API on this machine (needs the web extra)")
    _add_model_args(s, with_faces=False)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload accepted (MB)")
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("models", help="list the architectures")
    m.set_defaults(func=cmd_models)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .nn.backend import DeviceError, reuse_freed_memory

    if args.command in ("train", "evaluate", "predict", "scan", "release"):
        reuse_freed_memory()  # the same large buffers every batch: keep their pages (see nn.backend)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

