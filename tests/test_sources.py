"""Training on several sources at once: sources on samples, several roots, (source x class)
balanced batches, per-source validation and selection, per-source evaluation and release."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from deepfake_detector.calibration import calibrate_on_validation, choose_threshold, threshold_at_false_alarm
from deepfake_detector.data import (
    DataLoader,
    Sample,
    check_disjoint,
    discover,
    load_arrays,
    load_image,
    read_sources,
    resolve_samples,
    root_name,
    source_counts,
)
from deepfake_detector.metrics import per_source_metrics, source_selection
from deepfake_detector.models import Predictor, load_model
from deepfake_detector.nn.io import load_arrays as load_checkpoint
from deepfake_detector.train import (
    TrainConfig,
    build_splits,
    cell_weights,
    data_roots,
    face_roots,
    face_splits,
    resolve_balance,
    train,
)

from .synthetic import MeanModel, make_dataset, make_source_dataset, write_photo_splits

TINY = {"input_size": 32, "widths": [4, 4, 8, 8, 8], "depths": [1, 1, 1, 1, 1]}
WILD = {"camera": "Real", "gan": "Fake"}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Two synthetic roots: ``studio`` (both classes, no source column: its source is its
    name) and ``wild`` (one class per source, a metadata.csv ``source`` column)."""
    base = tmp_path_factory.mktemp("sources")
    return (make_dataset(base / "studio", n_per_class=(24, 8, 8)),
            make_source_dataset(base / "wild", WILD, n_per_source=(16, 8, 8)))


# --- 1. sources on samples ------------------------------------------------------------------------
def test_samples_carry_their_source_from_metadata_or_the_root_name(roots):
    studio, wild = roots
    assert Sample("a.jpg", 0, "g") == ("a.jpg", 0, "g", "", "")  # the new fields default empty
    s = discover(studio)
    assert {x.source for x in s.train + s.validation + s.test} == {"studio"} == {x.root for x in s.train}
    w = discover(wild, name="outdoors")
    assert source_counts(w.train) == {"camera": {"Real": 16, "Fake": 0}, "gan": {"Real": 0, "Fake": 16}}
    assert {x.root for x in w.validation} == {"outdoors"}  # the name given; sources still from the csv
    sources = read_sources(wild / "metadata.csv")
    assert len(sources) == 3 * 2 * 8 + 16 and set(sources.values()) == {"camera", "gan"}
    (studio / "metadata.csv").write_text("file,group\nTrain/Real/TR000.png,g0\n")  # no source column
    try:
        assert read_sources(studio / "metadata.csv") == {}
        assert discover(studio).train[0].source == "studio"
    finally:
        (studio / "metadata.csv").unlink()
    # a split folder given alone: sources from its root's metadata.csv, named after the root
    samples, name = resolve_samples(wild / "Test")
    assert name == "Test" and root_name(wild / "Test") == "wild"
    assert {(x.source, x.label) for x in samples} == {("camera", 0), ("gan", 1)}
    assert {x.root for x in samples} == {"wild"}


def test_several_roots_concatenate_their_own_splits(roots):
    studio, wild = roots
    cfg = TrainConfig(data=[str(studio), {"root": str(wild), "name": "wild", "faces": False, "weight": 2.0}])
    assert [r.name for r in data_roots(cfg.data)] == ["studio", "wild"]
    splits = build_splits(cfg)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (48 + 32, 16 + 16, 16 + 16)
    assert [x.root for x in splits.train] == ["studio"] * 48 + ["wild"] * 32  # in the order given
    check_disjoint(splits)
    with pytest.raises(ValueError, match="named"):
        data_roots([str(studio), str(studio)])
    with pytest.raises(ValueError, match="data root"):
        data_roots([{"path": str(studio)}])
    assert data_roots(str(studio)) == data_roots([str(studio)])
    # balance: auto is undersample for one source, cells for several; the weights of the cells
    one = build_splits(TrainConfig(data=str(studio)))
    assert resolve_balance(TrainConfig(data=str(studio)), one.train) == "undersample"
    assert resolve_balance(cfg, splits.train) == "cells"
    cfg.source_weights = {"gan": 1.5}
    assert cell_weights(cfg, splits.train) == {("studio", "studio", 0): 1.0, ("studio", "studio", 1): 1.0,
                                               ("wild", "camera", 0): 2.0, ("wild", "gan", 1): 3.0}
    cfg.source_weights = {"nope": 2.0}
    with pytest.raises(ValueError, match="unknown sources"):
        cell_weights(cfg, splits.train)


