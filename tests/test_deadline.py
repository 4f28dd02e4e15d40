"""The time budget per file: every format whose cost no header bounds is decoded in a worker
process, killed at ``--decode-seconds``; a cancelled caller (a web client that left) stops its
work, in the decode worker and between the files of a batch or the frames of a video."""

from __future__ import annotations

import json
import socket
import threading
import time

import cv2
import numpy as np
import pytest

from deepfake_detector.data import ImageDecodeError, decode_bytes
from deepfake_detector.data.deadline import Cancelled, cancel_scope
from deepfake_detector.data.limits import Limits

from .hostile import jpeg
from .synthetic import face_like
from .test_hostile_inputs import run_cli


@pytest.fixture(scope="module")
def noisy_png() -> bytes:
    """A 3000 x 3000 noise PNG (under 0.05 s to decode on a fast CPU: not a slow file)."""
    img = np.random.default_rng(0).integers(0, 256, (3000, 3000, 3), np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.fixture(scope="module")
def slow_png() -> bytes:
    """A 7000 x 7000 noise PNG: 0.3 s to decode with Pillow on a fast 2026 CPU (an AMD EPYC with
    AVX-512), more elsewhere, so a 0.05 s budget stops it on any machine; a full decode of it
    takes longer than a cancelled caller may wait."""
    img = np.random.default_rng(1).integers(0, 256, (7000, 7000, 3), np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def test_a_worker_decode_gives_the_same_pixels_as_a_decode_in_this_process(noisy_png):
    a = decode_bytes(noisy_png)
    b = decode_bytes(noisy_png, in_worker=True)  # the worker's own path: Pillow here
    assert a.shape == (3000, 3000, 3) and np.array_equal(a, b)
    with pytest.raises(ImageDecodeError, match="truncated"):  # the worker's refusal comes back as the file's
        decode_bytes(noisy_png[: len(noisy_png) // 2])
    assert decode_bytes(noisy_png).shape == (3000, 3000, 3)  # and the worker is reused after it


def test_a_decode_past_its_deadline_is_stopped_with_the_flag_named(slow_png, noisy_png):
    t = time.monotonic()
    with pytest.raises(ImageDecodeError, match=r"decoding took over 0.05 s and was stopped \(--decode-seconds\)"):
        decode_bytes(slow_png, limits=Limits(decode_seconds=0.05))
    assert time.monotonic() - t < 3
    assert decode_bytes(noisy_png).shape == (3000, 3000, 3)  # a fresh worker takes the next file


def test_a_cancelled_caller_stops_a_decode_in_its_worker(slow_png):
    event = threading.Event()
    threading.Timer(0.1, event.set).start()  # well before the decode (0.3 s at the fastest seen) ends
    t = time.monotonic()
    with cancel_scope(event), pytest.raises(Cancelled):
        decode_bytes(slow_png, limits=Limits(decode_seconds=60))
    assert time.monotonic() - t < 2.5  # stopped, not waited out


def test_predict_gives_the_slow_file_its_error_row_and_goes_on(slow_png, tmp_path):
    (tmp_path / "a-slow.png").write_bytes(slow_png)
    (tmp_path / "b-face.jpg").write_bytes(jpeg(face_like(np.random.default_rng(0), 96, False)))
    rc, out, err, _ = run_cli("predict", "--fast", "--whole-image", "--format", "json", "--decode-seconds", "0.05",
                              tmp_path)
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(out)}
    assert rows["a-slow.png"]["label"] == "Error" and "--decode-seconds" in rows["a-slow.png"]["error"]
    assert rows["b-face.jpg"]["label"] in ("Real", "Fake")  # a JPEG is bounded by its header: no worker
    assert rc == 1 and "Traceback" not in err


# --- a web client that leaves ---------------------------------------------------------------
class SlowDetector:
    """A face detector that takes 0.25 s a frame and counts its calls."""

    name = "slow"

    def __init__(self):
        self.calls = 0

    def detect(self, image):
        self.calls += 1
        time.sleep(0.25)
        return []


def test_a_client_that_leaves_stops_its_video_analysis(tmp_path):
    pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'deepfake-detector[web]'")
    pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install 'deepfake-detector[web]'")
    from deepfake_detector.models import create_model
    from deepfake_detector.web.api import create_api

    from .web_server import BackgroundServer, write_video

    video = write_video(tmp_path / "clip.mp4", None, n=40).read_bytes()
    detector = SlowDetector()
    app = create_api(create_model("seed-cnn", input_size=64), n_frames=32, detector=detector, temp_dir=tmp_path)
    with BackgroundServer(app) as srv:
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"clip.mp4\"\r\n"
                f"Content-Type: video/mp4\r\n\r\n").encode() + video + f"\r\n--{boundary}--\r\n".encode()
        head = (f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}"
                f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection((srv.host, srv.port)) as s:
            s.sendall(head + body)
            t = time.monotonic()
            while detector.calls < 2 and time.monotonic() - t < 20:
                time.sleep(0.05)
            assert detector.calls >= 2, "the analysis did not start"
        # the client is gone: the analysis stops within a poll and a frame, not after 32 frames (8 s)
        time.sleep(1.5)
        stopped_at = detector.calls
        time.sleep(1.0)
        assert detector.calls == stopped_at and stopped_at < 16, stopped_at


# --- an image larger than any model needs is reduced as it decodes ---------------------------
@pytest.fixture(scope="module")
def big_photos(tmp_path_factory):
    """A 54-MP JPEG and PNG (blurred noise, so the PNG is not trivially small) and their pixels."""
    folder = tmp_path_factory.mktemp("big-photos")
    img = cv2.GaussianBlur(np.random.default_rng(2).integers(0, 256, (6000, 9000, 3), np.uint8), (0, 0), 3)
    cv2.imwrite(str(folder / "photo.jpg"), img)
    cv2.imwrite(str(folder / "photo.png"), img)
    return folder


@pytest.mark.parametrize("name", ["photo.jpg", "photo.png"])
def test_a_big_image_reaches_the_caller_at_the_working_size(big_photos, name):
    from deepfake_detector.data import load_image
    from deepfake_detector.data.decode import MAX_SIDE

    full = load_image(big_photos / name, max_side=None)
    small = load_image(big_photos / name)
    assert full.shape == (6000, 9000, 3) and small.shape == (2731, MAX_SIDE, 3)
    # the same picture, to a grey level on average: a JPEG scaled in the DCT first, a PNG by a box
    # filter of 2 x 2 in Pillow, then both with INTER_AREA
    ref = cv2.resize(full, (MAX_SIDE, 2731), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - ref).mean() < 1.0


def test_a_folder_of_big_images_stays_within_a_gigabyte(big_photos, tmp_path):
    for i in range(4):  # eight 54-MP images, JPEG and PNG
        for ext in ("jpg", "png"):
            (tmp_path / f"{i}.{ext}").symlink_to(big_photos / f"photo.{ext}")
    rc, out, err, peak = run_cli("predict", "--fast", "--whole-image", "--format", "json", "--follow-links", tmp_path)
    rows = json.loads(out)
    assert rc == 0 and len(rows) == 8 and all(r["label"] in ("Real", "Fake") for r in rows), err[-500:]
    assert peak < 1024, f"peak {peak:.0f} MB (the process and its decode worker)"
