"""Batches: reproducibility, resumption, balancing, bad files, caching, threads (data.loader)."""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_detector.data import (
    AugmentConfig,
    DataLoader,
    Sample,
    eval_transform,
    load_arrays,
    load_image,
    load_split,
    read_groups,
)
from deepfake_detector.data.sbi import SBIConfig

S = 16  # a small input size keeps these tests fast


def write_images(root: Path, n_real: int, n_fake: int, size=24) -> list[Sample]:
    """Tiny random JPEG/PNG images, each visibly different."""
    rng = np.random.default_rng(123)
    out = []
    for label, n in ((0, n_real), (1, n_fake)):
        for i in range(n):
            path = root / f"{label}_{i:03d}.{'png' if i % 4 == 0 else 'jpg'}"
            Image.fromarray(rng.integers(0, 256, (size, size + i % 5, 3), dtype=np.uint8)).save(path)
            out.append(Sample(str(path), label, str(path)))
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Sample]:
    return write_images(tmp_path_factory.mktemp("imgs"), 10, 25)


def run(loader: DataLoader, epoch=0, start=0) -> list:
    return [tuple(b) for b in loader.epoch(epoch, start)]


def assert_same_batches(a: list, b: list):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dataloader")]


def test_batches_shapes_and_epoch_covers_every_sample_once(samples):
    loader = DataLoader(samples, S, 8, augment=AugmentConfig(), workers=2)
    batches = run(loader)
    assert len(loader) == 5 == len(batches)  # ceil(35 / 8)
    for images, labels, idx in batches:
        assert images.dtype == np.uint8 and images.shape[1:] == (S, S, 3)
        assert labels.dtype == np.int64 and len(labels) == len(images) == len(idx)
        np.testing.assert_array_equal(labels, [samples[i].label for i in idx])
    assert sorted(np.concatenate([b[2] for b in batches])) == list(range(35))
    assert [len(b[1]) for b in batches] == [8, 8, 8, 8, 3]


def test_deterministic_under_seed_and_independent_of_threads(samples):
    cfg = AugmentConfig()
    a = run(DataLoader(samples, S, 8, augment=cfg, seed=7, workers=2, prefetch=3), epoch=1)
    b = run(DataLoader(samples, S, 8, augment=cfg, seed=7, workers=0), epoch=1)
    c = run(DataLoader(samples, S, 8, augment=cfg, seed=7, workers=1, prefetch=0), epoch=1)
    assert_same_batches(a, b)
    assert_same_batches(a, c)
    other_epoch = run(DataLoader(samples, S, 8, augment=cfg, seed=7, workers=0), epoch=2)
    assert not np.array_equal(np.concatenate([x[2] for x in a]), np.concatenate([x[2] for x in other_epoch]))
    other_seed = run(DataLoader(samples, S, 8, augment=cfg, seed=8, workers=0), epoch=1)
    assert not np.array_equal(np.concatenate([x[2] for x in a]), np.concatenate([x[2] for x in other_seed]))


def test_resume_from_start_batch_gives_the_same_later_batches(samples):
    mk = lambda: DataLoader(samples, S, 6, augment=AugmentConfig(), balance="weighted", seed=3, workers=2)
    full = run(mk(), epoch=4)
    for start in (1, 3, len(full) - 1, len(full)):
        assert_same_batches(run(mk(), epoch=4, start=start), full[start:])
    with pytest.raises(ValueError):
        mk().epoch(0, start_batch=len(full) + 1)


def test_augmentation_is_applied_per_sample_with_its_own_stream(samples):
    plain = run(DataLoader(samples, S, 35, shuffle=False, workers=0))[0][0]
    aug = run(DataLoader(samples, S, 35, shuffle=False, augment=AugmentConfig(flip_p=1.0), workers=0))[0][0]
    expected = np.stack([eval_transform(load_image(s.path), S) for s in samples])
    np.testing.assert_array_equal(plain, expected)  # no augmentation: the files, resized
    assert not np.array_equal(aug, plain)


def test_undersample_gives_equal_classes_each_epoch(samples):
    loader = DataLoader(samples, S, 4, balance="undersample", seed=1, workers=0)
    assert len(loader) == 5  # 2 x 10 minority images
    subsets = []
    for epoch in range(3):
        order = loader.epoch_order(epoch)
        labels = loader.labels[order]
        assert (labels == 0).sum() == (labels == 1).sum() == 10
        assert len(set(order.tolist())) == 20  # no repeats
        subsets.append(frozenset(order[labels == 1].tolist()))
    assert len(set(subsets)) > 1  # a different majority subset each epoch
    got = np.concatenate([b[1] for b in run(loader, epoch=2)])
    assert (got == 0).sum() == (got == 1).sum() == 10


def test_weighted_balance_is_balanced_on_average(samples):
    loader = DataLoader(samples, S, 8, balance="weighted", seed=0, workers=0)
    labels = np.concatenate([loader.labels[loader.epoch_order(e)] for e in range(60)])
    assert len(labels) == 60 * 35
    assert abs(labels.mean() - 0.5) < 0.03  # without weights it would be 25/35 = 0.71
    assert len(set(loader.epoch_order(0).tolist())) < 35  # drawn with replacement