def test_cli_train_takes_several_data_and_source_weights(roots, monkeypatch, capsys):
    import deepfake_detector.train as train_module
    from deepfake_detector.cli import main

    got = []
    monkeypatch.setattr(train_module, "train", lambda cfg, **kw: got.append(cfg) or {"stopped": "completed"})
    studio, wild = roots
    assert main(["train", "--data", str(studio), "--data", str(wild), "--source-weight", "gan=2",
                 "--source-weight", "studio=0.5", "--max-false-alarm", "0.1", "--balance", "cells"]) == 0
    cfg = got[-1]
    assert cfg.data == [str(studio), str(wild)] and cfg.source_weights == {"gan": 2.0, "studio": 0.5}
    assert cfg.max_false_alarm == 0.1 and cfg.balance == "cells"
    assert main(["train", "--data", str(studio)]) == 0
    assert got[-1].data == str(studio) and got[-1].balance == "auto"  # one root: a string, as before
    assert main(["train", "--real-dir", "r", "--fake-dir", "f"]) == 0
    assert got[-1].data is None and got[-1].real_dirs == ["r"]
    assert main(["train", "--data", str(studio), "--source-weight", "gan"]) == 2
    assert "NAME=WEIGHT" in capsys.readouterr().err


# --- 2. faces on one root: the training crop is the crop predict --faces makes ----------------------
class Spy(Predictor):
    """Records the images it is asked to score."""

    input_size, threshold, arch, face_margin = 32, 0.5, "spy", 0.15

    def __init__(self):
        self.seen = []

    def predict_proba(self, images, batch_size=64):
        self.seen.append(np.array(images))
        return np.full(len(images), 0.5)

    def describe(self):
        return {"arch": self.arch}


def test_a_faces_root_is_cropped_like_predict_faces(roots, tmp_path):
    from deepfake_detector.faces import get_detector
    from deepfake_detector.faces.crop import square_crop
    from deepfake_detector.predict import predict_arrays

    from .test_video import face_frames

    frames, _ = face_frames(4)
    write_photo_splits(tmp_path / "photos", frames, 2)
    studio, _ = roots
    cfg = TrainConfig(data=[str(studio), {"root": str(tmp_path / "photos"), "faces": True}], face_margin=0.15,
                      out=str(tmp_path / "run"))
    assert face_roots(cfg) == {"photos"}
    detector = get_detector()
    splits = face_splits(build_splits(cfg), tmp_path / "run" / "faces", cfg, face_roots(cfg), detector=detector)
    photos = [s for s in splits.train if s.root == "photos"]
    assert len(photos) == 4 and all("/faces/train/" in s.path for s in photos)  # cropped, source and root kept
    assert [s.source for s in photos] == ["photos"] * 4
    assert all(s.path.startswith(str(studio)) for s in splits.train if s.root == "studio")  # left as it is
    sample = photos[0]  # Train/Real/Real0.png
    trained = next(iter(DataLoader([sample], 32, 1, shuffle=False, augment=None, workers=0))).images[0]
    spy = Spy()
    original = load_image(tmp_path / "photos" / "Train" / "Real" / "Real0.png")
    predict_arrays(spy, [original], faces=True, detector=detector)
    fed = spy.seen[0][0]
    # the same square (same detector, same margin): equal but for the crop file's JPEG (quality 95)
    diff = np.abs(trained.astype(int) - fed.astype(int))
    assert diff.mean() < 1.5, diff.mean()
    box = detector.detect(original)[0].box
    assert np.array_equal(fed, square_crop(original, box, 0.15, 32))
    loose = square_crop(original, box, 0.5, 32)  # another framing is far off: the check has teeth
    assert np.abs(loose.astype(int) - fed.astype(int)).mean() > 5 * diff.mean()


