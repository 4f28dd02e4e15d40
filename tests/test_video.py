"""Reading, sampling, analysing and rendering videos the tests write themselves (and the
shared DFDC clips when present)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from deepfake_detector.faces import get_detector, iou
from deepfake_detector.models import Predictor
from deepfake_detector.results import confidence_level
from deepfake_detector.video import (
    VideoError,
    aggregate,
    analyze_video,
    annotate_video,
    confident_strategy,
    flicker,
    open_video,
    plot_timeline,
    sample_frames,
    sample_indices,
    smooth,
)

skdata = pytest.importorskip("skimage.data")

ASTRO_FACE = (175, 55, 275, 180)  # the astronaut's face in skimage.data.astronaut(), by eye
ASTRO_PATCH = (130, 10, 320, 230)  # the head with some hair and shoulders
W, H = 480, 360
FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "XVID", ".mov": "mp4v", ".webm": "VP80"}

RESULT_KEYS = {"path", "kind", "p_fake", "label", "confidence", "aggregation", "p_fake_mean",
               "p_fake_confident", "n_frames", "n_frames_with_faces", "fps", "duration", "flicker",
               "timeline_smoothed", "frames", "error"}


def write_video(path, frames, fps=12.0):
    """Write RGB frames with cv2.VideoWriter; the codec follows the extension."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[path.suffix]), fps, (w, h))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV cannot write {path.suffix}")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def head(scale=0.8):
    x1, y1, x2, y2 = ASTRO_PATCH
    p = skdata.astronaut()[y1:y2, x1:x2]
    return cv2.resize(p, (round(p.shape[1] * scale), round(p.shape[0] * scale)), interpolation=cv2.INTER_AREA)


def face_frames(n=24, scale=0.8, two=False):
    """Frames with the astronaut's head drifting right; returns (frames, expected face boxes)."""
    hp = head(scale)
    hp2 = (head(0.55) * 0.6).astype(np.uint8)  # a smaller, darker second face
    frames, boxes = [], []
    for i in range(n):
        img = np.full((H, W, 3), (70, 110, 140), np.uint8)
        x, y = 30 + 3 * i, 60
        img[y: y + hp.shape[0], x: x + hp.shape[1]] = hp
        if two:
            img[150: 150 + hp2.shape[0], 330: 330 + hp2.shape[1]] = hp2
        fx1, fy1, fx2, fy2 = ASTRO_FACE
        px, py = ASTRO_PATCH[:2]
        boxes.append((x + (fx1 - px) * scale, y + (fy1 - py) * scale, x + (fx2 - px) * scale,
                      y + (fy2 - py) * scale))
        frames.append(img)
    return frames, boxes


def index_frames(n=40):
    """Plain frames whose grey level encodes their index (5 * index)."""
    return [np.full((48, 64, 3), 5 * i, np.uint8) for i in range(n)]


class StubModel(Predictor):
    """The classifier interface, scoring each crop by a fixed value or its mean brightness."""

    input_size = 32
    threshold = 0.5

    def __init__(self, value=0.9):
        self.value = value
        self.calls = []

    def predict_proba(self, images, batch_size=64):
        images = np.asarray(images)
        assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (32, 32, 3)
        self.calls.append(images.shape)
        if self.value == "brightness":
            return images.reshape(len(images), -1).mean(axis=1) / 255.0
        return np.full(len(images), self.value)

    def describe(self):
        return {"arch": "stub", "version": "test"}


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    frames, boxes = face_frames()
    return write_video(tmp_path_factory.mktemp("v") / "face.mp4", frames), boxes


@pytest.fixture(scope="module")
def detector():
    return get_detector("retinaface")


