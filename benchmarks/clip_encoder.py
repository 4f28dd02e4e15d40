"""The CLIP encoder's cost per image and its agreement, for each file it can run: the
original int8 file (u8s8 products: exact only with VNNI) and its exact u8u8 rewrite, side by
side in one run, one image per call, one thread; and which one the start-up check picks.

    python benchmarks/clip_encoder.py --n 16 --repeat 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from deepfake_detector.cpu import cpu_line
from deepfake_detector.models.clip.encoder import ClipEncoder, probe_input


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16, help="images per repeat")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    print(cpu_line(), flush=True)  # every speed figure names its CPU
    rng = np.random.default_rng(0)
    xs = [probe_input() + rng.normal(0, 0.3, (1, 3, 224, 224)).astype(np.float32) for _ in range(args.n)]
    encoders = {k: ClipEncoder(threads=args.threads, kernel=k) for k in ("original", "exact")}
    out, ms = {}, {}
    for name, e in encoders.items():
        e.embed(xs[0])  # warm-up
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            out[name] = np.concatenate([e.embed(x) for x in xs])
            times.append((time.perf_counter() - t) / len(xs) * 1000)
        ms[name] = float(np.median(times))
        print(f"{name:9s} ({e.kernel}): median {ms[name]:.1f} ms per image over {args.repeat} x {args.n}", flush=True)
    a, b = out["original"].astype(np.float64), out["exact"].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(f"original vs exact: max |delta| {np.abs(a - b).max():.3g}, min cosine {cos.min():.6f}")
    print(f"the start-up check picks: {ClipEncoder(threads=args.threads).kernel}")
    print(f"exact / original time: {ms['exact'] / ms['original']:.2f}x")


if __name__ == "__main__":
    main()