# --- 3. batches balanced over (source x class) cells ------------------------------------------------
def cell_samples() -> list[Sample]:
    """Two roots, unequal cells: a 'big' source with both classes, a small one per class."""
    out = [Sample(f"/big/r{i}.png", 0, f"br{i}", "big", "A") for i in range(300)]
    out += [Sample(f"/big/f{i}.png", 1, f"bf{i}", "big", "A") for i in range(100)]
    out += [Sample(f"/w/cam{i}.png", 0, f"c{i}", "camera", "B") for i in range(40)]
    out += [Sample(f"/w/gan{i}.png", 1, f"g{i}", "gan", "B") for i in range(10)]
    return out


def test_cells_balance_gives_each_cell_its_weighted_share():
    samples = cell_samples()
    weights = {("B", "camera", 0): 2.0, ("B", "gan", 1): 3.0}  # big's cells: 1 each -> shares 1, 1, 2, 3 / 7
    loader = DataLoader(samples, 16, 25, balance="cells", seed=4, workers=0, cell_weights=weights)
    assert loader.cell_shares() == pytest.approx({("A", "big", 0): 1 / 7, ("A", "big", 1): 1 / 7,
                                                  ("B", "camera", 0): 2 / 7, ("B", "gan", 1): 3 / 7})
    orders = [loader.epoch_order(e) for e in range(10)]
    assert all(len(o) == len(samples) for o in orders) and len(loader) == 18
    drawn = np.concatenate(orders)
    keys = [(s.root, s.source, s.label) for s in samples]
    for cell, share in loader.cell_shares().items():
        got = np.mean([keys[i] == cell for i in drawn])
        assert abs(got - share) < 0.03, (cell, got, share)  # 4500 draws: under 1 point of noise
    # uniform within a cell: gan's 10 images are drawn about equally (with replacement)
    gan = np.bincount(drawn[drawn >= 440] - 440, minlength=10)
    assert gan.min() > 0.5 * gan.mean()
    # the order is a function of (seed, epoch): another loader, the same; another epoch or seed, not
    again = DataLoader(samples, 16, 25, balance="cells", seed=4, workers=0, cell_weights=weights)
    assert np.array_equal(again.epoch_order(2), orders[2])
    assert not np.array_equal(orders[1], orders[2])
    other = DataLoader(samples, 16, 25, balance="cells", seed=5, workers=0, cell_weights=weights)
    assert not np.array_equal(other.epoch_order(2), orders[2])
    # unweighted: every cell the same share, whatever its size
    plain = DataLoader(samples, 16, 25, balance="cells", seed=0, workers=0)
    labels = np.concatenate([plain.labels[plain.epoch_order(e)] for e in range(4)])
    assert abs(labels.mean() - 0.5) < 0.03
    with pytest.raises(ValueError, match="cell weights"):
        DataLoader(samples, 16, 25, balance="cells", cell_weights={("A", "big", 0): -1.0})


# --- 4. per-source metrics, selection, false-alarm threshold ----------------------------------------
def test_per_source_metrics_by_hand():
    #        cam (W, real)  gan (W, fake)  dfdc (D, both)
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.15, 0.9, 0.95, 0.99, 0.5])
    sources = ["cam", "cam", "gan", "gan", "dfdc", "dfdc", "dfdc", "dfdc"]
    roots = ["W", "W", "W", "W", "D", "D", "D", "D"]
    rows = {r["source"]: r for r in per_source_metrics(y, p, sources, 0.25, roots=roots)}
    assert list(rows) == ["cam", "gan", "dfdc"]
    # gan against its own root's reals (0.1, 0.2): 0.3 beats both, 0.15 one of them: 3 of 4 pairs
    assert rows["gan"]["roc_auc"] == 0.75 and rows["gan"]["auc_against"] == "root"
    assert rows["cam"]["roc_auc"] == 0.75  # the same pairs, seen from the reals' side
    assert rows["dfdc"]["roc_auc"] == 0.5 and rows["dfdc"]["auc_against"] == "own"  # 0.99 beats both, 0.5 none
    assert (rows["gan"]["fake_recall"], rows["gan"]["false_alarm"]) == (0.5, None)
    assert (rows["cam"]["fake_recall"], rows["cam"]["false_alarm"]) == (None, 0.0)
    assert (rows["dfdc"]["fake_recall"], rows["dfdc"]["false_alarm"]) == (1.0, 1.0)
    assert (rows["gan"]["n"], rows["gan"]["n_real"], rows["gan"]["n_fake"]) == (2, 0, 2)
    # without roots: against every real, D's high-scoring ones too: 3 of 8 pairs
    pooled = {r["source"]: r for r in per_source_metrics(y, p, sources, 0.25)}
    assert pooled["gan"]["roc_auc"] == 0.375 and pooled["gan"]["auc_against"] == "all"
    sel = source_selection(list(rows.values()))
    assert sel == {"mean_auc": pytest.approx((0.75 + 0.75 + 0.5) / 3), "worst_source": "dfdc", "worst_auc": 0.5}
    assert source_selection([{"source": "x", "roc_auc": None}])["mean_auc"] is None
    one = per_source_metrics(y[4:], p[4:], sources[4:], 0.5)  # one source: its AUC is the pooled one
    assert source_selection(one)["mean_auc"] == roc_auc_score(y[4:], p[4:])


