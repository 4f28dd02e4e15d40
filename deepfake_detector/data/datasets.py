"""Image folders -> labelled samples, and train / validation / test splits.

Layout::

    root/
      Train/{Real,Fake}/...        (any depth below the class folder)
      Validation/{Real,Fake}/...   (optional: carved from Train when missing)
      Test/{Real,Fake}/...         (optional)
      metadata.csv                 (optional: columns ``file`` (relative to root), ``group``,
                                    ``source``)

Folder names are matched case-insensitively, with aliases (``val``, ``valid``...).
A *group* ties together files that must never sit on both sides of a split: frames of
one video, or a real video and the fakes made from it. Files without a group in
metadata.csv are their own group. A *source* names where a sample comes from (a generator,
a photo collection): the ``source`` column of metadata.csv where there is one, else the
name of the dataset root (:func:`root_name`, or the name given to :func:`discover`).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .media import IMAGE_EXTENSIONS, walk_media

__all__ = ["CLASS_NAMES", "IMAGE_EXTENSIONS", "Sample", "Splits", "check_disjoint", "class_counts",
           "discover", "find_class_dir", "find_split", "is_split_dir", "list_images", "load_split",
           "load_split_dir", "read_groups", "read_sources", "resolve_samples", "resolve_split", "root_name",
           "samples_from_dirs", "source_counts", "split_by_group"]

log = logging.getLogger(__name__)

CLASS_NAMES = ("Real", "Fake")  # label 0 = Real, 1 = Fake; the one definition (metrics, models import it)
SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "val", "valid"),
    "test": ("test",),
}
_SPLIT_NAMES = frozenset(a for al in SPLIT_ALIASES.values() for a in al)
CLASS_ALIASES = {0: ("real",), 1: ("fake",)}
METADATA_FILE = "metadata.csv"


class Sample(NamedTuple):
    """One labelled image. ``label``: 0 = Real, 1 = Fake. ``source``: where it comes from
    (metadata.csv's ``source`` column, else its root's name); ``root``: the name of the
    dataset root it was found in ("" for samples made by hand)."""

    path: str
    label: int
    group: str
    source: str = ""
    root: str = ""


class Splits(NamedTuple):
    train: list[Sample]
    validation: list[Sample]
    test: list[Sample]


# --- files ----------------------------------------------------------------------------------
def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, extensions in IMAGE_EXTENSIONS), sorted.

    Hidden files and folders (``.``-prefixed) are skipped; any other file left out (a
    video, a text file) is counted in one warning. A missing folder gives []. A sub-folder
    that cannot be read is a ValueError: training or evaluating on part of a split without
    saying so is worse than not starting.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    walk = walk_media(folder, kinds="image")
    out = list(walk)
    if walk.ignored.lost:
        raise ValueError(f"{folder}: {walk.ignored.lost} folder(s) could not be read ({walk.ignored.describe()}); "
                         f"fix their permissions or move them out")
    if walk.ignored:
        log.warning("%s: skipped what is not an image: %s", folder, walk.ignored.describe())
    return out


def _find_child(root: Path, aliases: Sequence[str]) -> Path | None:
    if not root.is_dir():
        return None
    hits = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in aliases)
    if len(hits) > 1:
        raise ValueError(f"ambiguous folders in {root}: {', '.join(p.name for p in hits)}")
    return hits[0] if hits else None


def find_split(root: str | os.PathLike, name: str) -> Path | None:
    """The folder of split ``name`` ("train", "validation"/"val", "test") under ``root``.

    Any case and the aliases Validation/Val/Valid are accepted; None when absent.
    Raises ValueError for an unknown split name or two matching folders.
    """
    key = name.lower()
    key = next((k for k, al in SPLIT_ALIASES.items() if key == k or key in al), None)
    if key is None:
        raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLIT_ALIASES)}")
    return _find_child(Path(root), SPLIT_ALIASES[key])


def find_class_dir(split_dir: str | os.PathLike, label: int) -> Path | None:
    """The ``Real`` (label 0) or ``Fake`` (label 1) folder of a split, any case; None when absent."""
    return _find_child(Path(split_dir), CLASS_ALIASES[label])


def is_split_dir(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is one split itself: it holds a ``Real`` and/or a ``Fake`` folder (any case)."""
    return find_class_dir(folder, 0) is not None or find_class_dir(folder, 1) is not None


