"""The commands that judge files: ``evaluate``, ``predict``, ``scan``, ``watch`` and ``demo``, each
command's flags beside its call."""

from __future__ import annotations

import json
import sys

from .common import add_limit_args, add_model_args, detector, load_model, lost_inputs


def add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="metrics and a report on a labelled folder")
    e.add_argument("--data", action="append", required=True,
                   help="a folder with Fake/ and Real/, or a dataset root (its Test split); repeat to compare")
    add_model_args(e)
    e.add_argument("--report-dir", help="write plots and index.html here")
    e.add_argument("--json", action="store_true", help="print one JSON object (a list for several --data)")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--limit", type=int, help="evaluate a seeded random subset of this size")
    add_limit_args(e)
    e.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from ..evaluate import evaluate, format_evaluation

    model = load_model(args)
    results = []
    for i, d in enumerate(args.data):
        report = None
        if args.report_dir:
            report = args.report_dir if len(args.data) == 1 else f"{args.report_dir}/{i}"
        results.append(evaluate(model, d, faces=args.faces, report_dir=report, workers=args.workers,
                                limit=args.limit, detector=detector(args)))
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    else:
        print(format_evaluation(results))
    return 0


def add_predict(sub) -> None:
    from ..options import DEFAULT_N_FRAMES
    from ..results import FORMATS

    p = sub.add_parser("predict", help="classify images, folders and videos")
    p.add_argument("paths", nargs="+")
    add_model_args(p)
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table and csv print each row as it comes; json prints one list at the end")
    p.add_argument("--whole-if-no-face", action="store_true",
                   help="an image without a face is scored whole (default: NoFace)")
    p.add_argument("--all-faces", action="store_true", help="score every face, not only the largest (max wins)")
    p.add_argument("--frames", type=int, default=DEFAULT_N_FRAMES, help="frames sampled evenly per video")
    p.add_argument("--every", type=int, help="sample every k-th frame instead")
    p.add_argument("--annotate", metavar="OUT.mp4", help="write the video with boxes and scores")
    p.add_argument("--timeline", metavar="OUT.png", help="plot the video's scores over time")
    add_limit_args(p)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from ..data.media import walk_media
    from ..predict import PredictOptions, predict_paths
    from ..results import RowWriter, is_error, printable
    from ..video.render import write_video_outputs

    model = load_model(args)
    files = walk_media(args.paths)
    writer = RowWriter(args.format)
    failed = videos_done = 0
    options = PredictOptions(faces=args.faces, whole_if_no_face=args.whole_if_no_face, all_faces=args.all_faces,
                             n_frames=args.frames, every=args.every, detector=detector(args))
    for row in predict_paths(files, model, options):
        failed += is_error(row)
        if row["kind"] == "video" and row.get("p_fake") is not None:
            write_video_outputs(row, args.annotate, args.timeline, videos_done)
            videos_done += 1
        writer.write(row)
    writer.close()
    if files.ignored:
        print(f"note: {printable(files.ignored.describe())}", file=sys.stderr)
    return 1 if lost_inputs(files.ignored) or failed else 0


def add_scan(sub) -> None:
    from ..options import DEFAULT_N_FRAMES
    from ..scan.infer import DEFAULT_BATCH_SIZE

    c = sub.add_parser("scan", help="classify a whole collection into a Parquet/CSV table; resumable")
    c.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folder (recursive), image or video file, glob pattern (quote it: 'clips/**/*.mp4'), "
                        "text file listing paths, or - (paths on standard input)")
    c.add_argument("--out", required=True, metavar="RESULTS",
                   help="results folder: Parquet parts (e.g. results.parquet) or CSV parts (a name ending .csv); "
                        "run again to resume")
    add_model_args(c, with_device=False)
    c.add_argument("--workers", type=int,
                   help="worker processes, one thread each (default: one per core; 0: in this process); "
                        "with --ray: model actors (default: one per CPU of the cluster)")
    c.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="files per inference task")
    c.add_argument("--frames", type=int, default=DEFAULT_N_FRAMES, help="frames sampled evenly per video")
    c.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: auto or HOST:PORT (needs the ray extra)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    add_limit_args(c)
    c.set_defaults(func=cmd_scan)


def cmd_scan(args) -> int:
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None or importlib.util.find_spec("pandas") is None:
        print("error: scanning writes Parquet/CSV with pyarrow: pip install 'deepfake-detector[scan]'",
              file=sys.stderr)
        return 2
    if args.ray and importlib.util.find_spec("ray") is None:
        print("error: --ray needs Ray Data: pip install 'deepfake-detector[ray]'", file=sys.stderr)
        return 2
    from ..scan import ScanInterrupted, format_summary, scan

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


def add_watch(sub) -> None:
    w = sub.add_parser("watch", help="analyse a camera, stream or file live")
    w.add_argument("--source", default="0", help="camera index, video file or stream URL")
    add_model_args(w, with_faces=False)
    w.add_argument("--seconds", type=float, help="stop after this many seconds")
    w.add_argument("--window", type=int, default=30, help="frames in the rolling verdict")
    w.add_argument("--print-every", type=float, default=1.0, help="seconds between status lines")
    w.add_argument("--json", action="store_true", help="also print the summary as JSON")
    w.set_defaults(func=cmd_watch)


def cmd_watch(args) -> int:
    from ..video.live import format_summary, format_update, watch

    model = load_model(args)
    last = [0.0]

    def show(update):
        import time

        if time.time() - last[0] >= args.print_every:
            last[0] = time.time()
            print(format_update(update), flush=True)

    summary = watch(args.source, model, detector=detector(args), max_seconds=args.seconds, window=args.window,
                    on_update=show)
    print(format_summary(summary))
    if args.json:
        print(json.dumps(summary))
    return 0


def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="predict on a public-domain face photo (needs scikit-image)")
    d.add_argument("--model")
    d.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    """Predict on the public-domain astronaut photo that ships inside scikit-image."""
    try:
        import skimage
    except ImportError:
        print("error: the demo photo comes with scikit-image: pip install 'deepfake-detector[demo]'",
              file=sys.stderr)
        return 2
    from pathlib import Path

    from . import main  # the whole command line, as the user would type it

    photo = Path(skimage.__file__).parent / "data" / "astronaut.png"
    return main(["predict", str(photo), "--faces", *(["--model", args.model] if args.model else [])])

