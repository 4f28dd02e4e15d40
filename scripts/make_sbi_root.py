"""A dataset root of self-blended images (SBI) made once from a root's real faces, so that
a head on the frozen CLIP encoder can learn blending traces from cached features (the CNN
recipe blends on the fly instead; a head trains on features computed once).

For each of Train and Validation, up to ``--cap`` reals of the source root (the same fixed
choice as a config's ``max_per_class``) are framed as the models frame them (``--faces``: the
largest face cropped, no margin, at 224 px, written as ``Real/<name>.png``; otherwise the crop
as it is, hard-linked, so its cached features are found again), and each one's self-blend
(Shiohara & Yamasaki 2022, landmark-free
elliptic masks; :func:`deepfake_detector.data.sbi.self_blend`, seeded by the file name) as
``Fake/<name>.png``. Test holds the source root's own Test split, reals and fakes, framed
the same way: what a head trained on the blends is measured on. No fake of the source root
is read for Train or Validation. The output is derived data: write it outside the project.

    python scripts/make_sbi_root.py --root ../shared/data/dfdc-faces --out /tmp/sbi/sbi-dfdc --cap 1500
    python scripts/make_sbi_root.py --root ../shared/data/faces-wild --faces --out /tmp/sbi/sbi-wild --cap 1500
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from deepfake_detector.data import ImageDecodeError, load_image
from deepfake_detector.data.roots import capped, data_roots, discover_roots
from deepfake_detector.data.sbi import self_blend
from deepfake_detector.faces.crop import frame_image

SIZE = 224  # the CLIP encoder's input: a face crop saved at it reaches the encoder unchanged


def file_seed(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="a dataset root (Train/Validation/Test of Real and Fake)")
    ap.add_argument("--out", required=True, help="the root to write (outside the project)")
    ap.add_argument("--faces", action="store_true", help="crop the largest face first (photos)")
    ap.add_argument("--cap", type=int, default=1500, help="at most this many reals per split (Train, Validation)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    detector = None
    if args.faces:
        from deepfake_detector.faces.detect import get_detector

        detector = get_detector()
    train, val, test = discover_roots(data_roots([{"root": args.root, "name": Path(args.root).name}]),
                                      seed=args.seed)
    out = Path(args.out)
    jobs = []
    for split, samples in (("Train", train), ("Validation", val)):
        for s in capped([s for s in samples if s.label == 0], args.cap):
            jobs.append((s.path, split, "Real", True))
    jobs += [(s.path, "Test", "Fake" if s.label else "Real", False) for s in test]
    for split in ("Train", "Validation", "Test"):
        for label in ("Real", "Fake"):
            (out / split / label).mkdir(parents=True, exist_ok=True)

    def one(job) -> str | None:
        path, split, label, blend = job
        src = Path(path)
        if not args.faces:  # a crop as it is: the same bytes, so its cached features are the source's
            same = out / split / label / src.name
            if not same.exists():
                try:
                    os.link(src, same)  # a hard link where it can (a symbolic one would be refused as data)
                except OSError:
                    shutil.copyfile(src, same)
        if not (blend or args.faces):
            return None
        try:
            img = load_image(path)
        except ImageDecodeError as e:
            return f"{path}: {e}"
        face = frame_image(img, "face", SIZE, detector) if args.faces else img
        if args.faces:
            Image.fromarray(face).save(out / split / label / f"{src.stem}.png")
        if blend:
            fake, _ = self_blend(face, file_seed(src.stem, args.seed))
            Image.fromarray(fake).save(out / split / "Fake" / f"sbi_{src.stem}.png")
        return None

    with ThreadPoolExecutor(2) as pool:
        errors = [e for e in pool.map(one, jobs) if e]
    for e in errors:
        print(e, file=sys.stderr)
    print({f"{s}/{c}": len(list((out / s / c).iterdir()))
           for s in ("Train", "Validation", "Test") for c in ("Real", "Fake")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