def resolve_split(path: str | os.PathLike, split: str = "test") -> tuple[Path, str]:
    """The one rule for "a dataset root or a Fake/Real folder".

    A folder holding ``Real/`` and/or ``Fake/`` (:func:`is_split_dir`) is the split itself,
    whatever ``split`` says; otherwise ``path`` is a dataset root and its split ``split``
    ("train", "validation"/"val", "test"; :func:`find_split`) is taken.

    Returns
    -------
    (folder, display_name): the split folder (holding Real/ and/or Fake/) and a name for
    reports: the folder's name, or ``"<root>/<Split>"`` for a root's split.

    Raises
    ------
    FileNotFoundError
        ``path`` is not a folder; it is neither a split nor a root with that split; or the
        root's split holds neither Real/ nor Fake/.
    ValueError
        Unknown split name, or two folders matching one name (``Test`` and ``test``).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder")
    name = path.name or path.resolve().name
    if is_split_dir(path):
        return path, name
    sdir = find_split(path, split)
    if sdir is None:
        label = next(k for k, al in SPLIT_ALIASES.items() if split.lower() == k or split.lower() in al)
        found = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise FileNotFoundError(
            f"{path}: neither a split (a folder holding Fake/ and/or Real/) nor a dataset root with a "
            f"{label.capitalize()} split ({label.capitalize()}/{{Fake,Real}}, any case); "
            f"its folders: {', '.join(found) or 'none'}")
    if not is_split_dir(sdir):
        raise FileNotFoundError(f"{sdir} has neither a Real nor a Fake folder")
    return sdir, f"{name}/{sdir.name}"


# --- groups ---------------------------------------------------------------------------------
def _key(path: str | os.PathLike) -> str:
    return os.path.normcase(os.path.abspath(path))


def read_groups(metadata_csv: str | os.PathLike) -> dict[str, str]:
    """Map each file listed in a metadata.csv to its group.

    The ``file`` column is relative to the csv's folder. Keys are absolute normalised
    paths (as :func:`_key` makes them), values the ``group`` column. Rows without a
    group are left out (those files become their own group).
    """
    metadata_csv = Path(metadata_csv)
    base = metadata_csv.parent
    with open(metadata_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"file", "group"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{metadata_csv}: missing column(s) {', '.join(sorted(missing))}")
        return {_key(base / row["file"]): row["group"] for row in reader if row["file"] and row["group"]}


def read_sources(metadata_csv: str | os.PathLike) -> dict[str, str]:
    """Map each file listed in a metadata.csv to its ``source`` column, keyed like
    :func:`read_groups` (the ``file`` column is relative to the csv's folder). {} when the
    csv has no ``source`` column; rows with an empty source are left out."""
    metadata_csv = Path(metadata_csv)
    base = metadata_csv.parent
    with open(metadata_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"file", "source"} <= set(reader.fieldnames or ()):
            return {}
        return {_key(base / row["file"]): row["source"] for row in reader if row["file"] and row["source"]}


def root_name(path: str | os.PathLike) -> str:
    """The name a dataset root goes by (the default source of its samples): the folder's
    name, or its parent's when the folder is one split of a root (``faces-wild/Test`` ->
    ``faces-wild``)."""
    p = Path(os.path.abspath(path))
    if p.name.lower() in _SPLIT_NAMES and p.parent != p:
        return p.parent.name
    return p.name


def _samples(pairs: Iterable[tuple[Path, int]], groups: Mapping[str, str] | None,
             sources: Mapping[str, str] | None = None, source: str = "", root: str = "") -> list[Sample]:
    """The one place a sample gets its group (metadata.csv's, else its own path) and its
    source (metadata.csv's, else ``source``: the root's name)."""
    out = []
    for path, label in pairs:
        key = _key(path)
        out.append(Sample(str(path), label, (groups or {}).get(key, key), (sources or {}).get(key, source), root))
    return out


def samples_from_dirs(real_dirs: Iterable[str | os.PathLike] = (),
                      fake_dirs: Iterable[str | os.PathLike] = (),
                      groups: Mapping[str, str] | None = None, sources: Mapping[str, str] | None = None,
                      source: str = "", root: str = "") -> list[Sample]:
    """Samples from explicit folders of real and of fake images (recursive), reals first.

    ``groups`` is an optional :func:`read_groups` mapping; unlisted files are their own group.
    ``sources`` an optional :func:`read_sources` mapping; unlisted files get ``source``.
    ``root`` is stored in every sample.
    """
    pairs = [(p, 0) for d in real_dirs for p in _listed(d)] + [(p, 1) for d in fake_dirs for p in _listed(d)]
    return _samples(pairs, groups, sources, source, root)


def _listed(d) -> list[Path]:
    if not Path(d).is_dir():
        raise FileNotFoundError(f"not a folder: {d}")
    return list_images(d)


def load_split(root: str | os.PathLike, split: str, groups: Mapping[str, str] | None = None,
               name: str | None = None) -> list[Sample]:
    """Samples of one split: ``root/<split>/{Real,Fake}/**``; [] when the split folder is absent.

    ``groups`` defaults to ``root/metadata.csv`` when present; sources come from its
    ``source`` column, else ``name`` (default :func:`root_name`), also each sample's root.
    """
    root = Path(root)
    if groups is None:
        groups = _root_groups(root)
    sdir = find_split(root, split)
    if sdir is None:
        return []
    name = name or root_name(root)
    return load_split_dir(sdir, groups, _root_sources(root), source=name, root=name)


def load_split_dir(split_dir: str | os.PathLike, groups: Mapping[str, str] | None = None,
                   sources: Mapping[str, str] | None = None, source: str = "", root: str = "") -> list[Sample]:
    """Samples of one split folder: ``split_dir/{Real,Fake}/**`` (one of the two may be absent).

    ``groups``, ``sources``: optional :func:`read_groups` / :func:`read_sources` mappings
    (``source`` for unlisted files, ``root`` for all). Raises FileNotFoundError when
    ``split_dir`` holds neither a Real nor a Fake folder.
    """
    real, fake = find_class_dir(split_dir, 0), find_class_dir(split_dir, 1)
    if real is None and fake is None:
        raise FileNotFoundError(f"{split_dir} has neither a Real nor a Fake folder")
    return samples_from_dirs([real] if real else [], [fake] if fake else [], groups, sources, source, root)


def resolve_samples(path: str | os.PathLike, split: str = "test",
                    name: str | None = None) -> tuple[list[Sample], str]:
    """The samples of ``path`` by the rule of :func:`resolve_split` (a Fake/Real folder, or a
    dataset root's ``split``), with their sources and root filled in: from the
    ``metadata.csv`` of the split folder, else of the root it is a split of, else ``name``
    (default :func:`root_name`). Returns ``(samples, display_name)``; groups are not read
    (evaluation needs none)."""
    folder, display = resolve_split(path, split)
    name = name or root_name(path)
    csvs = [folder / METADATA_FILE]
    if folder.name.lower() in _SPLIT_NAMES:
        csvs.append(folder.parent / METADATA_FILE)
    sources = next((read_sources(c) for c in csvs if c.is_file()), {})
    return load_split_dir(folder, None, sources, source=name, root=name), display


def _columns(metadata_csv: Path) -> set[str]:
    with open(metadata_csv, newline="", encoding="utf-8") as f:
        return set(next(csv.reader(f), ()))


def _root_groups(root: Path) -> dict[str, str]:
    """The groups of ``root/metadata.csv``; {} without the file or without a ``group`` column (a
    csv that only names sources, as faces-wild's: every file is then its own group)."""
    path = root / METADATA_FILE
    if not path.is_file() or "group" not in _columns(path):
        return {}
    return read_groups(path)


def _root_sources(root: Path) -> dict[str, str]:
    return read_sources(root / METADATA_FILE) if (root / METADATA_FILE).is_file() else {}


# --- splits ---------------------------------------------------------------------------------
def split_by_group(samples: Sequence[Sample], fraction: float,
                   seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Hold out about ``fraction`` of ``samples``, whole groups at a time.

    Groups are shuffled with ``seed`` and taken until the held-out part reaches
    ``fraction`` of the samples (at least one group, and never all of them).

    Returns
    -------
    (kept, held_out), each in the input order.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    names = sorted({s.group for s in samples})
    if fraction == 0 or len(names) < 2:
        return list(samples), []
    sizes: dict[str, int] = {}
    for s in samples:
        sizes[s.group] = sizes.get(s.group, 0) + 1
    target = fraction * len(samples)
    held: set[str] = set()
    n_held = 0
    for i in np.random.default_rng(seed).permutation(len(names)):
        if n_held >= target or len(held) == len(names) - 1:
            break
        held.add(names[i])
        n_held += sizes[names[i]]
    return [s for s in samples if s.group not in held], [s for s in samples if s.group in held]


def discover(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0, name: str | None = None) -> Splits:
    """Find the train / validation / test samples under ``root``.

    ``root`` is a dataset root or, by the rule of :func:`resolve_split`, a bare Fake/Real
    folder: that folder is then the training set, with no Test split. Without a
    validation folder (always, for a bare folder), ``val_fraction`` of the training set
    is held out by group (:func:`split_by_group`, seeded). A missing Test folder gives an
    empty list. Groups and sources come from ``root/metadata.csv`` when present; a sample
    without a listed source gets ``name`` (default :func:`root_name` of ``root``), which is
    also every sample's ``root``. Call :func:`check_disjoint` on the result before trusting
    any score.
    """
    root = Path(root)
    train_dir, _ = resolve_split(root, "train")
    groups, name = _root_groups(root), name or root_name(root)
    tag = {"sources": _root_sources(root), "source": name, "root": name}
    if train_dir == root:  # a bare Fake/Real folder: all of it is for training (and validation)
        train, val = split_by_group(load_split_dir(root, groups, **tag), val_fraction, seed)
        log.info("%s is a Fake/Real folder, not a dataset root: training on it, %d of %d images held "
                 "out by group for validation, no Test split", root, len(val), len(train) + len(val))
        return Splits(train, val, [])
    train = load_split_dir(train_dir, groups, **tag)
    if find_split(root, "validation") is not None:
        val = load_split(root, "validation", groups, name=name)
    else:
        train, val = split_by_group(train, val_fraction, seed)
        log.info("no validation folder in %s: held out %d of %d training images by group",
                 root, len(val), len(train) + len(val))
    return Splits(train, val, load_split(root, "test", groups, name=name))


def check_disjoint(splits: Splits | Mapping[str, Sequence[Sample]]) -> None:
    """Raise ValueError when two splits share a file (by resolved path) or a group."""
    parts = splits._asdict() if isinstance(splits, Splits) else dict(splits)
    keys = {n: ({_key(s.path) for s in v}, {s.group for s in v}) for n, v in parts.items()}
    names = list(keys)
    problems = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for what, j in (("file", 0), ("group", 1)):
                common = keys[a][j] & keys[b][j]
                if common:
                    ex = ", ".join(sorted(common)[:3])
                    problems.append(f"{len(common)} {what}(s) in both {a} and {b} (e.g. {ex})")
    if problems:
        raise ValueError("splits overlap: " + "; ".join(problems))


def source_counts(samples: Iterable[Sample]) -> dict[str, dict[str, int]]:
    """{source: {"Real": n_real, "Fake": n_fake}}, sources in order of first appearance."""
    out: dict[str, dict[str, int]] = {}
    for s in samples:
        row = out.setdefault(s.source, {CLASS_NAMES[0]: 0, CLASS_NAMES[1]: 0})
        row[CLASS_NAMES[s.label]] += 1
    return out


def class_counts(samples: Iterable[Sample]) -> dict[str, int]:
    """{"Real": n_real, "Fake": n_fake}."""
    labels = np.fromiter((s.label for s in samples), dtype=np.int64)
    counts = np.bincount(labels, minlength=2)
    return {CLASS_NAMES[0]: int(counts[0]), CLASS_NAMES[1]: int(counts[1])}
