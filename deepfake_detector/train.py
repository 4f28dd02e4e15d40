"""The training loop: validation every epoch, best-by-AUC checkpoints, exact resume.

A run folder holds ``config.json``, ``metrics.jsonl``, ``curves.png``, ``last.npz`` (every
epoch and every ``checkpoint_every`` batches, with the optimiser state) and ``best.npz``
(best mean per-source validation ROC-AUC, with its threshold and temperature). ``resume``
continues exactly where ``last.npz`` stopped, to the same weights and ``metrics.jsonl`` rows as an
uninterrupted run (a mid-epoch ``last.npz`` carries the epoch's running loss and accuracy), and
removes the ``.tmp-*.npz`` a checkpoint write killed half-way left behind.
Shipping a run: :mod:`deepfake_detector.release`.

Several sources at once: ``data`` may list several dataset roots (each with its own
splits, optionally face-cropped first and weighted); batches are then balanced over
(source x class) cells (``balance="cells"``, the ``"auto"`` choice when there is more than
one source), and validation is scored per source every epoch (:func:`~deepfake_detector.
metrics.per_source_metrics`), the best checkpoint being the one with the best mean
per-source AUC (the pooled AUC when there is one source). Over 400 lines: the loop and the
config it reads, resume and checkpointing, which a reader follows together.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from itertools import groupby
from pathlib import Path

import numpy as np

from . import nn
from .calibration import calibrate_on_validation, threshold_rule
from .configs import TrainConfig
from .data import (
    AugmentConfig,
    DataLoader,
    Sample,
    Splits,
    check_disjoint,
    class_counts,
    load_arrays,
    samples_from_dirs,
    source_counts,
    split_by_group,
)
from .data.loader import cell_key
from .data.roots import DataRoot, data_roots, discover_roots
from .metrics import compute_metrics, per_source_metrics, source_selection
from .models import Model, create_model, save_model
from .models.scratch import load_checkpoint

log = logging.getLogger(__name__)


def build_splits(cfg: TrainConfig) -> Splits:
    """Train/validation/test samples, checked disjoint by file and by group.

    ``cfg.data`` is a dataset root or a bare Fake/Real folder, by the rule evaluate uses too
    (:func:`deepfake_detector.data.resolve_split`): a bare folder is the training set, its
    validation carved out by group (``val_fraction``), with no Test split. A list of roots
    (:func:`data_roots`): each is discovered with its own splits (named, so its samples
    carry their source and root), then train, validation and test are concatenated in the
    order given and the union is checked disjoint.
    """
    roots = data_roots(cfg.data)
    if roots:
        splits = discover_roots(roots, val_fraction=cfg.val_fraction, seed=cfg.seed)
    elif cfg.real_dirs and cfg.fake_dirs:
        samples = samples_from_dirs(cfg.real_dirs, cfg.fake_dirs)
        train, val = split_by_group(samples, cfg.val_fraction, seed=cfg.seed)
        splits = Splits(train, val, [])
    else:
        raise ValueError("give a dataset root or a Fake/Real folder (--data), or both --real-dir and --fake-dir")
    if not splits.train:
        raise ValueError("no training images found")
    if not splits.validation:
        raise ValueError("no validation images: add a Validation split or raise --val-fraction")
    check_disjoint(splits)
    return splits


def face_roots(cfg: TrainConfig) -> set[str] | None:
    """The names of the roots whose images are face-cropped before training; None: all of
    them (``cfg.faces``)."""
    return None if cfg.faces else {r.name for r in data_roots(cfg.data) if r.faces}


def face_splits(splits: Splits, folder: Path, cfg: TrainConfig, roots: set[str] | None = None,
                detector=None) -> Splits:
    """Train and validation samples replaced by face crops (made once, reused on resume):
    all of them, or those whose ``root`` is in ``roots``, in their order; the crops are
    framed with ``cfg.face_margin``, as ``predict --faces`` frames faces for the model."""
    from .faces.crop import crop_samples
    from .faces.detect import get_detector

    detector = detector or get_detector(cfg.detector)
    out = []
    for name, samples in zip(("train", "validation"), (splits.train, splits.validation)):
        kept, problems = [], {}
        for crop, run in groupby(samples, key=lambda s: roots is None or s.root in roots):
            run = list(run)
            if not crop:
                kept += run
                continue
            crops, bad = crop_samples(run, folder / name, detector=detector, margin=cfg.face_margin,
                                      whole_if_no_face=cfg.whole_if_no_face)
            kept += crops
            problems.update(bad)
        if problems:
            log.warning("%s: %d images left out (%d without a face)", name, len(problems),
                        sum(r == "no face found" for r in problems.values()))
        out.append(kept)
    return Splits(out[0], out[1], splits.test)


def resolve_balance(cfg: TrainConfig, samples) -> str | None:
    """The loader's balance mode: ``cfg.balance``, where ``"auto"`` means ``"cells"`` when
    the training samples hold more than one (root, source) or a root or source weight is
    set, else ``"undersample"`` (a single-source run trains exactly as before)."""
    if cfg.balance != "auto":
        return cfg.balance
    sources = {(s.root, s.source) for s in samples}
    weighted = any(r.weight != 1.0 for r in data_roots(cfg.data)) or any(
        float(w) != 1.0 for w in cfg.source_weights.values())
    return "cells" if len(sources) > 1 or weighted else "undersample"


def cell_weights(cfg: TrainConfig, samples) -> dict[tuple[str, str, int], float]:
    """``{(root, source, label): weight}`` for the loader's ``"cells"`` balance: the root's
    ``weight`` times ``cfg.source_weights[source]`` (1 where unset)."""
    unknown = set(cfg.source_weights) - {s.source for s in samples}
    if unknown:
        raise ValueError(f"source_weights names unknown sources {sorted(unknown)}; the training sources are "
                         f"{sorted({s.source for s in samples})}")
    by_root = {r.name: r.weight for r in data_roots(cfg.data)}
    return {k: by_root.get(k[0], 1.0) * float(cfg.source_weights.get(k[1], 1.0))
            for k in dict.fromkeys(cell_key(s) for s in samples)}


def make_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """The run's learning-rate schedule, built by its class from the settings it reads."""
    if cfg.schedule not in nn.SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose from {sorted(nn.SCHEDULES)}")
    return nn.SCHEDULES[cfg.schedule].for_run(cfg.lr, steps_per_epoch, cfg.epochs, gamma=cfg.gamma,
                                              step_epochs=cfg.step_epochs, warmup_epochs=cfg.warmup_epochs)


