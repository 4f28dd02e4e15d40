"""The dataset roots of a run: each a path with a name, a framing and a weight, discovered
with its own splits (:func:`discover_roots`); used by training, head training and fusion.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import NamedTuple

from .datasets import Sample, Splits, check_disjoint, class_counts, discover, root_name

log = logging.getLogger(__name__)


class DataRoot(NamedTuple):
    """One dataset root of a run: its path, its name (the default source of its samples and
    their ``root``), whether its images are whole photos to face-crop first, the weight
    multiplying its cells' share of a batch, and optional caps per split and class
    (``{"train": 1500}``: at most 1,500 real and 1,500 fake training images)."""

    root: str
    name: str
    faces: bool = False
    weight: float = 1.0
    max_per_class: dict = {}
    drop_fakes: tuple = ()  # splits whose fakes are left out ("train", "validation"): a reals-only expert


ROOT_KEYS = frozenset(DataRoot._fields)


def data_roots(data) -> list[DataRoot]:
    """A config's ``data`` as a list of :class:`DataRoot`: a path (str), or a list whose items
    are paths or dicts ``{"root": path, "name": ..., "faces": bool, "weight": float,
    "max_per_class": {split: n}, "drop_fakes": [split, ...]}`` (only ``root`` required; ``name`` defaults to
    :func:`~deepfake_detector.data.root_name`). Names must be unique; weights finite and
    >= 0. [] for no data."""
    if not data:
        return []
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            item = {"root": str(item)}
        if not isinstance(item, dict) or "root" not in item or set(item) - ROOT_KEYS:
            raise ValueError(f"a data root is a path or a dict with 'root' and optional "
                             f"{', '.join(repr(k) for k in DataRoot._fields[1:])}; got {item!r}")
        weight = float(item.get("weight", 1.0))
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight of {item['root']} must be finite and >= 0, got {weight}")
        caps = dict(item.get("max_per_class") or {})
        unknown = set(caps) - {"train", "validation", "test"}
        if unknown:
            raise ValueError(f"max_per_class of {item['root']}: unknown split(s) {sorted(unknown)}")
        drop = tuple(item.get("drop_fakes") or ())
        if set(drop) - {"train", "validation"}:
            raise ValueError(f"drop_fakes of {item['root']}: only 'train' and 'validation' (Test is never changed)")
        out.append(DataRoot(str(item["root"]), str(item.get("name") or root_name(item["root"])),
                            bool(item.get("faces", False)), weight, caps, drop))
    names = [r.name for r in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two data roots are named {', '.join(dup)}: give each a 'name'")
    return out


def capped(samples: list[Sample], cap: int | None) -> list[Sample]:
    """At most ``cap`` of ``samples`` of each class: the first by the SHA-1 of the file name
    (a fixed, seed-free choice, so every run picks the same files), in their order."""
    if not cap:
        return list(samples)
    keep = set()
    for label in (0, 1):
        mine = [s for s in samples if s.label == label]
        if len(mine) > cap:
            mine = sorted(mine, key=lambda s: hashlib.sha1(Path(s.path).name.encode()).hexdigest())[:cap]
        keep.update(s.path for s in mine)
    return [s for s in samples if s.path in keep]


def discover_roots(roots: list[DataRoot], val_fraction: float = 0.1, seed: int = 0) -> Splits:
    """Each root discovered with its own splits (named, so its samples carry their source and
    root) and capped, then train, validation and test concatenated in the order given; the
    union is checked disjoint by file and by group."""
    parts = []
    for r in roots:
        sp = discover(r.root, val_fraction=val_fraction, seed=seed, name=r.name)
        sp = Splits(*([s for s in capped(list(v), r.max_per_class.get(k)) if not (s.label == 1 and k in r.drop_fakes)]
                      for k, v in zip(("train", "validation", "test"), sp)))
        log.info("%s (%s): train %s, validation %s, test %s", r.name, r.root, class_counts(sp.train),
                 class_counts(sp.validation), class_counts(sp.test))
        parts.append(sp)
    splits = Splits(*([s for sp in parts for s in sp[i]] for i in range(3)))
    check_disjoint(splits)
    return splits
