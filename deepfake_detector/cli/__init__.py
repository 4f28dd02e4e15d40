"""``deepfake-detector``: parses arguments and calls the library functions, nothing more.

One module per family of commands, each command's flags beside its call: :mod:`.training`
(train, train-head, fuse, release, export), :mod:`.analysis` (evaluate, predict, scan, watch,
demo), :mod:`.service` (serve, models, fetch-encoder); :mod:`.common` holds the flags they share.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from . import analysis, service, training
from .common import apply_limits

# the subcommands, in --help order
PARSERS = (training.add_train, analysis.add_evaluate, analysis.add_predict, analysis.add_scan, analysis.add_watch,
           analysis.add_demo, training.add_release, training.add_export, service.add_serve, service.add_models,
           service.add_fetch_encoder, training.add_train_head, training.add_fuse)


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
    from ..nn.backend import DeviceError, reuse_freed_memory
    from ..results import printable
    from ..video.read import VideoError

    if args.command in ("train", "evaluate", "predict", "scan", "release"):
        reuse_freed_memory()  # the same large buffers every batch: keep their pages (see nn.backend)
    try:
        apply_limits(args)
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError, DeviceError, VideoError) as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 2