def test_per_source_selection_picks_the_epoch_pooled_auc_would_not():
    """Two epochs' validation scores: pooled AUC prefers the first (one source ranked
    perfectly, the other at chance, both on one scale), the mean per-source AUC the second
    (both ranked well, but on offset scales, which hurts the pooled ranking)."""
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1] * 2)
    sources = ["x"] * 8 + ["y"] * 8
    epoch_a = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,  # x: perfect
                        0.3, 0.4, 0.5, 0.6, 0.3, 0.4, 0.5, 0.6])  # y: chance
    epoch_b = np.array([0.6, 0.7, 0.8, 0.85, 0.75, 0.9, 0.95, 0.99,  # x: 14 of 16 pairs
                        0.01, 0.02, 0.03, 0.05, 0.04, 0.1, 0.2, 0.3])  # y: 15 of 16
    pooled = [roc_auc_score(y, e) for e in (epoch_a, epoch_b)]
    picks = [source_selection(per_source_metrics(y, e, sources, 0.5)) for e in (epoch_a, epoch_b)]
    assert pooled[0] > pooled[1]  # pooled AUC would keep epoch 1
    assert [p["mean_auc"] for p in picks] == pytest.approx([0.75, (14 / 16 + 15 / 16) / 2])
    assert int(np.argmax([p["mean_auc"] for p in picks])) == 1  # per source: epoch 2
    assert picks[0]["worst_source"] == "y" and picks[0]["worst_auc"] == 0.5


def test_threshold_at_false_alarm_by_hand():
    y = np.zeros(20, int)
    p = np.arange(1, 21) / 100  # 20 reals at 0.01 .. 0.20
    t = threshold_at_false_alarm(y, p, 0.1)
    assert t == pytest.approx(0.185) and (p >= t).sum() == 2  # exactly 2 of 20 reals at or above t
    assert (p >= threshold_at_false_alarm(y, p, 0.0)).sum() == 0
    assert (p >= threshold_at_false_alarm(y, p, 1.0)).sum() == 20
    # fakes do not spend the budget, and a fake's score is a decision point: the lowest threshold wins
    y2, p2 = np.r_[y, 1, 1], np.r_[p, 0.185, 0.9]
    t2 = threshold_at_false_alarm(y2, p2, 0.1)
    assert t2 == pytest.approx(0.1825) and (p2[y2 == 0] >= t2).sum() == 2 and (p2[y2 == 1] >= t2).all()
    with pytest.raises(ValueError, match="real"):
        threshold_at_false_alarm(np.ones(3, int), [0.1, 0.2, 0.3], 0.1)
    # calibrate_on_validation: the rule on the temperature-scaled scores
    rng = np.random.default_rng(0)
    z = np.r_[rng.normal(-1, 1, 200), rng.normal(1, 1, 200)]
    labels = np.r_[np.zeros(200, int), np.ones(200, int)]
    T, thr, m = calibrate_on_validation(z, labels, max_false_alarm=0.05)
    q = 1 / (1 + np.exp(-z / T))
    assert thr == pytest.approx(threshold_at_false_alarm(labels, q, 0.05), rel=1e-12)
    assert (q[:200] >= thr).mean() <= 0.05
    assert m["threshold"] == thr
    assert calibrate_on_validation(z, labels)[1] == pytest.approx(choose_threshold(labels, q), rel=1e-12)  # Youden


