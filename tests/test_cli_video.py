"""The CLI on videos: predict JSON, annotation, timeline, watch, and the demo photo."""

from __future__ import annotations

import json

import cv2
import pytest

from deepfake_detector.cli import main
from deepfake_detector.models import create_model, save_model

from .test_video import face_frames, write_video


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    m = create_model("seed-cnn", input_size=64, seed=2)
    path = tmp_path_factory.mktemp("ckpt") / "m.npz"
    save_model(m, path)
    return str(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "face.mp4"
    write_video(path, face_frames(24)[0], fps=12.0)
    return path


def test_predict_video_json_annotate_timeline(clip, checkpoint, tmp_path, capsys):
    out_mp4, out_png = tmp_path / "a.mp4", tmp_path / "t.png"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 1000)
    code = main(["predict", str(clip), str(broken), "--model", checkpoint, "--format", "json", "--frames", "8",
                 "--annotate", str(out_mp4), "--timeline", str(out_png)])
    rows = json.loads(capsys.readouterr().out)
    assert code == 1  # the broken file is an error; the good video still got its verdict
    video, bad = rows
    assert video["path"] == str(clip) and video["label"] in ("Real", "Fake") and 0 <= video["p_fake"] <= 1
    assert len(video["frames"]) == 8
    assert set(video["frames"][0]) >= {"index", "time", "faces", "score"}
    assert bad["error"] and bad["label"] == "Error"
    cap = cv2.VideoCapture(str(out_mp4))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 24
    cap.release()
    assert out_png.stat().st_size > 5000


def test_watch_a_file_as_a_stream(clip, checkpoint, capsys):
    assert main(["watch", "--source", str(clip), "--model", checkpoint, "--seconds", "5", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames_analysed"] > 0


def test_demo_runs_on_the_astronaut(checkpoint, capsys):
    pytest.importorskip("skimage", reason="the demo photo ships with scikit-image")
    assert main(["demo", "--model", checkpoint]) == 0
    out = capsys.readouterr().out
    assert "astronaut.png" in out and ("Fake" in out or "Real" in out)
