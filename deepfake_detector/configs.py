"""The settings of a training run (:class:`TrainConfig`) and of a head run on frozen CLIP
features (:class:`HeadConfig`): each field declared once, with its help and, where it has a
closed set of values, the registry they come from; the CLI's ``train`` and ``train-head``
flags are generated from them (:mod:`deepfake_detector.config_flags`). A run writes its
config to ``config.json``; :func:`config_from_file` reads one back. Light to import: the
registries are read when a parser is built or a value checked.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .config_flags import setting


def _optimizers():
    from .nn.optim import OPTIMIZERS

    return OPTIMIZERS


def _schedules():
    from .nn.schedules import SCHEDULES

    return SCHEDULES


def _threshold_methods():
    from .calibration import THRESHOLD_METHODS

    return THRESHOLD_METHODS


def _balances():
    from .data.loader import BALANCE_MODES

    return ["auto", *(b for b in BALANCE_MODES if b)]


def _synthesizers():
    from .data.sbi import SYNTHESIZERS

    return SYNTHESIZERS


def _devices():
    from .nn.backend import DEVICES

    return DEVICES


def _heads():
    return [n for n in _archs() if n.startswith("clip")]


def _archs():
    from .models import list_models

    return list_models()


@dataclass
class TrainConfig:
    """Everything a run needs; written to ``config.json`` and reloaded by ``--resume``."""

    # dataset root with Train/[Validation/][Test/] of Fake/ and Real/, or a list of them, each a
    # path or {"root": path, "name": str, "faces": bool, "weight": float} (see data_roots)
    data: str | list | None = None
    real_dirs: list = field(default_factory=list)  # or explicit folders, as the original took
    fake_dirs: list = field(default_factory=list)
    out: str = setting("runs/latest", help="run folder")
    arch: str = setting("df-cnn", help="architecture; torch ones need pip install 'deepfake-detector[torch]'",
                        choices=_archs)
    model_config: dict = field(default_factory=dict)  # builder keyword arguments (widths, dropout)
    epochs: int = setting(10, help="epochs")
    batch_size: int = setting(64, help="images per batch")
    batches_per_epoch: int | None = setting(None, help="batches per epoch (none: one pass over the balanced "
                                                       "training set)")
    optimizer: str = setting("adamw", help="optimiser", choices=_optimizers)
    lr: float = setting(2e-3, help="learning rate")
    momentum: float = setting(0.9, help="SGD momentum")
    weight_decay: float = setting(5e-4, help="decoupled weight decay (adamw), L2 otherwise")
    schedule: str = setting("cosine", help="learning-rate schedule (cosine: linear warm-up, then cosine)",
                            choices=_schedules)
    gamma: float = setting(0.95, help="exponential: decay per epoch (the original recipe); step: per --step-epochs")
    step_epochs: int = setting(10, help="step schedule: epochs between decays")
    warmup_epochs: float = setting(0.3, help="cosine schedule: linear warm-up, in epochs")
    clip_norm: float | None = setting(5.0, help="clip the global gradient norm at this (none: off)")
    label_smoothing: float = setting(0.0, help="label smoothing of the cross-entropy")
    balance: str | None = setting("auto", help="auto: cells with several sources, else undersample; cells: each "
                                              "(source x class) cell its weighted share of every epoch",
                                  choices=_balances)
    source_weights: dict = field(default_factory=dict)  # source name -> weight of its cells (cells)
    augment: dict | None = field(default_factory=dict)  # AugmentConfig fields; None turns it off
    synthesize_fakes: str | None = setting(None, help="sbi: real training faces become self-blended pseudo-fakes "
                                                      "(Shiohara & Yamasaki 2022)", choices=_synthesizers)
    sbi: dict = field(default_factory=dict)  # SBIConfig fields (probability: 0.5, jitter ranges)
    cache: bool = setting(True, help="keep decoded images in memory across epochs")
    workers: int = setting(2, help="decoding threads")
    val_fraction: float = setting(0.1, help="share of Train carved out (by group) where there is no Validation")
    early_stopping: int | None = setting(5, help="epochs without a better validation AUC before stopping "
                                                 "(none: never)")
    threshold_method: str = setting("youden", help="how the checkpoint's threshold is chosen (without "
                                                  "--max-false-alarm)", choices=_threshold_methods)
    max_false_alarm: float | None = setting(None, help="checkpoint threshold: at most this share of validation "
                                                      "reals called Fake")
    face_margin: float = setting(0.0, help="margin per side of the training face crops (dfdc-faces: tight, 0)")
    faces: bool = setting(False, help="crop the largest face of each (whole-photo) image first, once, into the run")
    detector: str | None = setting(None, help="the face detector that crops them (default: the default one)")
    whole_if_no_face: bool = setting(False, help="with --faces: keep images without a face whole instead of "
                                                 "skipping them")
    checkpoint_every: int = setting(50, help="batches between mid-epoch checkpoints")
    seed: int = setting(0, help="seed of the weights, the split and the batch order")
    device: str = setting("cpu", help="where the engine runs", choices=_devices)

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


@dataclass
class HeadConfig:
    """Everything a head run needs; written to ``config.json``."""

    data: list = field(default_factory=list)  # roots (see data.roots): a path or {"root", "name", "faces", ...}
    arch: str = setting("clip-mlp", help="the head", choices=_heads)
    model_config: dict = field(default_factory=dict)  # builder keyword arguments (hidden, dropout, feature)
    epochs: int = setting(40, help="epochs")
    steps_per_epoch: int = setting(40, help="batches per epoch")
    batch_size: int = setting(256, help="feature vectors per batch")
    lr: float = setting(1e-3, help="learning rate")
    weight_decay: float = setting(1e-4, help="weight decay")
    max_false_alarm: float | None = setting(0.05, help="threshold: this share of pooled Validation reals called "
                                                       "Fake (none: --threshold-method)")
    threshold_method: str = setting("youden", help="the threshold rule without --max-false-alarm",
                                    choices=_threshold_methods)
    source_weights: dict = field(default_factory=dict)  # source name -> weight of its cells in a batch
    seed: int = setting(0, help="seed")
    out: str = setting("runs/clip-head", help="run folder")
    encoder: str | None = setting(None, help="the encoder file (default: the cache / "
                                             "$DEEPFAKE_DETECTOR_CLIP_ENCODER)")
    cache: str | None = setting(None, help="the embedding cache (default: <cache folder>/embeddings.sqlite)")
    workers: int = setting(2, help="encoder calls side by side during extraction")
    leave_out: list = field(default_factory=list)  # sources whose FAKES are left out of train and validation

    @classmethod
    def from_file(cls, path) -> HeadConfig:
        return config_from_file(cls, path)