# --- 4b. a real training run on two roots --------------------------------------------------------------
def test_train_on_two_roots_scores_validation_per_source(roots, tmp_path):
    studio, wild = roots
    cfg = TrainConfig(data=[str(studio), {"root": str(wild), "weight": 2.0}], source_weights={"gan": 0.5},
                      out=str(tmp_path / "run"), arch="df-cnn", model_config=TINY, epochs=2, batch_size=16,
                      batches_per_epoch=3, lr=3e-3, augment=None, workers=1, early_stopping=None,
                      max_false_alarm=0.1)
    summary = train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        by = {s["source"]: s for s in r["val_sources"]}
        assert set(by) == {"studio", "camera", "gan"}
        assert (by["studio"]["n"], by["camera"]["n_real"], by["gan"]["n_fake"]) == (16, 8, 8)
        assert by["camera"]["auc_against"] == "root" and by["gan"]["fake_recall"] is not None
        aucs = [s["roc_auc"] for s in r["val_sources"]]
        assert r["val_mean_source_auc"] == pytest.approx(np.mean(aucs))
        assert r["val_worst_source_auc"] == min(aucs) and r["val_worst_source"] in by
    best = max(range(2), key=lambda i: rows[i]["val_mean_source_auc"])  # first of equals
    assert summary["best_val_roc_auc"] == rows[best]["val_mean_source_auc"]
    model = load_model(tmp_path / "run" / "best.npz")
    assert model.meta["epoch"] == best + 1
    assert model.meta["validation_sources"] == rows[best]["val_sources"]
    assert model.meta["data"]["balance"] == "cells" and model.meta["data"]["roots"][1]["weight"] == 2.0
    assert model.meta["data"]["sources"]["train"]["gan"] == {"Real": 0, "Fake": 16}
    assert "false alarm" in model.meta["threshold_rule"]
    _, last = load_checkpoint(tmp_path / "run" / "last.npz")
    assert last["progress"]["best_auc"] == summary["best_val_roc_auc"]


# --- 5. evaluate: pooled roots, per-source rows, the table and the report -----------------------------
def test_evaluate_reports_per_source_rows_for_several_sources(roots, tmp_path):
    from deepfake_detector.evaluate import evaluate, format_evaluation

    studio, wild = roots
    single = evaluate(MeanModel(), studio)
    assert "sources" not in single and single["data"] == str(studio)  # one source: the output as before
    alone = evaluate(MeanModel(), wild)  # one root with a source column: per source
    assert [r["source"] for r in alone["sources"]] == ["camera", "gan"]
    r = evaluate(MeanModel(), [studio, wild], report_dir=tmp_path / "report")
    assert r["n"] == 32 and r["split"] == "studio/Test + wild/Test" and r["data"] == [str(studio), str(wild)]
    by = {s["source"]: s for s in r["sources"]}
    assert set(by) == {"studio", "camera", "gan"}
    samples = resolve_samples(studio)[0] + resolve_samples(wild)[0]
    images, labels, _ = load_arrays(samples, 32)
    p = MeanModel().predict_proba(images)
    expected = per_source_metrics(labels, p, [s.source for s in samples], 0.45, roots=[s.root for s in samples])
    assert r["sources"] == expected
    assert by["camera"]["false_alarm"] == pytest.approx(np.mean(p[[s.source == "camera" for s in samples]] >= 0.45))
    text = format_evaluation([r])
    assert "per source" in text and "fake_recall" in text and "camera" in text
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Per source" in page and "false-alarm rate" in page and "<th>gan</th>" in page
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["sources"] == expected


