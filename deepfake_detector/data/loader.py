"""Batches of uint8 images from samples: shuffled, balanced, augmented, prefetched.

Reproducibility contract: the sample order of epoch ``e`` depends only on ``(seed, e)``
and the augmentation of the image at position ``k`` of that order only on
``(seed, e, k)`` (a fresh ``np.random.default_rng`` each). Threads therefore change
nothing, and ``loader.epoch(e, start_batch=b)`` yields exactly the batches an
uninterrupted epoch would have yielded from batch ``b`` on: that is how training
resumes mid-epoch.

Balance ``"cells"`` draws every epoch with replacement so that each (source x class) cell
(:func:`cell_key`) has an expected share of the epoch of ``weight_c / sum(weights)``,
uniform within the cell: several datasets and generators trained on at once, none of them
drowning the others by its size.

Unreadable files are dropped from their batch (which comes out smaller; a batch left
empty is not yielded), logged once and recorded in ``loader.skipped``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple

import cv2
import numpy as np

from .datasets import Sample
from .decode import ImageDecodeError, load_image, resize
from .sbi import SBIConfig, maybe_sbi
from .transforms import AugmentConfig, augment, eval_transform

__all__ = ["Batch", "DataLoader", "cell_key", "load_arrays"]

log = logging.getLogger(__name__)

BALANCE_MODES = ("undersample", "weighted", "cells", None)
_ORDER, _SAMPLE, _SYNTH = 0, 1, 2  # stream tags: order [seed, epoch, 0], sample [seed, epoch, 1, k],
# pseudo-fake synthesis [seed, epoch, 2, k] (its own stream: turning it on changes no augmentation draw)


_cv2_lock = threading.Lock()
_cv2_users = 0
_cv2_saved = 0


@contextmanager
def _cv2_single_threaded():
    """OpenCV's own thread pool off while our workers run (process-wide, so counted and restored).

    Our threads are the parallelism; OpenCV splitting each small resize across the same
    cores on top only adds contention (INTER_AREA 224 -> 128 measured 3x slower).
    """
    global _cv2_users, _cv2_saved
    with _cv2_lock:
        if _cv2_users == 0:
            _cv2_saved = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _cv2_users += 1
    try:
        yield
    finally:
        with _cv2_lock:
            _cv2_users -= 1
            if _cv2_users == 0:
                cv2.setNumThreads(_cv2_saved)


def cell_key(sample: Sample) -> tuple[str, str, int]:
    """The balancing cell of a sample: ``(root, source, label)``, its (source x class) cell
    (the root keeps two datasets' sources of one name apart)."""
    return (sample.root, sample.source, int(sample.label))


class Batch(NamedTuple):
    images: np.ndarray  # uint8 (B, S, S, 3) RGB
    labels: np.ndarray  # int64 (B,)
    indices: np.ndarray  # int64 (B,): positions in the loader's ``samples``


class DataLoader:
    """Epochs of batches over ``samples``.

    Parameters
    ----------
    samples : labelled images (label 0 = Real, 1 = Fake)
    input_size : side S of the square images yielded
    batch_size : images per batch (the last one may be smaller unless ``drop_last``)
    shuffle : shuffle each epoch (a different, seeded order per epoch)
    augment : training augmentation; None (evaluation) resizes only
    balance : "undersample": each epoch draws the minority-class count from every class
        (without replacement; the original tool's way); "weighted": draws ``len(samples)``
        with replacement, class weights 1 / count; "cells": draws ``len(samples)`` with
        replacement, each (source x class) cell (:func:`cell_key`) with expected share
        ``cell_weights[c] / sum(cell_weights)`` (1 for a cell not listed), uniform within
        the cell, whatever the cell sizes; None: every sample once
    seed : the root of all randomness
    workers : decoding threads (0: decode in the calling thread)
    prefetch : batches kept in flight ahead of the consumer
    cache : keep decoded images in memory, at ``ceil(S * 1.15)`` square when random crops
        are on (crop headroom), ``S`` otherwise: 30k images at S = 128 take about 2 GB
    batches_per_epoch : fixed epoch length; the order is extended with further seeded
        draws when the natural epoch is shorter
    drop_last : drop a final partial batch
    synthesize : self-blended pseudo-fakes (:mod:`.sbi`): each real sample drawn becomes a
        pseudo-fake (label 1) with probability ``synthesize.probability``; None: off
    cell_weights : with ``balance="cells"``: ``{(root, source, label): weight}``
    """

    def __init__(self, samples: Sequence[Sample], input_size: int, batch_size: int, *,
                 shuffle: bool = True, augment: AugmentConfig | None = None, balance: str | None = None,
                 seed: int = 0, workers: int = 2, prefetch: int = 2, cache: bool = False,
                 batches_per_epoch: int | None = None, drop_last: bool = False,
                 synthesize: SBIConfig | None = None, cell_weights=None):
        if balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, got {balance!r}")
        if batch_size < 1 or input_size < 1 or workers < 0 or prefetch < 0:
            raise ValueError("batch_size and input_size must be >= 1, workers and prefetch >= 0")
        self.samples = list(samples)
        if batches_per_epoch is not None and (batches_per_epoch < 1 or not self.samples):
            raise ValueError(f"batches_per_epoch={batches_per_epoch} needs >= 1 and some samples")
        self.labels = np.array([s.label for s in self.samples], dtype=np.int64)
        if balance is not None and len(np.unique(self.labels)) < 2 and not (balance == "cells" and synthesize):
            # (cells of real samples alone are fine when the fakes are made from them on the fly)
            raise ValueError(f"balance={balance!r} needs samples of both classes")
        self.input_size, self.batch_size = int(input_size), int(batch_size)
        self.shuffle, self.augment, self.balance = shuffle, augment, balance
        self.seed, self.workers, self.prefetch = int(seed), int(workers), int(prefetch)
        self.batches_per_epoch, self.drop_last = batches_per_epoch, drop_last
        self.synthesize = synthesize
        self.skipped: dict[str, str] = {}  # path -> reason, for every unreadable file met
        self._lock = threading.Lock()
        self._by_class = [np.flatnonzero(self.labels == c) for c in range(2)]
        self.cells: dict[tuple[str, str, int], int] = {}  # cell -> samples in it, first-seen order
        for smp in self.samples:
            k = cell_key(smp)
            self.cells[k] = self.cells.get(k, 0) + 1
        self.cell_weights = {k: float((cell_weights or {}).get(k, 1.0)) for k in self.cells}
        if any(w < 0 or not math.isfinite(w) for w in self.cell_weights.values()) or (
                balance == "cells" and not sum(self.cell_weights.values()) > 0):
            raise ValueError(f"cell weights must be finite, >= 0 and not all 0: {self.cell_weights}")
        self._p_cells = None
        if balance == "cells":
            keys = [cell_key(smp) for smp in self.samples]
            total = sum(self.cell_weights.values())
            p = np.array([self.cell_weights[k] / (total * self.cells[k]) for k in keys])
            self._p_cells = p / p.sum()
        self._stored = self.input_size
        if augment is not None:
            self._stored = math.ceil(self.input_size * augment.margin)
        shape = (len(self.samples), self._stored, self._stored, 3)
        self._cache = np.empty(shape, np.uint8) if cache else None  # pages are committed as filled
        self._cached = np.zeros(len(self.samples), bool)

    # --- the order ------------------------------------------------------------------------
    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        """One natural epoch's worth of sample positions."""
        n = len(self.samples)
        if self.balance == "undersample":
            m = min(len(ix) for ix in self._by_class)
            idx = np.concatenate([rng.choice(ix, m, replace=False) for ix in self._by_class])
            return rng.permutation(idx) if self.shuffle else np.sort(idx)
        if self.balance == "weighted":
            w = 1.0 / np.bincount(self.labels, minlength=2)[self.labels]
            return rng.choice(n, n, replace=True, p=w / w.sum())
        if self.balance == "cells":
            return rng.choice(n, n, replace=True, p=self._p_cells)
        return rng.permutation(n) if self.shuffle else np.arange(n)

    def _natural_length(self) -> int:
        if self.balance == "undersample":
            return 2 * min(len(ix) for ix in self._by_class)
        return len(self.samples)

    def cell_shares(self) -> dict[tuple[str, str, int], float]:
        """Each cell's expected share of an epoch under ``balance="cells"``:
        ``weight / sum(weights)``."""
        total = sum(self.cell_weights.values())
        return {k: w / total for k, w in self.cell_weights.items()}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """int64 positions into ``samples`` for every image of epoch ``epoch``, in batch order."""
        rng = np.random.default_rng([self.seed, epoch, _ORDER])
        need = len(self) * self.batch_size if self.batches_per_epoch else None
        chunks, total = [], 0
        while True:
            chunks.append(self._draw(rng).astype(np.int64))
            total += len(chunks[-1])
            if need is None or total >= need or total == 0:
                break
        order = np.concatenate(chunks)
        return order[:need] if need is not None else order

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.batches_per_epoch:
            return self.batches_per_epoch
        n = self._natural_length()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # --- the batches ----------------------------------------------------------------------
    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Yield the batches of epoch ``epoch`` from batch ``start_batch`` on.

        Yields
        ------
        Batch(images uint8 (B, S, S, 3), labels int64 (B,), indices int64 (B,))

        Background threads keep ``prefetch`` batches ahead; they stop when the generator
        is exhausted, closed or garbage-collected.
        """
        n_batches = len(self)
        if not 0 <= start_batch <= n_batches:
            raise ValueError(f"start_batch {start_batch} outside 0..{n_batches}")
        order = self.epoch_order(epoch)
        run = self._threaded if self.workers > 0 else self._serial
        return run(epoch, order, start_batch, n_batches)

    def _serial(self, epoch, order, start, n_batches):
        for b in range(start, n_batches):
            batch = self._finish(*self._build(epoch, order, b))
            if batch is not None:
                yield batch

    def _threaded(self, epoch, order, b, n_batches):
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dataloader")
        pending: deque[tuple[list[Future], np.ndarray, np.ndarray]] = deque()
        try:
            with _cv2_single_threaded():
                while b < n_batches or pending:
                    while b < n_batches and len(pending) <= self.prefetch:
                        pending.append(self._submit(pool, epoch, order, b))
                        b += 1
                    futures, images, idx, labels = pending.popleft()
                    ok = np.concatenate([f.result() for f in futures])
                    batch = self._finish(images, idx, ok, labels)
                    if batch is not None:
                        yield batch
        finally:
            for futures, *_ in pending:
                for f in futures:
                    f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def __iter__(self) -> Iterator[Batch]:
        """Epoch 0; use :meth:`epoch` in a training loop."""
        return self.epoch(0)

    def _positions(self, order: np.ndarray, b: int) -> range:
        return range(b * self.batch_size, min((b + 1) * self.batch_size, len(order)))

    def _build(self, epoch, order, b):
        pos = self._positions(order, b)
        images = np.empty((len(pos), self.input_size, self.input_size, 3), np.uint8)
        labels = self.labels[order[pos.start:pos.stop]]  # a copy: pseudo-fakes relabel rows of it
        ok = self._fill(images, labels, epoch, order, pos, 0)
        return images, order[pos.start:pos.stop], ok, labels

    def _submit(self, pool, epoch, order, b):
        pos = self._positions(order, b)
        images = np.empty((len(pos), self.input_size, self.input_size, 3), np.uint8)
        n_chunks = max(1, min(self.workers, len(pos)))
        bounds = np.linspace(0, len(pos), n_chunks + 1).astype(int)
        labels = self.labels[order[pos.start:pos.stop]]  # a copy: pseudo-fakes relabel rows of it
        futures = [pool.submit(self._fill, images, labels, epoch, order, pos[lo:hi], lo)
                   for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        return futures, images, order[pos.start:pos.stop], labels

    def _fill(self, out: np.ndarray, labels: np.ndarray, epoch: int, order: np.ndarray, positions: range,
              row0: int) -> np.ndarray:
        """Write the images at epoch ``positions`` into ``out[row0:]`` (and pseudo-fakes' label 1
        into ``labels[row0:]``); per-row success flags."""
        ok = np.zeros(len(positions), bool)
        for j, k in enumerate(positions):
            img = self._image(int(order[k]))
            if img is None:
                continue
            if self.synthesize is not None and labels[row0 + j] == 0:
                img, labels[row0 + j] = maybe_sbi(img, np.random.default_rng([self.seed, epoch, _SYNTH, k]),
                                                  self.synthesize)
            if self.augment is None:
                out[row0 + j] = eval_transform(img, self.input_size)
            else:
                rng = np.random.default_rng([self.seed, epoch, _SAMPLE, k])
                out[row0 + j] = augment(img, self.input_size, rng, self.augment)
            ok[j] = True
        return ok

    def _finish(self, images, idx, ok, labels) -> Batch | None:
        if not ok.any():
            log.warning("a batch had no readable image and was skipped")
            return None
        if not ok.all():
            images, idx, labels = images[ok], idx[ok], labels[ok]
        return Batch(images, labels, idx)

    def _image(self, i: int) -> np.ndarray | None:
        """Decoded image ``i`` (stored size when caching), or None when unreadable."""
        if self._cache is not None and self._cached[i]:
            return self._cache[i]
        path = self.samples[i].path
        if path in self.skipped:
            return None
        try:
            img = load_image(path)  # full decode: pixels identical to eval_transform(load_image(p))
        except ImageDecodeError as e:
            with self._lock:
                new = path not in self.skipped
                self.skipped[path] = e.reason
            if new:
                log.warning("skipping unreadable image: %s", e)
            return None
        if self._cache is not None:
            self._cache[i] = resize(img, self._stored)
            self._cached[i] = True
            return self._cache[i]
        return img


def load_arrays(samples: Sequence[Sample], size: int, workers: int = 2,
                batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Decode a whole (small) split for evaluation or prediction, in order, no augmentation.

    Returns
    -------
    images : uint8 (N, size, size, 3), the readable samples in input order
    labels : int64 (N,)
    errors : {path: reason} for the samples left out
    """
    loader = DataLoader(samples, size, batch_size, shuffle=False, augment=None, workers=workers)
    batches = list(loader.epoch(0))
    if not batches:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64), dict(loader.skipped)
    return (np.concatenate([b.images for b in batches]), np.concatenate([b.labels for b in batches]),
            dict(loader.skipped))