def test_batches_per_epoch_and_drop_last(samples):
    loader = DataLoader(samples, S, 8, batches_per_epoch=12, workers=0, seed=2)
    assert len(loader) == 12 and len(loader.epoch_order(0)) == 96  # extended with further draws
    batches = run(loader)
    assert len(batches) == 12 and all(len(b[1]) == 8 for b in batches)
    assert len(DataLoader(samples, S, 8, drop_last=True, workers=0)) == 4
    with pytest.raises(ValueError):
        DataLoader(samples, S, 8, balance="oversample")


def test_unreadable_files_are_skipped_counted_and_logged_once(tmp_path, samples, caplog):
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(Path(samples[1].path).read_bytes()[:200])
    bad = [Sample(str(text), 1, "t"), Sample(str(truncated), 0, "u")]
    loader = DataLoader(samples[:6] + bad, S, 4, augment=AugmentConfig(), workers=2)
    with caplog.at_level(logging.WARNING, logger="deepfake_detector.data"):
        for epoch in range(3):
            batches = run(loader, epoch)
            seen = np.concatenate([b[2] for b in batches])
            assert sorted(seen.tolist()) == list(range(6))  # every good file, no bad one
    assert set(loader.skipped) == {str(text), str(truncated)}
    assert all(loader.skipped.values())  # a reason each
    for p in (text, truncated):
        assert sum(str(p) in r.getMessage() for r in caplog.records) == 1


def test_closing_or_dropping_the_generator_stops_the_threads(samples):
    loader = DataLoader(samples, S, 2, workers=2, prefetch=4)
    gen = loader.epoch(0)
    next(gen)
    assert loader_threads()
    gen.close()
    assert not loader_threads()
    gen = loader.epoch(1)
    next(gen)
    del gen
    gc.collect()
    assert not loader_threads()


def test_cache_serves_decoded_images_without_rereading(tmp_path):
    samples = write_images(tmp_path, 4, 4)
    uncached = run(DataLoader(samples, S, 3, workers=0, seed=5), epoch=0)
    loader = DataLoader(samples, S, 3, workers=2, seed=5, cache=True)
    assert_same_batches(run(loader, 0), uncached)  # evaluation: cached at S, identical pixels
    for s in samples:
        Path(s.path).unlink()
    assert sum(len(b[1]) for b in run(loader, 1)) == 8 and not loader.skipped
    aug = DataLoader(samples[:0] + write_images(tmp_path, 2, 2), S, 4, augment=AugmentConfig(), cache=True)
    assert aug._stored == int(np.ceil(S * 1.15))  # headroom for random crops
    assert run(aug, 0)[0][0].shape == (4, S, S, 3)


def test_load_arrays_keeps_order_and_reports_errors(tmp_path, samples):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    subset = samples[:3] + [Sample(str(bad), 1, "b")] + samples[-2:]
    images, labels, errors = load_arrays(subset, S, workers=2, batch_size=2)
    assert images.shape == (5, S, S, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(images[3], eval_transform(load_image(samples[-2].path), S))
    assert list(errors) == [str(bad)]


def test_no_validation_or_test_file_in_training_batches(dfdc_faces):
    """A training loader over real Train files yields only those files' pixels."""
    groups = read_groups(dfdc_faces / "metadata.csv")
    pick = lambda split, n: [s for label in (0, 1) for s in
                             [x for x in load_split(dfdc_faces, split, groups) if x.label == label][:n]]
    train, held = pick("train", 12), pick("validation", 4) + pick("test", 4)
    held_paths, held_groups = {s.path for s in held}, {s.group for s in held}
    assert not held_groups & {s.group for s in train}
    loader = DataLoader(train, 32, 8, augment=AugmentConfig(), balance="undersample", workers=2, seed=0)
    for epoch in range(2):
        for _, labels, idx in loader.epoch(epoch):
            for i, label in zip(idx, labels, strict=True):
                assert train[i].path not in held_paths and train[i].group not in held_groups
                assert label == ("/Fake/" in train[i].path)
    # the pixels too: without augmentation every image equals its own file, resized
    evaluation = DataLoader(train, 32, 8, workers=2)
    held_pixels = {eval_transform(load_image(s.path), 32).tobytes() for s in held}
    for images, _, idx in evaluation.epoch(0):
        for img, i in zip(images, idx, strict=True):
            np.testing.assert_array_equal(img, eval_transform(load_image(train[i].path), 32))
            assert img.tobytes() not in held_pixels


def test_loader_sbi_labels(synthetic_tree):
    samples = load_split(synthetic_tree, "train")
    plain = DataLoader(samples, 32, 8, workers=1, seed=1)
    sbi = DataLoader(samples, 32, 8, workers=1, seed=1, synthesize=SBIConfig(probability=1.0))
    sbi2 = DataLoader(samples, 32, 8, workers=0, seed=1, synthesize=SBIConfig(probability=1.0))
    for bp, bs, bs2 in zip(plain.epoch(0), sbi.epoch(0), sbi2.epoch(0)):
        assert np.array_equal(bp.indices, bs.indices)
        assert (bs.labels == 1).all()                       # every real became a pseudo-fake
        real = bp.labels == 0
        assert not np.array_equal(bp.images[real], bs.images[real])
        assert np.array_equal(bp.images[~real], bs.images[~real])  # fakes untouched
        assert np.array_equal(bs.images, bs2.images) and np.array_equal(bs.labels, bs2.labels)  # threads: same


@pytest.fixture(scope="module")
def synthetic_tree(tmp_path_factory):
    from .synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synthetic"))