# --- 6. release: pooled calibration at a false-alarm budget, pooled test per source, the card ---------
def test_release_pools_calibration_and_test_over_roots(roots, tmp_path):
    from deepfake_detector.cli import main
    from deepfake_detector.release import release

    studio, wild = roots
    train(TrainConfig(data=[str(studio), str(wild)], out=str(tmp_path / "run"), arch="df-cnn", model_config=TINY,
                      epochs=1, batch_size=16, batches_per_epoch=2, augment=None, workers=1, early_stopping=None),
          progress=False)
    meta = release(tmp_path / "run", tmp_path / "ship.npz", test_data=[studio, wild],
                   calibrate_on=[studio, wild / "Validation"])
    model = load_model(tmp_path / "run" / "best.npz")
    samples = resolve_samples(studio, "validation")[0] + resolve_samples(wild / "Validation")[0]
    images, labels, _ = load_arrays(samples, 32)
    T, thr, _ = calibrate_on_validation(model.decision_logits(images), labels, max_false_alarm=0.05)
    shipped = load_model(tmp_path / "ship.npz")
    assert shipped.threshold == pytest.approx(thr, rel=1e-9) and shipped.temperature == pytest.approx(T, rel=1e-9)
    assert shipped.meta["calibrated_on"]["n"] == 32 and shipped.meta["calibrated_on"]["max_false_alarm"] == 0.05
    assert {r["source"] for r in shipped.meta["validation_sources"]} == {"studio", "camera", "gan"}
    assert meta["test"]["n"] == 32 and {r["source"] for r in meta["test_sources"]} == {"studio", "camera", "gan"}
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "false alarm <= 5.0 % of Validation reals" in card and "| Test | gan | 8 |" in card
    assert "| Validation | camera | 8 |" in card and "`studio`" in card and "DFDC" not in card
    # the old rule, asked for by name; a single --test keeps one source row
    youden = release(tmp_path / "run", tmp_path / "y.npz", test_data=studio, calibrate_on=[studio, wild],
                     threshold_rule="youden")
    z = model.decision_logits(images)
    assert youden["threshold"] == pytest.approx(calibrate_on_validation(z, labels)[1], rel=1e-9)
    assert [r["source"] for r in youden["test_sources"]] == ["studio"]
    # the command line: --calibrate-on and --test repeatable
    assert main(["release", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "cli" / "m.npz"),
                 "--calibrate-on", str(studio), "--calibrate-on", str(wild), "--test", str(studio), "--test",
                 str(wild), "--max-false-alarm", "0.2"]) == 0
    cli = load_model(tmp_path / "cli" / "m.npz")
    assert cli.meta["calibrated_on"]["max_false_alarm"] == 0.2 and cli.meta["test"]["n"] == 32
    assert cli.threshold == pytest.approx(calibrate_on_validation(z, labels, max_false_alarm=0.2)[1], rel=1e-9)


# --- the real data ------------------------------------------------------------------------------------
def test_faces_wild_sources_from_its_metadata(data_root):
    root = data_root / "faces-wild"
    if not root.is_dir():
        pytest.skip(f"no faces-wild at {root}")
    s = discover(root)
    counts = source_counts(s.train)
    assert counts["ffhq"] == {"Real": 772, "Fake": 0} and counts["sd21"] == {"Real": 0, "Fake": 277}
    assert set(counts) == {"ffhq", "utkface", "stylegan-140k", "boredhumans", "sd21"}
    assert {x.root for x in s.test} == {"faces-wild"}
    check_disjoint(s)


@pytest.mark.slow
def test_a_short_training_on_both_shared_roots_learns_every_source(data_root, tmp_path):
    """A few hundred real images from dfdc-faces and faces-wild, a tiny from-scratch CNN, a
    few epochs: the mean per-source validation AUC is well above chance."""
    from deepfake_detector.train import train

    data = [{"root": str(data_root / "dfdc-faces"), "name": "dfdc-faces",
             "max_per_class": {"train": 120, "validation": 60, "test": 1}},
            {"root": str(data_root / "faces-wild"), "name": "faces-wild",
             "max_per_class": {"train": 120, "validation": 60, "test": 1}}]
    cfg = TrainConfig(data=data, out=str(tmp_path / "run"), arch="df-cnn",
                      model_config={"input_size": 48, "widths": [8, 16, 32, 32, 32], "depths": [1, 1, 1, 1, 1]},
                      epochs=4, batch_size=32, batches_per_epoch=20, lr=3e-3, balance="cells", cache=True,
                      workers=1, early_stopping=None, checkpoint_every=0)
    summary = train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(r["val_mean_source_auc"] for r in rows)
    assert summary["best_val_roc_auc"] == pytest.approx(best)
    assert best > 0.65, rows[-1]["val_sources"]
    assert {r["source"] for r in rows[-1]["val_sources"]} == {"dfdc-faces", "ffhq", "utkface", "stylegan-140k",
                                                              "boredhumans", "sd21"}