def make_optimizer(cfg: TrainConfig, model):
    """The model's own optimiser (the engine's, or ``torch.optim`` for a torch model) with the
    config's rule; a model that cannot be trained says so."""
    if not model.abilities.trainable:
        raise ValueError(f"a {model.kind} model cannot be trained")
    momentum = cfg.momentum if cfg.optimizer == "sgd" else 0.0
    return model.make_optimizer(cfg.optimizer, cfg.lr, momentum=momentum, weight_decay=cfg.weight_decay)


def make_synthesizer(cfg: TrainConfig):
    """The loader's pseudo-fake maker for ``cfg.synthesize_fakes`` (None: off)."""
    if cfg.synthesize_fakes is None:
        return None
    if cfg.synthesize_fakes == "sbi":
        from .data.sbi import SBIConfig

        return SBIConfig.from_dict(cfg.sbi)
    raise ValueError(f"unknown synthesize_fakes {cfg.synthesize_fakes!r}; choose 'sbi' or None")


def validation_scores(model: Model, images: np.ndarray, batch_size: int = 128):
    """Logit differences z_fake - z_real (N,) in evaluation mode."""
    z = model.decision_logits(images, batch_size).astype(np.float64)
    return z[:, 1] - z[:, 0]


def _read_history(run: Path, before_epoch: int) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] < before_epoch]


def _write_history(run: Path, history: list[dict]) -> None:
    tmp = run / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    os.replace(tmp, run / "metrics.jsonl")


