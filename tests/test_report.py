"""The evaluation report: files, images, page and JSON."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from deepfake_detector.metrics import compute_metrics
from deepfake_detector.report import write_report

PLOTS = ["roc.png", "pr.png", "confusion_matrix.png", "score_histogram.png", "reliability.png"]


def synthetic(n: int = 400, seed: int = 0):
    """Labels, P(fake) scores with some skill, and (N, 24, 24, 3) uint8 thumbnails."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)
    thumbs = np.zeros((n, 24, 24, 3), np.uint8)
    thumbs[..., 0] = (255 * p)[:, None, None]  # red shows P(fake)
    thumbs[..., 2] = 255 * (1 - y)[:, None, None]  # blue marks real faces
    return y, p, thumbs


def assert_valid_png(path):
    assert path.stat().st_size > 5_000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= 300 and im.height >= 250
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100  # something is drawn on it


def test_write_report_with_thumbnails(tmp_path):
    y, p, thumbs = synthetic()
    extra = {"model": "cnn-small", "temperature": np.float32(1.25), "dataset": "synthetic"}
    out = tmp_path / "report"
    result = write_report(out, y, p, thumbnails=thumbs, threshold=0.42, title="Synthetic <test>", extra=extra)

    for name in [*PLOTS, "samples.png"]:
        assert_valid_png(out / name)
    assert plt.get_fignums() == []  # no figure left open

    data = json.loads((out / "metrics.json").read_text())
    assert data == result
    assert data["at_0.5"] == compute_metrics(y, p, 0.5)
    assert data["at_threshold"] == compute_metrics(y, p, 0.42)
    assert data["threshold"] == 0.42
    assert data["extra"] == {"model": "cnn-small", "temperature": 1.25, "dataset": "synthetic"}
    assert sorted(data["files"]) == sorted([*PLOTS, "samples.png", "metrics.json", "index.html"])

    page = (out / "index.html").read_text()
    for name in [*PLOTS, "samples.png"]:
        assert f'src="{name}"' in page
    assert f"{data['at_0.5']['accuracy']:.4f}" in page
    assert f"{data['at_threshold']['accuracy']:.4f}" in page
    assert "Synthetic &lt;test&gt;" in page and "<test>" not in page  # escaped
    assert "cnn-small" in page
    assert "http" not in page  # self-contained: no external resources


def test_write_report_from_paths(tmp_path):
    y, p, thumbs = synthetic(n=60, seed=1)
    paths = []
    for i, img in enumerate(thumbs):
        paths.append(tmp_path / f"face_{i}.png")
        Image.fromarray(img).save(paths[-1])
    paths[0] = tmp_path / "missing.png"  # an unreadable file must not stop the report
    write_report(tmp_path / "out", y, p, paths=[str(q) for q in paths])
    assert_valid_png(tmp_path / "out" / "samples.png")


def test_write_report_without_images_or_second_class(tmp_path):
    y = np.ones(30, int)
    p = np.linspace(0.05, 0.95, 30)
    result = write_report(tmp_path, y, p, threshold=0.3)
    for name in PLOTS:
        assert_valid_png(tmp_path / name)
    assert not (tmp_path / "samples.png").exists()
    assert "samples.png" not in (tmp_path / "index.html").read_text()
    assert result["at_0.5"]["roc_auc"] is None
    assert json.loads((tmp_path / "metrics.json").read_text())["at_0.5"]["eer"] is None


def test_write_report_rejects_misaligned_thumbnails(tmp_path):
    y, p, thumbs = synthetic(n=20)
    with pytest.raises(ValueError):
        write_report(tmp_path, y, p, thumbnails=thumbs[:10])
