"""The trainer on an easy synthetic task and on real images: learning, resume, file sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deepfake_detector.data import DataLoader, Splits
from deepfake_detector.models import load_model
from deepfake_detector.nn.io import load_arrays
from deepfake_detector.train import TrainConfig, build_splits, train

from .synthetic import make_dataset, write_photo_splits

TINY_DF = {"input_size": 32, "widths": [8, 8, 16, 16, 16], "depths": [1, 1, 1, 1, 1], "dropout": 0.2}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"))


def cfg_for(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), arch="df-cnn", model_config=TINY_DF, epochs=2,
                batch_size=16, lr=3e-3, augment={"jpeg_p": 0.0}, cache=True, workers=1,
                checkpoint_every=2, early_stopping=None)
    base.update(kw)
    return TrainConfig(**base)


def test_short_training_learns_the_synthetic_task(synthetic, tmp_path):
    cfg = cfg_for(synthetic, tmp_path / "run", epochs=4, model_config=dict(TINY_DF, dropout=0.0),
                  augment=None)
    summary = train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and summary["epochs_run"] == 4
    assert summary["best_val_roc_auc"] > 0.85  # chance is 0.5
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    best = load_model(tmp_path / "run" / "best.npz")
    assert 0 < best.threshold < 1 and best.temperature > 0
    assert best.meta["validation"]["n"] == 32
    assert (tmp_path / "run" / "curves.png").stat().st_size > 5000
    assert json.loads((tmp_path / "run" / "config.json").read_text())["arch"] == "df-cnn"


def test_resume_mid_epoch_gives_the_uninterrupted_weights(synthetic, tmp_path):
    full = cfg_for(synthetic, tmp_path / "full")
    train(full, progress=False)
    part = cfg_for(synthetic, tmp_path / "part")
    stop = train(part, progress=False, stop_after_steps=7)  # 5 batches per epoch: stops in epoch 2
    assert stop["stopped"] == "stop_after_steps"
    _, meta = load_arrays(tmp_path / "part" / "last.npz")
    assert (meta["progress"]["epoch"], meta["progress"]["batch"]) == (1, 2)
    train(part, resume=True, progress=False)
    a, _ = load_arrays(tmp_path / "full" / "last.npz")
    b, _ = load_arrays(tmp_path / "part" / "last.npz")
    for group in ("param", "buffer", "optim"):
        assert a[group].keys() == b[group].keys()
        for k in a[group]:
            np.testing.assert_array_equal(a[group][k], b[group][k], err_msg=f"{group}/{k}")
    rows = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0, 1]  # no duplicate epoch lines


def test_no_validation_or_test_file_reaches_a_training_batch(dfdc_faces, tmp_path, monkeypatch):
    cfg = cfg_for(dfdc_faces, tmp_path / "real", epochs=1, batches_per_epoch=3, model_config=TINY_DF)
    splits = build_splits(cfg)
    held_out = {s.path for s in splits.validation + splits.test}
    held_groups = {s.group for s in splits.validation + splits.test}
    assert held_out and not held_out & {s.path for s in splits.train}
    # a few hundred real images keep this fast; the subset keeps whole splits apart
    small = Splits(splits.train[::60], splits.validation[::20], splits.test[::20])
    seen = []
    original = DataLoader.epoch

    def spy(self, epoch, start_batch=0):
        for batch in original(self, epoch, start_batch):
            if self.shuffle:  # the training loader (validation is decoded in order)
                seen.extend(self.samples[i] for i in batch.indices)
            yield batch

    monkeypatch.setattr(DataLoader, "epoch", spy)
    summary = train(cfg, progress=False, splits=small)
    assert len(seen) == 3 * 16
    assert not {s.path for s in seen} & held_out
    assert not {s.group for s in seen} & held_groups
    assert summary["epochs_run"] == 1


def test_carved_validation_from_explicit_dirs(synthetic, tmp_path):
    cfg = TrainConfig(real_dirs=[str(synthetic / "Train" / "Real")], fake_dirs=[str(synthetic / "Train" / "Fake")],
                      val_fraction=0.25)
    splits = build_splits(cfg)
    assert len(splits.validation) == 20 and len(splits.train) == 60


def test_train_with_faces_crops_whole_photos_first(tmp_path):
    """Whole 'photos' (a face pasted on a background) are cropped to the face before training;
    a photo without a face is left out and counted."""
    from PIL import Image

    from .test_video import face_frames

    frames, boxes = face_frames(6)
    write_photo_splits(tmp_path / "photos", frames, 3)
    Image.fromarray(frames[0] * 0 + 90).save(tmp_path / "photos" / "Train" / "Real" / "noface.png")
    cfg = cfg_for(tmp_path / "photos", tmp_path / "run", epochs=1, faces=True, batch_size=2)
    summary = train(cfg, progress=False)
    crops = sorted((tmp_path / "run" / "faces" / "train").rglob("*.png"))
    assert len(crops) == 6 and summary["epochs_run"] == 1  # the faceless photo was left out
    w, h = Image.open(crops[0]).size
    x1, y1, x2, y2 = boxes[0]
    assert w == h and abs(w - max(x2 - x1, y2 - y1)) < 0.35 * w  # about the face box, not the photo


def test_release_ships_weights_only_with_test_metrics(synthetic, tmp_path):
    train(cfg_for(synthetic, tmp_path / "run", epochs=1), progress=False)
    from deepfake_detector.release import release

    meta = release(tmp_path / "run", tmp_path / "ship" / "model.npz", test_data=synthetic)
    groups, saved = load_arrays(tmp_path / "ship" / "model.npz")
    assert "optim" not in groups and "progress" not in saved
    assert saved["test"]["n"] == 32 and saved["test"]["split"].endswith("Test") and meta["test"] == saved["test"]
    card = (tmp_path / "ship" / "MODEL_CARD.md").read_text()
    assert "| Test | 32 |" in card and "df-cnn" in card


def test_release_calibrate_on_refits_threshold_and_temperature_on_that_folder(synthetic, tmp_path):
    train(cfg_for(synthetic, tmp_path / "run", epochs=1), progress=False)
    from deepfake_detector.calibration import choose_threshold, fit_temperature
    from deepfake_detector.data import load_arrays as load_images
    from deepfake_detector.data import load_split
    from deepfake_detector.release import release

    val = synthetic / "Validation"
    # the rule this test checks (release's default is now a 5 % false-alarm budget)
    meta = release(tmp_path / "run", tmp_path / "ship.npz", calibrate_on=val, threshold_rule="youden")
    # the expectation, computed here from the model's logits on that folder
    model = load_model(tmp_path / "run" / "best.npz")
    images, labels, _ = load_images(load_split(synthetic, "Validation"), model.input_size)
    z = model.logits(images).astype(np.float64)
    z = z[:, 1] - z[:, 0]
    t = fit_temperature(z, labels)
    shipped = load_model(tmp_path / "ship.npz")
    assert shipped.temperature == pytest.approx(t, rel=1e-9) and meta["temperature"] == shipped.temperature
    assert shipped.threshold == pytest.approx(choose_threshold(labels, 1 / (1 + np.exp(-z / t))), rel=1e-9)
    assert shipped.meta["calibrated_on"]["n"] == len(labels) == shipped.meta["validation"]["n"]
    assert shipped.meta["calibrated_on"]["split"] == "Validation"


def test_torch_train_resume_exact(synthetic, tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)

    def cfg_for(out):
        return TrainConfig(data=str(synthetic), out=str(out), arch="mobilenet-v2",
                           model_config={"input_size": 32, "pretrained": False, "dropout": 0.3}, epochs=2,
                           batch_size=8, batches_per_epoch=3, lr=1e-3, augment={"jpeg_p": 0.0}, cache=True,
                           workers=1, checkpoint_every=2, early_stopping=None, synthesize_fakes="sbi")

    train(cfg_for(tmp_path / "full"), progress=False)
    part = cfg_for(tmp_path / "part")
    train(part, progress=False, stop_after_steps=4)
    train(part, resume=True, progress=False)
    a, _ = load_arrays(tmp_path / "full" / "last.npz")
    b, _ = load_arrays(tmp_path / "part" / "last.npz")
    for g in ("param", "buffer", "optim"):
        assert a[g].keys() == b[g].keys()
        for k in a[g]:
            np.testing.assert_array_equal(a[g][k], b[g][k], err_msg=k)
    assert load_model(tmp_path / "full" / "best.npz").kind == "torch"


def test_release_with_flip_tta_recalibrates_with_it_and_ships_it(synthetic, tmp_path):
    train(cfg_for(synthetic, tmp_path / "run", epochs=1), progress=False)
    from deepfake_detector.calibration import fit_temperature
    from deepfake_detector.data import load_arrays as load_images
    from deepfake_detector.data import load_split
    from deepfake_detector.release import release

    with pytest.raises(ValueError, match="calibrate_on"):
        release(tmp_path / "run", tmp_path / "ship.npz", tta="flip")
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        release(tmp_path / "run", tmp_path / "ship.npz", tta="rotate", calibrate_on=synthetic / "Validation")
    release(tmp_path / "run", tmp_path / "ship.npz", tta="flip", calibrate_on=synthetic / "Validation")
    model = load_model(tmp_path / "run" / "best.npz")
    images, labels, _ = load_images(load_split(synthetic, "Validation"), model.input_size)
    z = (model.logits(images) + model.logits(images[:, :, ::-1].copy())).astype(np.float64) / 2
    shipped = load_model(tmp_path / "ship.npz")
    assert shipped.tta == "flip"
    assert shipped.temperature == pytest.approx(fit_temperature(z[:, 1] - z[:, 0], labels), rel=1e-6)
    assert "mirror image" in (tmp_path / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_is_a_valid_recipe(path):
    from deepfake_detector.models import list_models
    from deepfake_detector.train import make_synthesizer

    cfg = TrainConfig.from_file(path)
    assert cfg.arch in list_models() and cfg.epochs >= 1
    make_synthesizer(cfg)  # an unknown synthesizer or SBI field is an error here


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs" / "heads").glob("*.json")),
                         ids=lambda p: p.name)
def test_every_shipped_head_config_is_a_valid_recipe(path):
    from deepfake_detector.models import create_model
    from deepfake_detector.train_heads import HeadConfig

    cfg = HeadConfig.from_file(path)
    assert cfg.epochs >= 1 and cfg.data
    create_model(cfg.arch, **cfg.model_config)  # an unknown head or builder argument is an error here
