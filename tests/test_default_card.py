"""The shipped default reproduces its own model card.

A fixed sample of the shared Validation splits (40 files per source and class, chosen by a
hash of the file name) is scored by the default, framed as the card frames it (dfdc-faces
crops as they are, faces-wild photos cropped to the face), at the card's threshold. Per
source, ROC-AUC, fake recall and false-alarm rate must lie within sampling tolerance of the
card's Validation rows. On features that differ from those the default was fitted on (the
saturating int8 kernel of a CPU without VNNI) this fails: the old default caught 48 % of
boredhumans fakes there, against 96 % on its card.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile

import numpy as np
import pytest

from deepfake_detector.models.clip import encoder as enc

PER_CELL = 40  # files per (source, class) of Validation
SLACK = 0.03  # on top of three standard errors: the card's own figures are estimates too


def tolerance(p: float, n: int) -> float:
    """Three binomial standard errors of a rate ``p`` measured on ``n`` files, plus SLACK."""
    return 3 * math.sqrt(max(p * (1 - p), 0.02) / max(n, 1)) + SLACK


def sample_cells(items, per_cell: int):
    """``per_cell`` items of each (source, label), the same ones on every machine."""
    cells: dict = {}
    for it in items:
        cells.setdefault((it[0].source, it[0].label), []).append(it)
    out = []
    for key in sorted(cells):
        ranked = sorted(cells[key], key=lambda it: hashlib.sha256(it[0].path.rsplit("/", 1)[-1].encode()).hexdigest())
        out += ranked[:per_cell]
    return out


@pytest.fixture(scope="module")
def default_bundle():
    from deepfake_detector.models.loader import default_model_path

    return default_model_path()


def test_the_default_reproduces_its_card_on_a_validation_sample(data_root, default_bundle, tmp_path_factory,
                                                               monkeypatch_module):
    from deepfake_detector.metrics import per_source_metrics
    from deepfake_detector.models import load
    from deepfake_detector.train_heads import HeadConfig, head_samples

    encoder = enc.default_encoder_path()
    if not encoder.is_file():
        pytest.skip(f"the CLIP encoder is not at {encoder} (deepfake-detector fetch-encoder; CI fetches it)")
    monkeypatch_module.setenv(enc.ENV_ENCODER, str(encoder))
    monkeypatch_module.setenv(enc.ENV_CACHE, str(tmp_path_factory.mktemp("cache")))  # a cold, writable cache

    with zipfile.ZipFile(default_bundle) as z:
        manifest = json.loads(z.read("bundle.json"))
    card = {r["source"]: r for r in manifest["meta"]["validation_sources"]}
    data = [{**r, "root": str(data_root / r["name"])} for r in manifest["meta"]["data"]]
    for r in data:
        r.pop("max_per_class", None)
    items = sample_cells(head_samples(HeadConfig(data=data))["validation"], PER_CELL)

    model = load(default_bundle)
    assert model.kind == "fused", model.meta.get("note")
    z = np.full(len(items), np.nan)
    for framing in ("as-is", "face"):
        idx = [i for i, it in enumerate(items) if it[1] == framing]
        logits, _ = model.file_logits([items[i][0].path for i in idx], framing, model.input_size)
        z[idx] = np.asarray(logits, np.float64)[:, 1] - np.asarray(logits, np.float64)[:, 0]
    ok = np.isfinite(z)
    assert ok.mean() > 0.97, f"{(~ok).sum()} of {len(z)} sample files failed"
    p = 1 / (1 + np.exp(-z[ok] / model.temperature))
    kept = [it for it, k in zip(items, ok) if k]
    rows = per_source_metrics([it[0].label for it in kept], p, [it[0].source for it in kept], model.threshold,
                              roots=[it[0].root for it in kept])
    misses = []
    for r in rows:
        want = card[r["source"]]
        for key, n in (("roc_auc", min(r["n_real"] or r["n"], r["n_fake"] or r["n"])),
                       ("fake_recall", r["n_fake"]), ("false_alarm", r["n_real"])):
            if r[key] is None or want[key] is None:
                continue
            tol = tolerance(want[key], n)
            if abs(r[key] - want[key]) > tol:
                misses.append(f"{r['source']} {key}: {r[key]:.3f} here, {want[key]:.3f} on the card (+/- {tol:.3f})")
    assert len(rows) == len(card)
    assert not misses, "; ".join(misses)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
