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
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np

from . import nn
from .calibration import calibrate_on_validation, threshold_rule
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


@dataclass
class TrainConfig:
    """Everything a run needs; written to ``config.json`` and reloaded by ``--resume``."""

    # dataset root with Train/[Validation/][Test/] of Fake/ and Real/, or a list of them, each a
    # path or {"root": path, "name": str, "faces": bool, "weight": float} (see data_roots)
    data: str | list | None = None
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
    # auto: "cells" with more than one source (or a weight set), else undersample (as before) |
    # undersample | weighted | cells (each (source x class) cell its weighted share) | None
    balance: str | None = "auto"
    source_weights: dict = field(default_factory=dict)  # source name -> weight of its cells (cells)
    augment: dict | None = field(default_factory=dict)  # AugmentConfig fields; None turns it off
    synthesize_fakes: str | None = None  # "sbi": real training faces become self-blended pseudo-fakes
    sbi: dict = field(default_factory=dict)  # SBIConfig fields (probability: 0.5, jitter ranges)
    cache: bool = True  # keep decoded images in memory across epochs
    workers: int = 2
    val_fraction: float = 0.1  # carved from Train (grouped) when there is no Validation split
    early_stopping: int | None = 5  # epochs without a better validation AUC before stopping
    threshold_method: str = "youden"
    max_false_alarm: float | None = None  # threshold: at most this share of validation reals called Fake
    face_margin: float = 0.0  # framing of the training crops (dfdc-faces: tight); --faces crops alike
    faces: bool = False  # crop the largest face of each (whole-photo) image first, once, into the run
    detector: str | None = None  # the face detector that crops them (None: the default one)
    whole_if_no_face: bool = False  # with faces: keep images without a face whole instead of skipping
    checkpoint_every: int = 50  # batches between mid-epoch checkpoints
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def from_file(cls, path) -> TrainConfig:
        return config_from_file(cls, path)


