"""What the decoding gate costs: ``load_image`` (the gate, then simplejpeg in strict mode for
JPEGs) against a bare OpenCV decode of the same files, side by side in one run.

    python benchmarks/decode.py [--data ../shared/data] [--n 2000] [--repeat 5]

Each repeat decodes the same files both ways, in alternating order; the last line reads
``gate_ratio=<gate / bare OpenCV, median over repeats>`` (below 1: the gate is faster).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepfake_detector.cpu import cpu_line
from deepfake_detector.data import load_image  # noqa: E402


def bare_opencv(path: str) -> np.ndarray:
    bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def timed(fn, paths) -> float:
    t = time.perf_counter()
    for p in paths:
        fn(p)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(cpu_line(), flush=True)  # every speed figure names its CPU
    files = sorted(str(p) for p in Path(args.data).rglob("*.jpg"))
    if not files:
        sys.exit(f"no .jpg files under {args.data}")
    paths = random.Random(0).sample(files, min(args.n, len(files)))
    cv2.setNumThreads(1)
    gate, bare = [], []
    for r in range(args.repeat):
        order = [(gate, load_image), (bare, bare_opencv)]
        for times, fn in order if r % 2 == 0 else order[::-1]:
            times.append(timed(fn, paths))
    g, b = statistics.median(gate), statistics.median(bare)
    print(f"{len(paths)} JPEGs, median of {args.repeat}: gate {1000 * g / len(paths):.3f} ms/image, "
          f"bare OpenCV {1000 * b / len(paths):.3f} ms/image")
    print(f"gate_ratio={g / b:.3f}")


if __name__ == "__main__":
    main()
