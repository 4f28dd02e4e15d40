"""How often does a model call real, out-of-domain photos fake?

DFDC's real faces are video frames of paid actors. A detector is also asked about ordinary
photographs, and its users' most common complaint is a real photo flagged as fake. This
script scores every face in a folder of real photos (``--faces --all-faces``: each face
detected, cropped as the model was trained, scored on its own) and prints the share flagged
Fake at the model's validation-chosen threshold.

Any folder of photos you know to be real will do (``--photos DIR``). ``--fetch DIR``
first fills DIR with a small public set that ships inside package archives (needs pip
and npm with a network): the six demo photos of the ``@vladmandic/face-api`` npm package,
``t1.jpg`` and ``Tom_Hanks_54745.png`` from the ``insightface`` 0.7.3 source archive, and
scikit-image's astronaut (Eileen Collins, NASA, public domain). Nothing is copied into
the project.

    python scripts/real_photos_check.py --fetch /tmp/real-photos
    python scripts/real_photos_check.py --photos /tmp/real-photos --model runs/x/best.npz
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


def fetch(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(["npm", "pack", "@vladmandic/face-api@1.7.15", "--pack-destination", str(tmp)],
                       check=True, capture_output=True)
        with tarfile.open(next(tmp.glob("vladmandic-face-api-*.tgz"))) as tar:
            for m in tar.getmembers():
                if m.name.startswith("package/demo/sample") and m.name.endswith(".jpg"):
                    (dest / Path(m.name).name).write_bytes(tar.extractfile(m).read())
        subprocess.run([sys.executable, "-m", "pip", "download", "insightface==0.7.3", "--no-deps",
                        "-d", str(tmp), "-q"], check=True)  # a source archive only: nothing is built
        with tarfile.open(tmp / "insightface-0.7.3.tar.gz") as tar:
            for name in ("t1.jpg", "Tom_Hanks_54745.png"):
                src = tar.extractfile(f"insightface-0.7.3/insightface/data/images/{name}")
                with open(dest / name, "wb") as f:
                    shutil.copyfileobj(src, f)
    try:
        import skimage.data
        from PIL import Image

        Image.fromarray(skimage.data.astronaut()).save(dest / "astronaut.png")
    except ImportError:
        print("scikit-image not installed: the astronaut photo is left out", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", help="folder of real photos")
    ap.add_argument("--fetch", metavar="DIR", help="download the public sample set into DIR, then score it")
    ap.add_argument("--model", help="checkpoint or .onnx; default: the shipped model")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = ap.parse_args(argv)
    if args.fetch:
        fetch(Path(args.fetch))
    folder = args.fetch or args.photos
    if not folder:
        ap.error("give --photos DIR or --fetch DIR")

    from deepfake_detector.models import load
    from deepfake_detector.predict import predict_paths

    model = load(args.model, threads=1)
    faces = []
    for row in predict_paths([folder], model, faces=True, all_faces=True):
        if row.get("error"):
            print(f"{row['path']}: {row['error']}", file=sys.stderr)
        for f in row.get("faces") or []:
            faces.append({"photo": Path(row["path"]).name, "box": f["box"], "p_fake": round(f["score"], 4)})
    t = model.threshold
    flagged = [f for f in faces if f["p_fake"] >= t]
    scores = sorted(f["p_fake"] for f in faces)
    summary = {"model": model.describe(), "threshold": t, "faces": len(faces), "flagged_fake": len(flagged),
               "false_positive_rate": len(flagged) / len(faces) if faces else None,
               "median_p_fake": scores[len(scores) // 2] if scores else None, "per_face": faces}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for f in faces:
            print(f"{f['photo']:<24} p_fake {f['p_fake']:.3f} {'FAKE' if f['p_fake'] >= t else 'real'}")
        print(f"{len(flagged)} of {len(faces)} real faces flagged Fake at threshold {t:.3f} "
              f"(false-positive rate {summary['false_positive_rate']:.2f}; median P(fake) "
              f"{summary['median_p_fake']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
