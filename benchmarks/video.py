"""Video benchmarks on the shared DFDC clips.

    python benchmarks/video.py                      # seconds per 10-s 1080p clip (last line)
    python benchmarks/video.py --watch              # analysed fps of `watch` on a 720p copy
    python benchmarks/video.py --decode             # grab/retrieve vs seeking for 32 frames
    python benchmarks/video.py --compare-detectors  # RetinaFace vs Haar (docs/faces.md)

Default mode: analyses each clip in ``<data>/videos`` at default settings (32 frames,
RetinaFace, ``--model`` checkpoint or an untrained ``df-cnn``), prints one line per clip with
the time split into decoding, face detection and classification, and as its last line
``seconds_per_clip=<median>``. Targets: < 5 s per 10-s 1080p clip; watch >= 10 fps at 720p.
Data: ``--data``, else ``$DEEPFAKE_DETECTOR_DATA``, else ``../shared/data`` from the project.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from deepfake_detector.cpu import cpu_line

ROOT = Path(__file__).resolve().parents[1]


def data_root(arg: str | None) -> Path:
    root = Path(arg or os.environ.get("DEEPFAKE_DETECTOR_DATA") or ROOT.parent / "shared" / "data")
    if not (root / "videos").is_dir():
        sys.exit(f"no videos folder under {root} (use --data)")
    return root


def clips(root: Path) -> list[Path]:
    found = sorted(p for p in (root / "videos").iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mov"))
    if not found:
        sys.exit(f"no video clips in {root / 'videos'}")
    return found


def get_model(path: str | None):
    from deepfake_detector.models import create_model, load

    return load(path) if path else create_model("df-cnn")


def warm_up(model, detector):
    """Build the ONNX session and touch the model once so the first clip is not penalised."""
    detector.detect(np.zeros((360, 640, 3), np.uint8))
    s = int(model.input_size)
    model.predict_proba(np.zeros((2, s, s, 3), np.uint8))


def bench_clips(args):
    from deepfake_detector.faces import get_detector
    from deepfake_detector.video import analyze_video

    model = get_model(args.model)
    detector = get_detector(args.detector)
    warm_up(model, detector)
    totals = []
    for path in clips(data_root(args.data)):
        for _ in range(args.repeat):
            r = analyze_video(path, model, detector=detector, n_frames=args.n_frames)
            t = r["timings"]
            if r["error"]:
                print(f"{path.name}: error {r['error']}")
                continue
            totals.append(t["total_s"])
            print(f"{path.name}: total={t['total_s']:.2f}s decode={t['decode_s']:.2f}s "
                  f"(waited {t['decode_wait_s']:.2f}s) "
                  f"detect={t['detect_s']:.2f}s classify={t['classify_s']:.2f}s "
                  f"frames={r['n_frames']} with_face={r['n_frames_with_faces']} "
                  f"{r['width']}x{r['height']} {r['duration']:.1f}s  -> {r['label']} "
                  f"p_fake={r['p_fake'] if r['p_fake'] is None else round(r['p_fake'], 3)} "
                  f"[{r['model'].get('arch')}, {r['model'].get('version')}, {r['detector']}]", flush=True)
    if not totals:
        sys.exit("no clip could be analysed")
    print(f"seconds_per_clip={statistics.median(totals):.3f}")


def downscale_to(src: Path, dst: Path, height: int = 720) -> tuple[int, float]:
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    w = int(round(cap.get(cv2.CAP_PROP_FRAME_WIDTH) * height / cap.get(cv2.CAP_PROP_FRAME_HEIGHT) / 2) * 2)
    out = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, height))
    n = 0
    while True:
        ok, fr = cap.read()
        if not ok:
            break
        out.write(cv2.resize(fr, (w, height), interpolation=cv2.INTER_AREA))
        n += 1
    out.release()
    cap.release()
    return n, fps


def bench_watch(args):
    from deepfake_detector.faces import get_detector
    from deepfake_detector.video import format_summary, watch

    model = get_model(args.model)
    detector = get_detector(args.detector)
    warm_up(model, detector)
    src = clips(data_root(args.data))[-1 if args.clip is None else args.clip]
    fps_all = []
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / f"{src.stem}_720p.mp4"
        t = time.perf_counter()
        n, fps = downscale_to(src, dst, 720)
        print(f"{src.name} -> 720p copy: {n} frames at {fps:.2f} fps in {time.perf_counter() - t:.1f}s")
        for _ in range(args.repeat):
            s = watch(str(dst), model, detector, max_seconds=args.max_seconds)
            print(format_summary(s), flush=True)
            fps_all.append(s["analysed_fps"])
    print(f"watch_fps={statistics.median(fps_all):.2f}")


def bench_decode(args):
    from deepfake_detector.video import sample_frames

    for k, path in enumerate(clips(data_root(args.data))):
        for method in ("grab", "seek"):
            if method == "seek" and args.quick and k > 0:
                continue
            t = time.perf_counter()
            n = sum(1 for _ in sample_frames(path, args.n_frames, method=method))
            print(f"{path.name}: {method:<4} {n} frames in {time.perf_counter() - t:.2f}s", flush=True)


# --- detector comparison ----------------------------------------------------------------
# Hand-checked regions where the (single) face of each clip lies in every frame, 1080p px.
CLIP_FACE_REGION = {"abofeumbvv.mp4": (860, 130, 1060, 340), "abqwwspghj.mp4": (740, 50, 1080, 350)}
# Hand-set face regions on scikit-image photos (a detection counts if its centre is inside).
SKIMAGE_FACES = {"astronaut": (160, 40, 290, 190), "camera": (180, 90, 270, 210)}
SKIMAGE_NO_FACE = ("coffee", "chelsea", "cat", "rocket", "hubble_deep_field", "immunohistochemistry",
                   "coins", "moon", "brick", "grass", "gravel", "clock", "colorwheel", "cell", "page",
                   "text", "horse", "logo")


def _rgb(img) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def _inside(face, region) -> bool:
    cx, cy = face.center
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]


def _pasted_set(faces_dir: Path, n: int, seed: int = 0):
    """DFDC face crops pasted at known places, random sizes, on 1280x720 backgrounds."""
    from skimage import data as skd

    rng = np.random.default_rng(seed)
    files = sorted((faces_dir / "Test" / "Real").glob("*.jpg"))[: n // 2]
    files += sorted((faces_dir / "Test" / "Fake").glob("*.jpg"))[: n - len(files)]
    textures = [_rgb(skd.brick()), _rgb(skd.grass()), _rgb(skd.gravel())]
    out = []
    for k, f in enumerate(files):
        kind = k % 4
        if kind == 0:
            bg = np.full((720, 1280, 3), rng.integers(40, 220, 3), np.uint8)
        elif kind == 1:
            bg = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
        else:
            bg = cv2.resize(textures[k % 3], (1280, 720))
        face = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        side = int(rng.integers(80, 300))
        x, y = int(rng.integers(0, 1280 - side)), int(rng.integers(0, 720 - side))
        bg[y: y + side, x: x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
        out.append((bg, (x, y, x + side, y + side), face))
    return out


def compare_detectors(args):
    from skimage import data as skd

    from deepfake_detector.faces import get_detector, iou
    from deepfake_detector.video import sample_frames

    root = data_root(args.data)
    names = ["retinaface", "haar"]
    dets = {n: get_detector(n) for n in names}
    for d in dets.values():
        d.detect(np.zeros((360, 640, 3), np.uint8))
    rows = {n: {} for n in names}

    def run(det, img):
        t = time.perf_counter()
        faces = det.detect(img)
        return faces, (time.perf_counter() - t) * 1000

    # 1. scikit-image photos: 2 with a face, the rest without
    for n, det in dets.items():
        found = missed = false = 0
        for name, region in SKIMAGE_FACES.items():
            faces, _ = run(det, _rgb(getattr(skd, name)()))
            hit = [f for f in faces if _inside(f, region)]
            found += bool(hit)
            missed += not hit
            false += len(faces) - min(len(hit), 1)
        for name in SKIMAGE_NO_FACE:
            faces, _ = run(det, _rgb(getattr(skd, name)()))
            false += len(faces)
        rows[n]["skimage"] = (found, missed, false)

    # 2. DFDC face crops pasted at known boxes (IoU > 0.5 counts) and the crops as they are
    pasted = _pasted_set(root / "dfdc-faces", args.n_pasted)
    for n, det in dets.items():
        found = missed = false = 0
        for img, box, _crop in pasted:
            faces, _ = run(det, img)
            hit = [f for f in faces if iou(f.box, box) > 0.5]
            found += bool(hit)
            missed += not hit
            false += len(faces) - min(len(hit), 1)
        rows[n]["pasted"] = (found, missed, false)
        found, framing = 0, []
        for _img, _box, crop in pasted:
            faces, _ = run(det, crop)
            found += bool(faces)
            if faces:
                f = max(faces, key=lambda f: f.area)
                framing.append((f.width / crop.shape[1], f.height / crop.shape[0],
                                f.center[0] / crop.shape[1], f.center[1] / crop.shape[0]))
        rows[n]["crops"] = (found, len(pasted) - found, None)
        rows[n]["framing"] = np.array(framing) if framing else None

    # 3. frames of the DFDC clips (one person each; hand-checked face regions)
    frames = []
    for clip in clips(root):
        region = CLIP_FACE_REGION.get(clip.name)
        for _i, _t, fr in sample_frames(clip, args.n_frames):
            frames.append((fr, region))
    for n, det in dets.items():
        found = missed = false = 0
        ms, ms_full = [], []
        for fr, region in frames:
            faces, dt = run(det, fr)
            ms.append(dt)
            hit = [f for f in faces if region is None or _inside(f, region)]
            found += bool(hit)
            missed += not hit
            false += len(faces) - min(len(hit), 1)
        rows[n]["frames"] = (found, missed, false)
        rows[n]["ms_640"] = statistics.median(ms)
        full = get_detector(n, max_side=None)
        for fr, _region in frames[:: max(1, len(frames) // 8)]:
            ms_full.append(run(full, fr)[1])
        rows[n]["ms_full"] = statistics.median(ms_full)

    n_sk = len(SKIMAGE_FACES)
    print(f"| detector | scikit-image photos ({n_sk} faces, {len(SKIMAGE_NO_FACE)} without): "
          f"found / missed / false | {len(pasted)} DFDC crops pasted on 1280x720: found / missed / false "
          f"| the same crops alone (224 px, face fills it): found | {len(frames)} DFDC frames 1080p: "
          f"found / missed / false | ms per 1080p frame (detect at 640) | ms per 1080p frame (full res) |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        r = rows[n]
        f3 = lambda t: f"{t[0]} / {t[1]} / {t[2]}"
        print(f"| {n} | {f3(r['skimage'])} | {f3(r['pasted'])} | {r['crops'][0]} / {len(pasted)} "
              f"| {f3(r['frames'])} | {r['ms_640']:.0f} | {r['ms_full']:.0f} |")
    fr = rows["retinaface"]["framing"]
    if fr is not None:
        med, p10, p90 = np.median(fr, 0), np.percentile(fr, 10, 0), np.percentile(fr, 90, 0)
        print(f"\nDFDC training crops framing (RetinaFace box / crop side, n={len(fr)}): "
              f"width {med[0]:.2f} (p10-p90 {p10[0]:.2f}-{p90[0]:.2f}), height {med[1]:.2f} "
              f"({p10[1]:.2f}-{p90[1]:.2f}), centre ({med[2]:.2f}, {med[3]:.2f}); "
              f"square_crop margin that reproduces it: ~{max(0.0, (1 / max(med[0], med[1]) - 1) / 2):.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="data root with videos/ and dfdc-faces/")
    ap.add_argument("--model", help="a model checkpoint (.npz); default: an untrained df-cnn")
    ap.add_argument("--detector", default="retinaface", choices=["retinaface", "haar"])
    ap.add_argument("--n-frames", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--watch", action="store_true", help="analysed fps of watch() on a 720p copy")
    mode.add_argument("--decode", action="store_true", help="grab/retrieve vs seeking")
    mode.add_argument("--compare-detectors", action="store_true", help="RetinaFace vs Haar")
    ap.add_argument("--clip", type=int, default=None, help="--watch: which clip (index), default the last")
    ap.add_argument("--max-seconds", type=float, default=None, help="--watch: stop after this long")
    ap.add_argument("--n-pasted", type=int, default=100, help="--compare-detectors: pasted DFDC crops")
    ap.add_argument("--quick", action="store_true", help="--decode: seek only on the first clip")
    args = ap.parse_args(argv)
    print(cpu_line(), flush=True)  # every speed figure names its CPU
    if args.watch:
        bench_watch(args)
    elif args.decode:
        bench_decode(args)
    elif args.compare_detectors:
        compare_detectors(args)
    else:
        bench_clips(args)


if __name__ == "__main__":
    main()
