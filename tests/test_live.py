"""watch(): a short video file played at its own frame rate, like a stream."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from deepfake_detector.faces import get_detector
from deepfake_detector.models import Predictor
from deepfake_detector.video import VideoError, format_summary, format_update, parse_source, watch

skdata = pytest.importorskip("skimage.data")

W, H = 400, 300


class StubModel(Predictor):
    input_size = 32
    threshold = 0.5

    def __init__(self, value=0.8, delay=0.0):
        self.value, self.delay, self.calls = value, delay, 0

    def predict_proba(self, images, batch_size=64):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return np.full(len(images), self.value)

    def describe(self):
        return {"arch": "stub"}


def write_face_video(path, n=30, fps=15.0):
    """The astronaut's head drifting over a plain background, ``n`` frames at ``fps``."""
    patch = skdata.astronaut()[10:230, 130:320]
    patch = cv2.resize(patch, (patch.shape[1] * 2 // 3, patch.shape[0] * 2 // 3))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened()
    for i in range(n):
        img = np.full((H, W, 3), (80, 110, 140), np.uint8)
        img[60: 60 + patch.shape[0], 40 + 4 * i: 40 + 4 * i + patch.shape[1]] = patch
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_face_video(tmp_path_factory.mktemp("live") / "face.mp4")  # 2 s at 15 fps


@pytest.fixture(scope="module")
def detector():
    return get_detector("retinaface")


def test_watch_file_at_its_frame_rate(clip, detector):
    updates = []
    t = time.monotonic()
    s = watch(str(clip), StubModel(0.8), detector, window=10, on_update=updates.append)
    elapsed = time.monotonic() - t
    assert s["stopped_by"] == "end" and s["error"] is None and s["kind"] == "file"
    assert s["frames_read"] == 30
    assert 0 < s["frames_analysed"] <= 30 and s["frames_with_face"] == s["frames_analysed"]
    assert s["frames_dropped"] == s["frames_read"] - s["frames_analysed"]
    assert elapsed >= 1.6  # 30 frames at 15 fps take 2 s: paced, not read flat out
    assert s["label"] == "Fake" and s["p_fake"] == pytest.approx(0.8) and s["confidence"] == "MEDIUM"
    assert s["analysed_fps"] > 0
    assert len(updates) == s["frames_analysed"]
    u = updates[-1]
    assert u["label"] == "Fake" and u["p_fake"] == pytest.approx(0.8) and u["face"] is not None
    assert 1 <= u["n_scores"] <= 10  # the rolling window
    idx = [x["frame_index"] for x in updates]
    assert idx == sorted(idx)  # always forward, newest frames


def test_watch_drops_frames_when_analysis_is_slow(clip, detector):
    s = watch(str(clip), StubModel(0.2, delay=0.25), detector)  # at most ~4 analysed per second
    assert s["stopped_by"] == "end" and s["frames_read"] == 30
    assert s["frames_dropped"] > 10
    assert s["frames_analysed"] + s["frames_dropped"] == 30
    assert s["label"] == "Real"


def test_watch_stops_on_stop_event(clip, detector):
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t = time.monotonic()
    s = watch(str(clip), StubModel(), detector, stop_event=stop)
    assert s["stopped_by"] == "stop_event"
    assert time.monotonic() - t < 1.5
    assert s["frames_read"] < 30


def test_watch_stops_after_max_seconds(clip, detector):
    s = watch(str(clip), StubModel(), detector, max_seconds=0.6)
    assert s["stopped_by"] == "max_seconds"
    assert 0.5 <= s["seconds"] < 1.5
    assert s["frames_read"] < 30


def test_watch_stops_on_ctrl_c(clip, detector):
    def interrupt(update):
        if update["frames_analysed"] >= 2:
            raise KeyboardInterrupt

    s = watch(str(clip), StubModel(), detector, on_update=interrupt)
    assert s["stopped_by"] == "interrupt" and s["frames_analysed"] == 2


def test_watch_no_face_and_bad_sources(tmp_path, detector):
    path = tmp_path / "blank.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (160, 120))
    for _ in range(10):
        w.write(np.full((120, 160, 3), 128, np.uint8))
    w.release()
    model = StubModel()
    s = watch(str(path), model, detector)
    assert s["label"] == "NoFace" and s["p_fake"] is None and s["frames_with_face"] == 0
    assert model.calls == 0
    with pytest.raises(VideoError):
        watch(str(tmp_path / "missing.mp4"), model, detector)
    text = tmp_path / "t.mp4"
    text.write_text("not a video")
    with pytest.raises(VideoError):
        watch(str(text), model, detector)


def test_parse_source_and_formatting(clip):
    assert parse_source(0) == (0, "camera") and parse_source("1") == (1, "camera")
    assert parse_source("rtsp://example.org/live")[1] == "stream"
    assert parse_source(str(clip)) == (str(clip), "file")
    line = format_update({"time": 1.5, "label": "Fake", "p_fake": 0.734, "n_scores": 12,
                          "frame_score": 0.81, "fps": 12.34, "frames_dropped": 7})
    assert "Fake" in line and "0.73" in line and "12.3 fps" in line and "dropped=7" in line
    summary = format_summary({"label": "Real", "p_fake": 0.2, "p_fake_mean": 0.25, "window": 30,
                              "confidence": "MEDIUM", "frames_read": 100, "frames_analysed": 40,
                              "frames_with_face": 38, "frames_dropped": 60, "analysed_fps": 12.0,
                              "seconds": 3.3, "stopped_by": "end", "error": None})
    assert "Real" in summary and "dropped=60" in summary and "12.0 fps" in summary and "\n" not in summary
