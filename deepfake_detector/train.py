"""The training loop: validation every epoch, best-by-AUC checkpoints, exact resume.

A run folder holds ``config.json``, ``metrics.jsonl``, ``curves.png``, ``last.npz`` (every
epoch and every ``checkpoint_every`` batches, with the optimiser state) and ``best.npz``
(best validation ROC-AUC, with its threshold and temperature). ``resume`` continues exactly
where ``last.npz`` stopped, to the same weights as an uninterrupted run.
Shipping a run: :mod:`deepfake_detector.release`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import nn
from .data import (
    AugmentConfig,
    DataLoader,
    Sample,
    Splits,
    check_disjoint,
    class_counts,
    discover,
    load_arrays,
    samples_from_dirs,
    split_by_group,
)
from .metrics import calibrate_on_validation, compute_metrics
from .models import Model, create_model, model_from_arrays, save_model
from .nn.io import load_arrays as load_checkpoint_arrays

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a run needs; written to ``config.json`` and reloaded by ``--resume``."""

    data: str | None = None  # dataset root with Train/[Validation/][Test/] of Fake/ and Real/
    real_dirs: list = field(default_factory=list)  # or explicit folders, as the original took
    fake_dirs: list = field(default_factory=list)
    out: str = "runs/latest"
    arch: str = "df-cnn"
    model_config: dict = field(default_factory=dict)  # builder keyword arguments (widths, dropout)
    epochs: int = 10
    batch_size: int = 64
    batches_per_epoch: int | None = None  # None: one pass over the (balanced) training set
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # constant | exponential | step | cosine (warm-up + cosine)
    gamma: float = 0.95  # exponential: per epoch (the original recipe); step: per step_epochs
    step_epochs: int = 10
    warmup_epochs: float = 0.3  # cosine: linear warm-up, in epochs
    clip_norm: float | None = 5.0  # global gradient norm; None turns clipping off
    label_smoothing: float = 0.0
    balance: str | None = "undersample"  # undersample | weighted | None
    augment: dict | None = field(default_factory=dict)  # AugmentConfig fields; None turns it off
    synthesize_fakes: str | None = None  # "sbi": real training faces become self-blended pseudo-fakes
    sbi: dict = field(default_factory=dict)  # SBIConfig fields (probability: 0.5, jitter ranges)
    cache: bool = True  # keep decoded images in memory across epochs
    workers: int = 2
    val_fraction: float = 0.1  # carved from Train (grouped) when there is no Validation split
    early_stopping: int | None = 5  # epochs without a better validation AUC before stopping
    threshold_method: str = "youden"
    face_margin: float = 0.0  # framing of the training crops (dfdc-faces: tight); --faces crops alike
    faces: bool = False  # crop the largest face of each (whole-photo) image first, once, into the run
    whole_if_no_face: bool = False  # with faces: keep images without a face whole instead of skipping
    checkpoint_every: int = 50  # batches between mid-epoch checkpoints
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def from_file(cls, path) -> TrainConfig:
        with open(path) as f:
            d = json.load(f)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known - {"comment"}
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})