class Trainer:
    """One run as ``cfg`` says, in the steps a reader follows: set up (data, model, loader,
    schedule, optimiser), :meth:`resume`, then per epoch :meth:`train_epoch`, :meth:`validate`
    and :meth:`checkpoint`; :meth:`run` strings them together."""

    def __init__(self, cfg: TrainConfig, splits: Splits | None = None, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.run_dir = run = Path(cfg.out)
        run.mkdir(parents=True, exist_ok=True)
        for orphan in run.glob(".tmp-*.npz"):  # a checkpoint write this run's folder saw killed
            orphan.unlink(missing_ok=True)
        splits = splits or build_splits(cfg)
        crop_roots = face_roots(cfg)
        if crop_roots is None or crop_roots:
            splits = face_splits(splits, run / "faces", cfg, crop_roots)
        self.splits = splits

        self.model = create_model(cfg.arch, seed=cfg.seed, **cfg.model_config).to(cfg.device)
        augment = None if cfg.augment is None else AugmentConfig.from_dict(cfg.augment)
        self.balance = balance = resolve_balance(cfg, splits.train)
        if balance != "cells" and (cfg.source_weights or any(r.weight != 1.0 for r in data_roots(cfg.data))):
            log.warning("balance=%r: the root and source weights are not used (they weigh balance='cells')", balance)
        self.loader = DataLoader(splits.train, self.model.input_size, cfg.batch_size, shuffle=True, augment=augment,
                                 balance=balance, seed=cfg.seed, workers=cfg.workers, cache=cfg.cache,
                                 batches_per_epoch=cfg.batches_per_epoch, drop_last=True,
                                 synthesize=make_synthesizer(cfg),
                                 cell_weights=cell_weights(cfg, splits.train) if balance == "cells" else None)
        self.steps_per_epoch = len(self.loader)
        self.schedule = make_schedule(cfg, self.steps_per_epoch)
        self.opt = make_optimizer(cfg, self.model)
        # where the run stands: the next epoch and batch, optimiser steps, the best AUC so far
        self.epoch, self.batch, self.step, self.best_auc, self.bad_epochs = 0, 0, 0, -math.inf, 0
        self.running = {"seen": 0, "loss_sum": 0.0, "correct": 0, "seconds": 0.0}  # the interrupted epoch's
        self.data_info = {"train": class_counts(splits.train), "validation": class_counts(splits.validation),
                          "test": class_counts(splits.test), "root": cfg.data,
                          "roots": [r._asdict() for r in data_roots(cfg.data)], "balance": balance,
                          "sources": {k: source_counts(v) for k, v in splits._asdict().items()}}

    # --- the steps ---------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from ``last.npz``: weights, optimiser state and where the run stood."""
        last = self.run_dir / "last.npz"
        if not last.exists():
            log.warning("%s has no last.npz; starting from scratch", self.run_dir)
            return
        self.model, groups, meta = load_checkpoint(last, self.cfg.device)
        self.opt = make_optimizer(self.cfg, self.model)
        self.opt.load_state_arrays(groups.get("optim", {}), meta.get("optim_t", 0))
        p = meta["progress"]
        self.epoch, self.batch, self.step = p["epoch"], p["batch"], p["step"]
        self.best_auc, self.bad_epochs = p["best_auc"], p["bad_epochs"]
        self.running.update(p.get("running", {}) if self.batch else {})
        log.info("resuming %s at epoch %d, batch %d (step %d)", self.run_dir, self.epoch + 1, self.batch, self.step)

    def checkpoint(self, path, epoch: int, batch: int, extra: dict | None = None, running: dict | None = None):
        """The model, its optimiser and where the run stands (mid-epoch: ``running``, the
        epoch's training loss and accuracy so far)."""
        state = {"epoch": epoch, "batch": batch, "step": self.step, "best_auc": self.best_auc,
                 "bad_epochs": self.bad_epochs}
        if running is not None:
            state["running"] = running
        save_model(self.model, path, optimizer=self.opt,
                   extra_meta=dict(extra or {}, progress=state, data=self.data_info, face_margin=self.cfg.face_margin,
                                   recipe=dataclasses.asdict(self.cfg)))

    def train_epoch(self, epoch: int, first: int = 0, stop_after: int | None = None) -> dict | None:
        """One pass of the loader from batch ``first``; its training loss and accuracy. None
        when ``stop_after`` steps were taken first (a ``last.npz`` is written there)."""
        from tqdm.auto import tqdm

        cfg, model, opt = self.cfg, self.model, self.opt
        t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        if first:  # resumed mid-epoch: the batches before the interruption count too
            r = self.running
            seen, loss_sum, correct = int(r["seen"]), float(r["loss_sum"]), int(r["correct"])
            t0 -= float(r["seconds"])

        def so_far():
            return {"seen": seen, "loss_sum": loss_sum, "correct": correct, "seconds": time.time() - t0}

        bar = tqdm(total=self.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not self.progress, unit="batch", dynamic_ncols=True)
        try:
            for b, batch in enumerate(self.loader.epoch(epoch, start_batch=first), start=first):
                model.reseed([cfg.seed, self.step])  # dropout masks: a function of (seed, step), so resumes match
                x = model.normalize(batch.images)
                model.zero_grad()
                logits = model.forward(x, training=True)
                loss, dz = nn.softmax_cross_entropy(logits, batch.labels, label_smoothing=cfg.label_smoothing)
                model.backward(dz)
                if cfg.clip_norm:
                    opt.clip_grad_norm(cfg.clip_norm)
                opt.step(lr=self.schedule(self.step))
                self.step += 1
                n = len(batch.labels)
                seen, loss_sum = seen + n, loss_sum + loss * n
                correct += int((nn.to_numpy(logits).argmax(1) == batch.labels).sum())
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / (time.time() - t0):.1f}", lr=f"{self.schedule(self.step):.2e}")
                if stop_after is not None and self.step - self._step_at_start >= stop_after:
                    self.checkpoint(self.run_dir / "last.npz", epoch, b + 1, running=so_far())
                    return None
                if cfg.checkpoint_every and (b + 1) % cfg.checkpoint_every == 0 and b + 1 < self.steps_per_epoch:
                    self.checkpoint(self.run_dir / "last.npz", epoch, b + 1, running=so_far())
        finally:
            bar.close()
        return {"t0": t0, "seen": seen, "loss_sum": loss_sum, "correct": correct}

    def load_validation(self) -> None:
        """Validation images, once: held-out sources, never training files."""
        self.val_images, self.val_labels, errors = load_arrays(self.splits.validation, self.model.input_size,
                                                               workers=self.cfg.workers)
        if errors:
            log.warning("validation: %d unreadable files skipped", len(errors))
        kept = [s for s in self.splits.validation if s.path not in errors]  # aligned with val_labels
        self.val_sources, self.val_roots = [s.source for s in kept], [s.root for s in kept]

    def validate(self, epoch: int, stats: dict, history: list) -> bool:
        """Score Validation per source, log the epoch's row, keep ``best.npz`` when the mean
        per-source AUC improved; whether it did."""
        cfg = self.cfg
        labels = self.val_labels
        z = validation_scores(self.model, self.val_images)
        p_val = 1 / (1 + np.exp(-z))
        vm = compute_metrics(labels, p_val)
        both = 0 < int(np.sum(labels)) < len(labels)
        temperature = threshold = val_at_t = None
        if both:  # the threshold (and temperature) this epoch's checkpoint would get
            temperature, threshold, val_at_t = calibrate_on_validation(z, labels, cfg.threshold_method,
                                                                       max_false_alarm=cfg.max_false_alarm)
            p_val = 1 / (1 + np.exp(-z / temperature))
        sources = per_source_metrics(labels, p_val, self.val_sources, threshold if both else 0.5, roots=self.val_roots)
        pick = source_selection(sources)
        seen, t0 = max(stats["seen"], 1), stats["t0"]
        row = {"epoch": epoch, "step": self.step, "lr": self.schedule(self.step), "seconds": round(time.time() - t0, 1),
               "train_loss": stats["loss_sum"] / seen, "train_accuracy": stats["correct"] / seen,
               "images_per_s": stats["seen"] / (time.time() - t0), "val_loss": vm["log_loss"],
               "val_accuracy": vm["accuracy"], "val_roc_auc": vm["roc_auc"],
               "val_average_precision": vm["average_precision"], "val_eer": vm["eer"],
               "val_mean_source_auc": pick["mean_auc"], "val_worst_source": pick["worst_source"],
               "val_worst_source_auc": pick["worst_auc"], "val_threshold": threshold, "val_sources": sources,
               "skipped_files": len(self.loader.skipped)}
        history.append(row)
        _write_history(self.run_dir, history)
        from .report import plot_training_curves  # matplotlib: loaded by a run, not by the import

        plot_training_curves(history, self.run_dir / "curves.png")
        auc = pick["mean_auc"] if pick["mean_auc"] is not None else -math.inf  # one source: the pooled AUC
        improved = auc > self.best_auc
        if improved:
            self.best_auc, self.bad_epochs = auc, 0
            self.checkpoint(self.run_dir / "best.npz", epoch + 1, 0, extra={
                "threshold": threshold, "temperature": temperature, "epoch": epoch + 1,
                "validation": val_at_t, "validation_sources": sources,
                "threshold_rule": threshold_rule(cfg.threshold_method, cfg.max_false_alarm),
                "selection": "mean per-source validation ROC-AUC",
                "version": f"{cfg.arch}-{time.strftime('%Y%m%d')}-e{epoch + 1}"})
        else:
            self.bad_epochs += 1
        worst = (f" | sources: mean AUC {pick['mean_auc']:.4f}, worst {pick['worst_source']} "
                 f"{pick['worst_auc']:.4f}" if len(sources) > 1 and pick["mean_auc"] is not None else "")
        print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | "
              f"val loss {vm['log_loss']:.4f} acc {vm['accuracy']:.3f} AUC {_num(vm['roc_auc'])}{worst}"
              f"{' (best)' if improved else ''} | {row['images_per_s']:.1f} img/s", flush=True)
        return improved

    def run(self, resume: bool = False, stop_after_steps: int | None = None) -> dict:
        """Epochs from where the run stands to ``cfg.epochs`` (or early stopping)."""
        cfg = self.cfg
        if resume:
            self.resume()
        (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        history = _read_history(self.run_dir, self.epoch)
        log.info("train %s, validation %s", self.data_info["train"], self.data_info["validation"])
        self.load_validation()
        self._step_at_start = self.step
        summary = {"stopped": "completed"}
        start_epoch, start_batch = self.epoch, self.batch
        for epoch in range(start_epoch, cfg.epochs):
            stats = self.train_epoch(epoch, start_batch if epoch == start_epoch else 0, stop_after_steps)
            if stats is None:
                return {"stopped": "stop_after_steps", "step": self.step}
            self.validate(epoch, stats, history)
            self.checkpoint(self.run_dir / "last.npz", epoch + 1, 0)
            if cfg.early_stopping and self.bad_epochs >= cfg.early_stopping:
                summary["stopped"] = f"early stopping after {self.bad_epochs} epochs without improvement"
                break
        if self.loader.skipped:
            log.warning("%d unreadable training files were skipped", len(self.loader.skipped))
        summary.update(best_val_roc_auc=self.best_auc, epochs_run=len(history), run=str(self.run_dir),
                       best=str(self.run_dir / "best.npz"), skipped_files=len(self.loader.skipped))
        return summary


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, stop_after_steps: int | None = None,
          splits: Splits | None = None) -> dict:
    """Train a model as ``cfg`` says (:class:`Trainer`); return a summary (best epoch,
    validation metrics, paths).

    ``resume=True`` continues from ``cfg.out/last.npz``. ``stop_after_steps`` ends the run
    after that many optimiser steps in this call, as if it were killed there (for tests).
    """
    return Trainer(cfg, splits, progress).run(resume, stop_after_steps)


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


__all__ = ["DataRoot", "TrainConfig", "Trainer", "build_splits", "cell_weights", "data_roots", "face_roots",
           "face_splits", "make_schedule", "make_optimizer", "resolve_balance", "train", "Sample"]
