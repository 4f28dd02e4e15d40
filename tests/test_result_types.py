"""The typed results: one place knows the columns, the writers derive theirs from it, a result
reads as the row it is written as, and confidence reads with the label."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import numpy as np
import pytest

from deepfake_detector.results import (
    COLUMNS,
    STORE_COLUMNS,
    TABLE_COLUMNS,
    WEB_COLUMNS,
    FaceScore,
    ImageResult,
    RowWriter,
    VideoResult,
    confidence_level,
    error_row,
    image_row,
    table_header,
    video_row,
)


def test_the_columns_are_the_fields_of_the_result_types():
    image = {f.name for f in dataclasses.fields(ImageResult)}
    video = {f.name for f in dataclasses.fields(VideoResult)}
    assert COLUMNS == ("path", "kind", "p_fake", "label", "confidence", "error")  # predict --format csv
    assert set(COLUMNS) <= image & video
    assert {name for name, _ in STORE_COLUMNS} <= image | video
    assert {"n_frames", "p_fake_mean", "flicker", "warning"} <= {name for name, _ in STORE_COLUMNS}
    assert [name for name, _, _ in TABLE_COLUMNS] == ["label", "p_fake", "confidence", "path"]
    assert dict(WEB_COLUMNS)["path"] == "file" and "face" in dict(WEB_COLUMNS)


def test_scan_and_web_take_their_columns_from_the_result_types():
    from deepfake_detector.scan.infer import RESULT_KEYS
    from deepfake_detector.scan.store import COLUMNS as STORE
    from deepfake_detector.web.app import table_rows

    assert set(RESULT_KEYS) == {name for name, _ in STORE_COLUMNS} - {"path"}
    assert set(STORE) == {name for name, _ in STORE_COLUMNS} | {"sha256", "size", "model", "model_version",
                                                                "scanned_at"}
    faces = [FaceScore([1.0, 2.0, 30.0, 40.0], 0.99, 0.7)]
    assert table_rows([image_row("a.jpg", 0.7, 0.5, faces=faces)]) == [
        ["a.jpg", 0.7, "Fake", "MEDIUM", None, None, "[1.0, 2.0, 30.0, 40.0]"]]


def test_a_result_reads_as_its_row_and_keeps_its_pixels_out_of_it():
    crop = np.zeros((4, 4, 3), np.uint8)
    r = image_row("a.jpg", 0.9, 0.5, faces=[FaceScore([0, 0, 4, 4], 0.9, 0.9, crop)], image=crop)
    assert r["label"] == "Fake" and r.get("face") == [0, 0, 4, 4] and r.faces[0]["score"] == 0.9
    assert "image" not in r and "crop" not in r and "crop" not in r["faces"][0]
    assert r.image is crop and r.faces[0].crop is crop
    assert json.loads(json.dumps(r.to_dict())) == r.to_dict()
    whole = image_row("b.jpg", 0.1, 0.5)  # scored whole: no face columns at all
    assert "face" not in whole and "faces" not in whole and whole["label"] == "Real"
    none = image_row("c.jpg", None, 0.5, faces=[])
    assert none["label"] == "NoFace" and none["face"] is None and none["faces"] == []


def test_error_rows_keep_their_kind():
    assert error_row("x.mp4", "bad").kind == "video" and error_row("x.mp4", "bad")["message"] == "bad"
    img = error_row("x.png", "bad", threshold=0.6)
    assert img.failed and img["message"] is None and img["threshold"] == 0.6
    v = video_row("y.mp4")
    assert v.fail("gone", "gone") is v and v.label == "Error" and v.p_fake is None


def test_the_verdict_comes_from_the_score_not_its_rounding():
    t = 0.6132495
    r = image_row("a.jpg", 0.61324949, t)
    assert r.label == "Real" and r.p_fake == pytest.approx(0.613249)


@pytest.mark.parametrize("p, t, want", [
    (0.69, 0.78, "LOW"),  # Real, just under its threshold: not MEDIUM as max(p, 1 - p) said
    (0.30, 0.78, "HIGH"),  # Real: (0.78 - 0.30) / 0.78 = 0.615 > 0.6
    (0.40, 0.78, "MEDIUM"),  # Real: 0.38 / 0.78 = 0.49
    (0.79, 0.78, "LOW"),
    (0.95, 0.78, "HIGH"),  # (0.95 - 0.78) / 0.22 = 0.77
    (0.85, 0.78, "MEDIUM"),  # 0.32
    (0.8, 0.5, "MEDIUM"), (0.81, 0.5, "HIGH"), (0.2, 0.5, "MEDIUM"), (0.19, 0.5, "HIGH"), (0.5, 0.5, "LOW"),
    (None, 0.5, None),
])
def test_confidence_is_the_distance_to_the_threshold_on_the_verdicts_side(p, t, want):
    assert confidence_level(p, t) == want


def test_the_table_starts_with_its_header_and_csv_with_its_columns():
    out = io.StringIO()
    w = RowWriter("table", out)
    w.write(image_row("a.jpg", 0.9, 0.5))
    w.write(image_row("b.jpg", 0.1, 0.5))
    lines = out.getvalue().splitlines()
    assert lines[0] == table_header() and lines[0].split() == ["label", "p_fake", "confidence", "path"]
    assert lines[1].split() == ["Fake", "0.9000", "HIGH", "a.jpg"] and len(lines) == 3
    out = io.StringIO()
    w = RowWriter("csv", out)
    w.write(image_row("a.jpg", 0.9, 0.5))
    assert next(csv.reader(io.StringIO(out.getvalue()))) == list(COLUMNS)
