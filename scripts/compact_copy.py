#!/usr/bin/env python3
"""A compact copy of a dataset for moving it to a remote (GPU) machine.

Every image of ROOT/{Train,Validation}/{Fake,Real} resized to SIZE x SIZE (INTER_AREA, as
the loader resizes) and stored as WebP, optionally at most MAX_FAKE training fakes (a
seeded random choice). The copy of dfdc-faces used for the GPU runs in the README (seed-cnn
with the original recipe, MobileNetV2 on a GPU) is

    python scripts/compact_copy.py ../shared/data/dfdc-faces /tmp/dfdc128 --max-train-fake 13000

(about 42 MB instead of 223 MB). Test is not copied: models are tested on the original.
Re-encoding adds a little compression; refit the threshold and temperature on the original
Validation split when releasing (`deepfake-detector release --calibrate-on`).
"""

from __future__ import annotations

import argparse
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2

EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--quality", type=int, default=85, help="WebP quality")
    ap.add_argument("--max-train-fake", type=int, help="keep at most this many training fakes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    src, dst = Path(args.root), Path(args.out)
    jobs = []
    for split in ("Train", "Validation"):
        for cls in ("Fake", "Real"):
            files = sorted(f for f in (src / split / cls).iterdir() if f.suffix.lower() in EXTS)
            if split == "Train" and cls == "Fake" and args.max_train_fake:
                random.Random(args.seed).shuffle(files)
                files = sorted(files[:args.max_train_fake])
            (dst / split / cls).mkdir(parents=True, exist_ok=True)
            jobs += [(f, dst / split / cls / f"{f.stem}.webp") for f in files]

    def one(job):
        f, out = job
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            return f
        img = cv2.resize(img, (args.size, args.size), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out), img, [cv2.IMWRITE_WEBP_QUALITY, args.quality])
        return None

    with ThreadPoolExecutor(args.workers) as ex:
        failed = [f for f in ex.map(one, jobs) if f is not None]
    print(f"{len(jobs) - len(failed)} images written to {dst}; {len(failed)} unreadable skipped")


if __name__ == "__main__":
    main()