def config_from_file(cls, path):
    """A config dataclass ``cls`` from a JSON file: a ``comment`` key is allowed, any other
    key the dataclass does not have is an error."""
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
    for orphan in run.glob(".tmp-*.npz"):  # a checkpoint write this run's folder saw killed
        orphan.unlink(missing_ok=True)
    splits = splits or build_splits(cfg)
    crop_roots = face_roots(cfg)
    if crop_roots is None or crop_roots:
        splits = face_splits(splits, run / "faces", cfg, crop_roots)
    rng_seed = cfg.seed

    model = create_model(cfg.arch, seed=cfg.seed, **cfg.model_config).to(cfg.device)
    S = model.input_size
    augment = None if cfg.augment is None else AugmentConfig.from_dict(cfg.augment)
    balance = resolve_balance(cfg, splits.train)
    if balance != "cells" and (cfg.source_weights or any(r.weight != 1.0 for r in data_roots(cfg.data))):
        log.warning("balance=%r: the root and source weights are not used (they weigh balance='cells')", balance)
    loader = DataLoader(splits.train, S, cfg.batch_size, shuffle=True, augment=augment, balance=balance,
                        seed=cfg.seed, workers=cfg.workers, cache=cfg.cache,
                        batches_per_epoch=cfg.batches_per_epoch, drop_last=True,
                        synthesize=make_synthesizer(cfg),
                        cell_weights=cell_weights(cfg, splits.train) if balance == "cells" else None)
    steps_per_epoch = len(loader)
    schedule = make_schedule(cfg, steps_per_epoch)
    opt = make_optimizer(cfg, model)

    start_epoch, start_batch, step, best_auc, bad_epochs = 0, 0, 0, -math.inf, 0
    running = {"seen": 0, "loss_sum": 0.0, "correct": 0, "seconds": 0.0}  # the interrupted epoch's, so far
    if resume and (run / "last.npz").exists():
        model, groups, meta = load_checkpoint(run / "last.npz", cfg.device)
        opt = make_optimizer(cfg, model)
        opt.load_state_arrays(groups.get("optim", {}), meta.get("optim_t", 0))
        p = meta["progress"]
        start_epoch, start_batch, step = p["epoch"], p["batch"], p["step"]
        best_auc, bad_epochs = p["best_auc"], p["bad_epochs"]
        running.update(p.get("running", {}) if start_batch else {})
        log.info("resuming %s at epoch %d, batch %d (step %d)", run, start_epoch + 1, start_batch, step)
    elif resume:
        log.warning("%s has no last.npz; starting from scratch", run)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    history = _read_history(run, start_epoch)

    data_info = {"train": class_counts(splits.train), "validation": class_counts(splits.validation),
                 "test": class_counts(splits.test), "root": cfg.data,
                 "roots": [r._asdict() for r in data_roots(cfg.data)], "balance": balance,
                 "sources": {k: source_counts(v) for k, v in splits._asdict().items()}}
    log.info("train %s, validation %s", data_info["train"], data_info["validation"])
    val_images, val_labels, val_errors = load_arrays(splits.validation, S, workers=cfg.workers)
    if val_errors:
        log.warning("validation: %d unreadable files skipped", len(val_errors))
    val_kept = [s for s in splits.validation if s.path not in val_errors]  # aligned with val_labels
    val_sources, val_roots = [s.source for s in val_kept], [s.root for s in val_kept]

    def checkpoint(path, epoch, batch, extra=None, running=None):
        progress_state = {"epoch": epoch, "batch": batch, "step": step, "best_auc": best_auc,
                          "bad_epochs": bad_epochs}
        if running is not None:  # mid-epoch: the epoch's training loss and accuracy so far
            progress_state["running"] = running
        save_model(model, path, optimizer=opt,
                   extra_meta=dict(extra or {}, progress=progress_state, data=data_info, face_margin=cfg.face_margin,
                                   recipe=dataclasses.asdict(cfg)))

    def so_far():  # this epoch's running training loss and accuracy, for a mid-epoch checkpoint
        return {"seen": seen, "loss_sum": loss_sum, "correct": correct, "seconds": time.time() - t0}

    steps_this_call = 0
    summary = {"stopped": "completed"}
    for epoch in range(start_epoch, cfg.epochs):
        t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        first = start_batch if epoch == start_epoch else 0
        if first:  # resumed mid-epoch: the batches before the interruption count too
            seen, loss_sum, correct = int(running["seen"]), float(running["loss_sum"]), int(running["correct"])
            t0 -= float(running["seconds"])
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
                checkpoint(run / "last.npz", epoch, b + 1, running=so_far())
                bar.close()
                return {"stopped": "stop_after_steps", "step": step}
            if cfg.checkpoint_every and (b + 1) % cfg.checkpoint_every == 0 and b + 1 < steps_per_epoch:
                checkpoint(run / "last.npz", epoch, b + 1, running=so_far())
        bar.close()

        # --- validation on held-out sources, never on training files; scored per source ---
        z = validation_scores(model, val_images)
        p_val = 1 / (1 + np.exp(-z))
        vm = compute_metrics(val_labels, p_val)
        both = 0 < int(np.sum(val_labels)) < len(val_labels)
        temperature = threshold = val_at_t = None
        if both:  # the threshold (and temperature) this epoch's checkpoint would get
            temperature, threshold, val_at_t = calibrate_on_validation(z, val_labels, cfg.threshold_method,
                                                                       max_false_alarm=cfg.max_false_alarm)
            p_cal = 1 / (1 + np.exp(-z / temperature))
        sources = per_source_metrics(val_labels, p_cal if both else p_val, val_sources,
                                     threshold if both else 0.5, roots=val_roots)
        pick = source_selection(sources)
        row = {"epoch": epoch, "step": step, "lr": schedule(step), "seconds": round(time.time() - t0, 1),
               "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
               "images_per_s": seen / (time.time() - t0), "val_loss": vm["log_loss"],
               "val_accuracy": vm["accuracy"], "val_roc_auc": vm["roc_auc"],
               "val_average_precision": vm["average_precision"], "val_eer": vm["eer"],
               "val_mean_source_auc": pick["mean_auc"], "val_worst_source": pick["worst_source"],
               "val_worst_source_auc": pick["worst_auc"], "val_threshold": threshold, "val_sources": sources,
               "skipped_files": len(loader.skipped)}
        history.append(row)
        _write_history(run, history)
        plot_training_curves(history, run / "curves.png")
        auc = pick["mean_auc"] if pick["mean_auc"] is not None else -math.inf  # one source: the pooled AUC
        improved = auc > best_auc
        if improved:
            best_auc, bad_epochs = auc, 0
            checkpoint(run / "best.npz", epoch + 1, 0, extra={
                "threshold": threshold, "temperature": temperature, "epoch": epoch + 1,
                "validation": val_at_t, "validation_sources": sources,
                "threshold_rule": threshold_rule(cfg.threshold_method, cfg.max_false_alarm),
                "selection": "mean per-source validation ROC-AUC",
                "version": f"{cfg.arch}-{time.strftime('%Y%m%d')}-e{epoch + 1}"})
        else:
            bad_epochs += 1
        checkpoint(run / "last.npz", epoch + 1, 0)
        worst = (f" | sources: mean AUC {pick['mean_auc']:.4f}, worst {pick['worst_source']} "
                 f"{pick['worst_auc']:.4f}" if len(sources) > 1 and pick["mean_auc"] is not None else "")
        print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | "
              f"val loss {vm['log_loss']:.4f} acc {vm['accuracy']:.3f} AUC {_num(vm['roc_auc'])}{worst}"
              f"{' (best)' if improved else ''} | {row['images_per_s']:.1f} img/s", flush=True)
        if cfg.early_stopping and bad_epochs >= cfg.early_stopping:
            summary["stopped"] = f"early stopping after {bad_epochs} epochs without improvement"
            break
    if loader.skipped:
        log.warning("%d unreadable training files were skipped", len(loader.skipped))
    summary.update(best_val_roc_auc=best_auc, epochs_run=len(history), run=str(run),
                   best=str(run / "best.npz"), skipped_files=len(loader.skipped))
    return summary


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


__all__ = ["DataRoot", "TrainConfig", "build_splits", "cell_weights", "data_roots", "face_roots", "face_splits",
           "make_schedule", "make_optimizer", "resolve_balance", "train", "Sample"]