# --- reading and sampling ---------------------------------------------------------------------
def test_sample_indices():
    assert sample_indices(300, 32)[:3] == [0, 10, 19] and sample_indices(300, 32)[-1] == 299
    assert len(sample_indices(300, 32)) == 32
    assert sample_indices(10, 32) == list(range(10))
    assert sample_indices(10, None, every=3) == [0, 3, 6, 9]
    assert sample_indices(9, 3) == [0, 4, 8]
    assert sample_indices(0, 32) == []
    with pytest.raises(ValueError):
        sample_indices(10, None, every=0)


def test_open_video_info(tmp_path):
    path = write_video(tmp_path / "a.mp4", index_frames(40), fps=20.0)
    with open_video(path) as v:
        info = v.info
    assert (info.frame_count, info.width, info.height) == (40, 64, 48)
    assert info.fps == pytest.approx(20.0)
    assert info.duration == pytest.approx(2.0)


@pytest.mark.parametrize("method", ["grab", "seek"])
def test_sample_frames_evenly_and_every(tmp_path, method):
    path = write_video(tmp_path / "idx.avi", index_frames(40), fps=10.0)  # MJPG: every frame a keyframe
    got = list(sample_frames(path, n_frames=8, method=method))
    assert [i for i, _, _ in got] == sample_indices(40, 8)
    assert got[0][0] == 0 and got[-1][0] == 39
    for i, t, frame in got:
        assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
        assert t == pytest.approx(i / 10.0)
        assert abs(float(frame.mean()) - 5 * i) < 4  # the content is that frame's
    every = list(sample_frames(path, every=7, method=method))
    assert [i for i, _, _ in every] == [0, 7, 14, 21, 28, 35]
    assert len(list(sample_frames(path, n_frames=100))) == 40


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".mkv", ".mov", ".webm"])
def test_formats(tmp_path, ext):
    path = write_video(tmp_path / f"f{ext}", index_frames(20), fps=10.0)
    got = list(sample_frames(path, n_frames=5))
    assert len(got) == 5
    assert all(f.shape == (48, 64, 3) for _, _, f in got)


