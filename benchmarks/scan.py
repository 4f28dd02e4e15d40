"""Does the scanner scale with its workers, and does it cost anything over plain prediction?

Measures, in one run, on N real face crops (read in place from the data folder, never copied):
  (a) ``predict_paths`` (the CLI's ``predict``) in one process with the engine's default threads:
      images/s;
  (b) ``scan`` with ``--workers 1`` and (c) with ``--workers 2`` into fresh RESULTS folders:
      images/s end to end (file list, hashing, worker start-up, inference, Parquet parts).
Data: ``--data``, else ``$DEEPFAKE_DETECTOR_DATA/dfdc-faces``, else ``../shared/data/dfdc-faces``.
The files are read once beforehand so that every measurement finds them in the page cache.
The last line is ``scaling=<(c)/(b)> vs_predict=<(c)/(a)>``; the targets are scaling >= 1.7
(85% efficiency on two workers) and vs_predict >= 0.9.

    python benchmarks/scan.py --n 600 --model runs/default/best.npz
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from deepfake_detector.cpu import cpu_line
from deepfake_detector.data.media import kind_of
from deepfake_detector.models import load
from deepfake_detector.predict import predict_paths
from deepfake_detector.scan import scan

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("DEEPFAKE_DETECTOR_DATA") or PROJECT_ROOT.parent / "shared" / "data") / "dfdc-faces"


def pick_images(root: Path, n: int) -> list[str]:
    """The first ``n`` images of the data folder in sorted order (Test, Validation, then Train)."""
    out = []
    for split in ("Test", "Validation", "Train"):
        for label in ("Fake", "Real"):
            d = root / split / label
            if d.is_dir():
                out += [str(p) for p in sorted(d.iterdir()) if kind_of(p) == "image"]
        if len(out) >= n:
            break
    if len(out) < n:
        raise SystemExit(f"only {len(out)} images under {root}, asked for {n}")
    return out[:n]


def measure_predict(paths: list[str], model_path, batch_size: int) -> float:
    model = load(model_path)
    t0 = time.perf_counter()
    n = sum(1 for row in predict_paths(paths, model, batch_size=batch_size) if row.get("label") != "Error")
    dt = time.perf_counter() - t0
    assert n == len(paths), f"{len(paths) - n} files failed"  # a crop without a face is NoFace, not a failure
    return len(paths) / dt


def measure_scan(listing: Path, out: Path, model_path, workers: int, batch_size: int, n: int) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    s = scan(listing, out, model_path=model_path, workers=workers, batch_size=batch_size, progress=False)
    assert s["scanned"] + s["duplicates"] == n and s["failed"] == 0, s  # byte-identical copies: scanned once
    return n / s["elapsed_s"], s


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="images to scan")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="dfdc-faces folder")
    ap.add_argument("--model", help="checkpoint (.npz or .onnx); default: the shipped model")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    print(cpu_line(), flush=True)  # every speed figure names its CPU

    paths = pick_images(Path(args.data), args.n)
    for p in paths:  # into the page cache, so no measurement pays for the first read
        Path(p).read_bytes()
    model = load(args.model)
    d = model.describe()
    print(f"files: {len(paths)} images from {args.data}; model {d['arch']} ({d['version']}), input {d['input_size']}; "
          f"{os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory(prefix="dfd-scan-bench-") as tmp:
        listing = Path(tmp) / "files.txt"
        listing.write_text("".join(p + "\n" for p in paths))
        raw = measure_predict(paths, args.model, args.batch_size)
        print(f"predict_paths, one process, default threads: {raw:.1f} images/s")
        rates = {}
        for w in (1, 2):
            rates[w], s = measure_scan(listing, Path(tmp) / f"w{w}.parquet", args.model, w, args.batch_size, len(paths))
            print(f"scan --workers {w}: {rates[w]:.1f} images/s ({s['elapsed_s']:.1f} s end to end)")
    print(f"scaling={rates[2] / rates[1]:.3f} vs_predict={rates[2] / raw:.3f}")


if __name__ == "__main__":
    main()