def build_splits(cfg: TrainConfig) -> Splits:
    """Train/validation/test samples, checked disjoint by file and by group.

    ``cfg.data`` is a dataset root or a bare Fake/Real folder, by the rule evaluate uses too
    (:func:`deepfake_detector.data.resolve_split`): a bare folder is the training set, its
    validation carved out by group (``val_fraction``), with no Test split.
    """
    if cfg.data:
        splits = discover(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
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


def face_splits(splits: Splits, folder: Path, cfg: TrainConfig) -> Splits:
    """Train and validation samples replaced by face crops (made once, reused on resume)."""
    from .faces.crop import crop_samples

    out = []
    for name, samples in zip(("train", "validation"), (splits.train, splits.validation)):
        crops, problems = crop_samples(samples, folder / name, margin=cfg.face_margin,
                                       whole_if_no_face=cfg.whole_if_no_face)
        if problems:
            log.warning("%s: %d images left out (%d without a face)", name, len(problems),
                        sum(r == "no face found" for r in problems.values()))
        out.append(crops)
    return Splits(out[0], out[1], splits.test)


def make_schedule(cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "constant":
        return nn.Constant(cfg.lr)
    if cfg.schedule == "exponential":
        return nn.ExponentialDecay(cfg.lr, cfg.gamma, every=steps_per_epoch)
    if cfg.schedule == "step":
        return nn.StepDecay(cfg.lr, cfg.step_epochs * steps_per_epoch, cfg.gamma)
    if cfg.schedule == "cosine":
        return nn.WarmupCosine(cfg.lr, total, int(cfg.warmup_epochs * steps_per_epoch), min_lr=cfg.lr * 0.01)
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose from {sorted(nn.SCHEDULES)}")


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


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, stop_after_steps: int | None = None,
          splits: Splits | None = None) -> dict:
    """Train a model as ``cfg`` says; return a summary (best epoch, validation metrics, paths).

    ``resume=True`` continues from ``cfg.out/last.npz``. ``stop_after_steps`` ends the run
    after that many optimiser steps in this call, as if it were killed there (for tests).
    """
    from tqdm.auto import tqdm

    from .report import plot_training_curves  # matplotlib: loaded by a run, not by the import

    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    splits = splits or build_splits(cfg)
    if cfg.faces:
        splits = face_splits(splits, run / "faces", cfg)
    rng_seed = cfg.seed

    model = create_model(cfg.arch, seed=cfg.seed, **cfg.model_config).to(cfg.device)
    S = model.input_size
    augment = None if cfg.augment is None else AugmentConfig.from_dict(cfg.augment)
    loader = DataLoader(splits.train, S, cfg.batch_size, shuffle=True, augment=augment, balance=cfg.balance,
                        seed=cfg.seed, workers=cfg.workers, cache=cfg.cache,
                        batches_per_epoch=cfg.batches_per_epoch, drop_last=True,
                        synthesize=make_synthesizer(cfg))
    steps_per_epoch = len(loader)
    schedule = make_schedule(cfg, steps_per_epoch)
    opt = make_optimizer(cfg, model)

    start_epoch, start_batch, step, best_auc, bad_epochs = 0, 0, 0, -math.inf, 0
    if resume and (run / "last.npz").exists():
        groups, meta = load_checkpoint_arrays(run / "last.npz")
        model = model_from_arrays(groups, meta, cfg.device)
        opt = make_optimizer(cfg, model)
        opt.load_state_arrays(groups.get("optim", {}), meta.get("optim_t", 0))
        p = meta["progress"]
        start_epoch, start_batch, step = p["epoch"], p["batch"], p["step"]
        best_auc, bad_epochs = p["best_auc"], p["bad_epochs"]
        log.info("resuming %s at epoch %d, batch %d (step %d)", run, start_epoch + 1, start_batch, step)
    elif resume:
        log.warning("%s has no last.npz; starting from scratch", run)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    history = _read_history(run, start_epoch)

    data_info = {"train": class_counts(splits.train), "validation": class_counts(splits.validation),
                 "test": class_counts(splits.test), "root": cfg.data}
    log.info("train %s, validation %s", data_info["train"], data_info["validation"])
    val_images, val_labels, val_errors = load_arrays(splits.validation, S, workers=cfg.workers)
    if val_errors:
        log.warning("validation: %d unreadable files skipped", len(val_errors))

    def checkpoint(path, epoch, batch, extra=None):
        progress_state = {"epoch": epoch, "batch": batch, "step": step, "best_auc": best_auc,
                          "bad_epochs": bad_epochs}
        save_model(model, path, optimizer=opt,
                   extra_meta=dict(extra or {}, progress=progress_state, data=data_info, face_margin=cfg.face_margin,
                                   recipe=dataclasses.asdict(cfg)))

    steps_this_call = 0
    summary = {"stopped": "completed"}
    for epoch in range(start_epoch, cfg.epochs):
        t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        first = start_batch if epoch == start_epoch else 0
        bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, unit="batch", dynamic_ncols=True)
        for b, batch in enumerate(loader.epoch(epoch, start_batch=first), start=first):
            model.reseed([rng_seed, step])  # dropout masks: a function of (seed, step), so resumes match
            x = model.normalize(batch.images)
            model.zero_grad()
            logits = model.forward(x, training=True)
            loss, dz = nn.softmax_cross_entropy(logits, batch.labels, label_smoothing=cfg.label_smoothing)
            model.backward(dz)
            if cfg.clip_norm:
                opt.clip_grad_norm(cfg.clip_norm)
            opt.step(lr=schedule(step))
            step += 1
            steps_this_call += 1
            n = len(batch.labels)
            seen += n
            loss_sum += loss * n
            correct += int((nn.to_numpy(logits).argmax(1) == batch.labels).sum())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                            img_s=f"{seen / (time.time() - t0):.1f}", lr=f"{schedule(step):.2e}")
            if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                checkpoint(run / "last.npz", epoch, b + 1)
                bar.close()
                return {"stopped": "stop_after_steps", "step": step}
            if cfg.checkpoint_every and (b + 1) % cfg.checkpoint_every == 0 and b + 1 < steps_per_epoch:
                checkpoint(run / "last.npz", epoch, b + 1)
        bar.close()

        # --- validation on held-out sources, never on training files ---
        z = validation_scores(model, val_images)
        p_val = 1 / (1 + np.exp(-z))
        vm = compute_metrics(val_labels, p_val)
        row = {"epoch": epoch, "step": step, "lr": schedule(step), "seconds": round(time.time() - t0, 1),
               "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
               "images_per_s": seen / (time.time() - t0), "val_loss": vm["log_loss"],
               "val_accuracy": vm["accuracy"], "val_roc_auc": vm["roc_auc"],
               "val_average_precision": vm["average_precision"], "val_eer": vm["eer"],
               "skipped_files": len(loader.skipped)}
        history.append(row)
        _write_history(run, history)
        plot_training_curves(history, run / "curves.png")
        auc = vm["roc_auc"] if vm["roc_auc"] is not None else -math.inf
        improved = auc > best_auc
        if improved:
            best_auc, bad_epochs = auc, 0
            temperature, threshold, val_at_t = calibrate_on_validation(z, val_labels, cfg.threshold_method)
            checkpoint(run / "best.npz", epoch + 1, 0, extra={
                "threshold": threshold, "temperature": temperature, "epoch": epoch + 1,
                "validation": val_at_t, "version": f"{cfg.arch}-{time.strftime('%Y%m%d')}-e{epoch + 1}"})
        else:
            bad_epochs += 1
        checkpoint(run / "last.npz", epoch + 1, 0)
        print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | "
              f"val loss {vm['log_loss']:.4f} acc {vm['accuracy']:.3f} AUC {vm['roc_auc']:.4f}"
              f"{' (best)' if improved else ''} | {row['images_per_s']:.1f} img/s", flush=True)
        if cfg.early_stopping and bad_epochs >= cfg.early_stopping:
            summary["stopped"] = f"early stopping after {bad_epochs} epochs without improvement"
            break
    if loader.skipped:
        log.warning("%d unreadable training files were skipped", len(loader.skipped))
    summary.update(best_val_roc_auc=best_auc, epochs_run=len(history), run=str(run),
                   best=str(run / "best.npz"), skipped_files=len(loader.skipped))
    return summary


__all__ = ["TrainConfig", "build_splits", "make_schedule", "make_optimizer", "train", "Sample"]