def test_open_video_errors(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.avi"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for p in (broken, text, empty, tmp_path / "missing.mp4", tmp_path):
        with pytest.raises(VideoError):
            open_video(p)
    with pytest.raises(VideoError):
        next(sample_frames(text))


# --- aggregation and temporal consistency ------------------------------------------------------
def test_confident_strategy_fake_branch():
    # 32 frames, 14 confidently fake: 14 > 32 // 2.5 = 12 and 14 > 11 -> mean of the fakes
    scores = [0.9] * 14 + [0.5] * 18
    assert confident_strategy(scores) == pytest.approx(0.9)
    assert aggregate(scores, "mean") == pytest.approx((14 * 0.9 + 18 * 0.5) / 32)
    # 12 confident fakes are not more than 12: the plain mean
    scores = [0.9] * 12 + [0.5] * 20
    assert confident_strategy(scores) == pytest.approx((12 * 0.9 + 20 * 0.5) / 32)
    # few frames: 8 of 10 above 0.8 but not more than 11 -> the plain mean
    assert confident_strategy([0.9] * 8 + [0.1] * 2) == pytest.approx(0.74)


def test_confident_strategy_real_branch_and_errors():
    # 28 of 30 below 0.2 (> 0.9 * 30 = 27) -> mean of those
    assert confident_strategy([0.1] * 28 + [0.5] * 2) == pytest.approx(0.1)
    # 27 of 30 is not more than 27 -> plain mean
    assert confident_strategy([0.1] * 27 + [0.5] * 3) == pytest.approx(0.14)
    assert confident_strategy([0.3]) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        confident_strategy([])
    with pytest.raises(ValueError):
        aggregate([0.5], "vote")


def test_smooth_flicker_confidence():
    s = [0.1, 0.9, 0.1, 0.1, 0.8, 0.8, 0.8]
    assert smooth(s, 3) == pytest.approx([0.5, 0.1, 0.1, 0.1, 0.8, 0.8, 0.8])
    assert smooth(s, 1) == pytest.approx(s)
    assert smooth([0.0, 1.0, 0.5], 3, "mean") == pytest.approx([0.5, 0.5, 0.75])
    assert flicker([0.2, 0.4, 0.1]) == pytest.approx(0.25)
    assert flicker([0.5]) is None
    assert [confidence_level(p) for p in (0.85, 0.15, 0.8, 0.7, 0.35, 0.5, None)] == \
        ["HIGH", "HIGH", "MEDIUM", "MEDIUM", "MEDIUM", "LOW", None]


# --- analysis -----------------------------------------------------------------------------------
def test_analyze_face_video(face_video, detector):
    path, boxes = face_video
    model = StubModel(0.9)
    r = analyze_video(path, model, detector=detector, n_frames=8)
    assert RESULT_KEYS <= set(r)
    json.dumps(r.to_dict())  # JSON-serialisable as a dict
    assert r["kind"] == "video" and r["error"] is None
    assert r["n_frames"] == 8 and len(r["frames"]) == 8
    assert r["n_frames_with_faces"] == 8
    assert model.calls == [(8, 32, 32, 3)]  # one batched call for all faces
    assert r["p_fake"] == pytest.approx(0.9) and r["label"] == "Fake" and r["confidence"] == "HIGH"
    assert r["aggregation"] == "confident" and r["p_fake_mean"] == pytest.approx(0.9)
    assert r["flicker"] == pytest.approx(0.0)
    assert r["fps"] == pytest.approx(12.0) and r["duration"] == pytest.approx(2.0)
    assert len(r["timeline_smoothed"]) == 8
    for fr in r["frames"]:
        assert fr["score"] == pytest.approx(0.9)
        (face,) = fr["faces"]
        assert iou(face["box"], boxes[fr["index"]]) > 0.5
        assert 0 < face["det_score"] <= 1
    assert [fr["index"] for fr in r["frames"]] == sample_indices(24, 8)


def test_analyze_every_k_and_real_label(face_video, detector):
    path, _ = face_video
    r = analyze_video(path, StubModel(0.2), detector=detector, every=6, aggregation="mean")
    assert [fr["index"] for fr in r["frames"]] == [0, 6, 12, 18]
    assert r["label"] == "Real" and r["p_fake"] == pytest.approx(0.2) and r["aggregation"] == "mean"


def test_analyze_frame_score_is_max_over_faces(tmp_path, detector):
    frames, _ = face_frames(n=6, two=True)
    path = write_video(tmp_path / "two.avi", frames)
    r = analyze_video(path, StubModel("brightness"), detector=detector, n_frames=3, all_faces=True)
    assert r["error"] is None and r["n_frames"] == 3
    for fr in r["frames"]:
        assert len(fr["faces"]) == 2
        assert fr["score"] == pytest.approx(max(f["score"] for f in fr["faces"]))
    one = analyze_video(path, StubModel("brightness"), detector=detector, n_frames=3)
    assert all(len(fr["faces"]) == 1 for fr in one["frames"])


def test_analyze_no_face(tmp_path, detector):
    rng = np.random.default_rng(0)
    frames = [np.full((H, W, 3), 120, np.uint8)] * 5 + [rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                                                       for _ in range(5)]
    path = write_video(tmp_path / "noface.mp4", frames)
    model = StubModel(0.9)
    r = analyze_video(path, model, detector=detector, n_frames=6)
    json.dumps(r.to_dict())
    assert r["label"] == "NoFace" and r["p_fake"] is None and r["confidence"] is None
    assert r["error"] is None and "no face" in r["message"]
    assert r["n_frames"] == 6 and r["n_frames_with_faces"] == 0
    assert all(fr["score"] is None and fr["faces"] == [] for fr in r["frames"])
    assert model.calls == []


def test_analyze_bad_files_give_error_results(tmp_path, detector):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    text = tmp_path / "readme.avi"
    text.write_text("not a video at all\n")
    for p in (broken, text, tmp_path / "missing.mov"):
        r = analyze_video(p, StubModel(), detector=detector)  # must not raise
        json.dumps(r.to_dict())
        assert r["error"] and r["label"] == "Error" and r["p_fake"] is None
        assert r["path"] == str(p)


def test_analyze_with_untrained_model(face_video, detector):
    from deepfake_detector.models import create_model

    model = create_model("seed-cnn")
    r = analyze_video(face_video[0], model, detector=detector, n_frames=4)
    assert r["error"] is None and r["n_frames_with_faces"] == 4
    assert 0.0 <= r["p_fake"] <= 1.0 and r["label"] in ("Real", "Fake")
    assert r["model"] == model.describe()


# --- rendering ----------------------------------------------------------------------------------
def _read_all(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    return frames


def test_annotate_video_same_frames_and_size(tmp_path, face_video, detector):
    path, boxes = face_video
    r = analyze_video(path, StubModel(0.9), detector=detector, n_frames=5)
    out = annotate_video(path, r, tmp_path / "out" / "annotated.mp4")
    src, dst = _read_all(path), _read_all(out["path"])
    assert out["frames_written"] == len(src) == len(dst) == 24
    assert dst[0].shape == src[0].shape == (H, W, 3)
    # a red box (fake) drawn around the face on a frame between two sampled ones
    x1, y1, x2, y2 = (int(round(v)) for v in r["frames"][1]["faces"][0]["box"])
    i = r["frames"][1]["index"] + 1
    edge = dst[i][min(y2, H - 1), x1 + 5:x2 - 5].astype(int)
    assert (edge[:, 2] - edge[:, 1]).mean() > 80  # BGR: red >> green on the box's bottom edge
    assert np.abs(dst[i][:20, :100].astype(int) - src[i][:20, :100].astype(int)).mean() > 20  # verdict
    with pytest.raises(VideoError):
        annotate_video(tmp_path / "missing.mp4", r, tmp_path / "x.mp4")


def test_annotate_video_computes_result(tmp_path, face_video, detector):
    out = annotate_video(face_video[0], None, tmp_path / "b.mp4", model=StubModel(0.1), detector=detector,
                         n_frames=4)
    assert out["frames_written"] == 24 and (out["width"], out["height"]) == (W, H)


def _assert_png(path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 150
        im.verify()


def test_plot_timeline(tmp_path, face_video, detector):
    r = analyze_video(face_video[0], StubModel("brightness"), detector=detector, n_frames=6)
    _assert_png(plot_timeline(r, tmp_path / "t" / "timeline.png"))
    noface = {"path": "x.mp4", "label": "NoFace", "p_fake": None, "frames": [{"time": 0.0, "score": None}],
              "timeline_smoothed": [None], "threshold": 0.5, "duration": 1.0}
    _assert_png(plot_timeline(noface, tmp_path / "noface.png"))


# --- the shared DFDC clips -----------------------------------------------------------------------
def test_dfdc_clip(videos_dir, tmp_path, detector):
    from deepfake_detector.models import create_model

    clip = videos_dir / "abqwwspghj.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} not found")
    r = analyze_video(clip, create_model("seed-cnn"), detector=detector)  # 32 frames by default
    json.dumps(r.to_dict())
    assert r["error"] is None
    assert r["n_frames"] == 32 and r["frames"][0]["index"] == 0 and r["frames"][-1]["index"] == 299
    assert (r["width"], r["height"], r["frame_count"]) == (1920, 1080, 300)
    assert r["n_frames_with_faces"] >= 28  # one person, facing the camera throughout
    assert 0.0 <= r["p_fake"] <= 1.0 and r["label"] in ("Real", "Fake")
    assert len(r["timeline_smoothed"]) == 32 and r["flicker"] is not None
    _assert_png(plot_timeline(r, tmp_path / "dfdc.png"))
