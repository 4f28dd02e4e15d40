"""Sample discovery, grouped splits and their disjointness (deepfake_detector.data.datasets)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from deepfake_detector.data import (
    Sample,
    Splits,
    check_disjoint,
    class_counts,
    discover,
    find_split,
    is_split_dir,
    list_images,
    load_split,
    load_split_dir,
    read_groups,
    resolve_split,
    samples_from_dirs,
    split_by_group,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")  # discovery never decodes
    return path


def grouped_tree(root: Path, n_groups=40, with_metadata=True) -> dict[str, str]:
    """Train only; group g has one real and g % 3 + 1 fakes. Returns {relative file: group}."""
    rows = {}
    for g in range(n_groups):
        rows[f"Train/Real/r{g:03d}.jpg"] = f"video{g:03d}"
        for k in range(g % 3 + 1):
            rows[f"Train/Fake/f{g:03d}_{k}.jpg"] = f"video{g:03d}"
    for rel in rows:
        touch(root / rel)
    if with_metadata:
        with open(root / "metadata.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "label", "source_video", "group"])
            for rel, g in rows.items():
                w.writerow([rel, rel.split("/")[1], g + ".mp4", g])
    return rows


def test_list_images_recursive_sorted_case_insensitive(tmp_path):
    for rel in ["b/x.JPG", "a.png", "b/c/y.jpeg", "z.WebP", "q.bmp", "notes.txt", "b/.hidden.jpg", "v.mp4"]:
        touch(tmp_path / rel)
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a.png", "b/c/y.jpeg", "b/x.JPG", "q.bmp", "z.WebP"]


def test_lower_case_layout_with_val(tmp_path):
    for rel in ["train/real/a.jpg", "train/fake/b.jpg", "train/fake/c.jpg", "val/real/d.jpg",
                "val/fake/e.png", "test/fake/f.jpg"]:
        touch(tmp_path / rel)
    assert find_split(tmp_path, "validation") == tmp_path / "val"
    assert find_split(tmp_path, "Train") == tmp_path / "train"
    s = discover(tmp_path)
    assert [len(s.train), len(s.validation), len(s.test)] == [3, 2, 1]
    assert {Path(x.path).name: x.label for x in s.validation} == {"d.jpg": 0, "e.png": 1}
    assert class_counts(s.train) == {"Real": 1, "Fake": 2}
    assert s.test[0].label == 1
    check_disjoint(s)


@pytest.mark.parametrize("name", ["Validation", "validation", "Val", "valid"])
def test_validation_aliases(tmp_path, name):
    touch(tmp_path / name / "Fake" / "a.jpg")
    assert find_split(tmp_path, "val") == tmp_path / name


def test_two_folders_for_one_split_is_an_error(tmp_path):
    (tmp_path / "Train").mkdir()
    (tmp_path / "train").mkdir()
    if len(list(tmp_path.iterdir())) < 2:
        pytest.skip("case-insensitive file system")
    with pytest.raises(ValueError, match="ambiguous"):
        find_split(tmp_path, "train")


def test_missing_train_and_missing_test(tmp_path):
    with pytest.raises(FileNotFoundError):
        discover(tmp_path)
    touch(tmp_path / "Train" / "Real" / "a.jpg")
    touch(tmp_path / "Train" / "Fake" / "b.jpg")
    touch(tmp_path / "Validation" / "Fake" / "c.jpg")
    assert discover(tmp_path).test == []
    assert load_split(tmp_path, "test") == []


def test_grouped_carve_out_keeps_groups_whole_and_is_seeded(tmp_path):
    rows = grouped_tree(tmp_path)
    s = discover(tmp_path, val_fraction=0.2, seed=3)
    n = len(rows)
    assert len(s.train) + len(s.validation) == n and s.test == []
    train_groups = {x.group for x in s.train}
    val_groups = {x.group for x in s.validation}
    assert train_groups and val_groups and not train_groups & val_groups
    assert train_groups | val_groups == set(rows.values())
    for x in s.train + s.validation:  # the group is the one metadata.csv gives
        assert x.group == rows[Path(x.path).relative_to(tmp_path).as_posix()]
    assert 0.15 * n <= len(s.validation) <= 0.3 * n
    check_disjoint(s)
    again = discover(tmp_path, val_fraction=0.2, seed=3)
    assert again == s
    other = discover(tmp_path, val_fraction=0.2, seed=4)
    assert {x.group for x in other.validation} != val_groups


def test_carve_out_without_metadata_uses_one_group_per_file(tmp_path):
    grouped_tree(tmp_path, n_groups=30, with_metadata=False)
    s = discover(tmp_path, val_fraction=0.25, seed=0)
    all_samples = s.train + s.validation
    assert len({x.group for x in all_samples}) == len(all_samples)  # every file its own group
    assert abs(len(s.validation) - 0.25 * len(all_samples)) <= 1
    check_disjoint(s)


def test_split_by_group_edge_cases():
    one = [Sample(f"/x/{i}.jpg", i % 2, "same") for i in range(5)]
    assert split_by_group(one, 0.5) == (one, [])  # a single group cannot be split
    two = [Sample("/a.jpg", 0, "g1"), Sample("/b.jpg", 1, "g2")]
    kept, held = split_by_group(two, 0.9)
    assert len(kept) == 1 and len(held) == 1  # never everything
    with pytest.raises(ValueError):
        split_by_group(two, 1.0)


def test_check_disjoint_catches_shared_files_and_groups(tmp_path):
    a, b = Sample(str(tmp_path / "a.jpg"), 0, "ga"), Sample(str(tmp_path / "b.jpg"), 1, "gb")
    check_disjoint(Splits([a], [b], []))
    same_file = Sample(str(tmp_path / "sub" / ".." / "a.jpg"), 0, "other")  # same file, other spelling
    with pytest.raises(ValueError, match="file"):
        check_disjoint(Splits([a], [b], [same_file]))
    with pytest.raises(ValueError, match="group"):
        check_disjoint(Splits([a], [Sample(str(tmp_path / "c.jpg"), 1, "ga")], []))


def test_samples_from_dirs_and_groups(tmp_path):
    grouped_tree(tmp_path, n_groups=3)
    groups = read_groups(tmp_path / "metadata.csv")
    s = samples_from_dirs([tmp_path / "Train" / "Real"], [tmp_path / "Train" / "Fake"], groups)
    assert [x.label for x in s] == [0] * 3 + [1] * 6
    assert s[0].group == "video000" and Path(s[0].path).name == "r000.jpg"
    loose = touch(tmp_path / "extra" / "z.jpg")
    (z,) = samples_from_dirs([], [loose.parent], groups)
    assert z.label == 1 and z.group == os.path.abspath(loose)  # unlisted: its own group
    with pytest.raises(FileNotFoundError):
        samples_from_dirs([tmp_path / "nope"], [])


def test_read_groups_needs_the_columns(tmp_path):
    (tmp_path / "metadata.csv").write_text("file,label\na.jpg,Real\n")
    with pytest.raises(ValueError, match="group"):
        read_groups(tmp_path / "metadata.csv")


# --- one rule: a dataset root or a Fake/Real folder ---------------------------------------------
def test_resolve_split_on_a_root_and_on_a_bare_folder(tmp_path):
    for rel in ["Train/Real/a.jpg", "Train/Fake/b.jpg", "val/real/c.jpg", "val/fake/d.jpg", "Test/Fake/e.jpg"]:
        touch(tmp_path / "ds" / rel)
    root = tmp_path / "ds"
    assert resolve_split(root) == (root / "Test", "ds/Test")  # a root: its Test split by default
    assert resolve_split(root, "validation") == (root / "val", "ds/val")
    assert resolve_split(root, "train") == (root / "Train", "ds/Train")
    split = root / "Train"
    for name in ("test", "train", "validation"):  # a Fake/Real folder is the split, whatever is asked
        assert resolve_split(split, name) == (split, "Train")
    assert resolve_split(root / "Test") == (root / "Test", "Test")  # one class folder is enough
    assert is_split_dir(split) and not is_split_dir(root)
    assert [x.label for x in load_split_dir(split)] == [0, 1]


def test_resolve_split_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_split(tmp_path / "missing")
    touch(tmp_path / "Train" / "Real" / "a.jpg")
    (tmp_path / "Test" / "junk").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="neither a Real nor a Fake"):
        resolve_split(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="Validation split.*its folders: Test, Train"):
        resolve_split(tmp_path, "val")
    with pytest.raises(ValueError, match="unknown split"):
        resolve_split(tmp_path, "holdout")


def test_discover_on_a_bare_fake_real_folder_trains_on_it_with_a_grouped_carve_out(tmp_path):
    rows = grouped_tree(tmp_path / "root", n_groups=30)
    train_dir = tmp_path / "root" / "Train"
    (train_dir / "metadata.csv").write_text(  # groups of the bare folder: its own metadata.csv
        "file,group\n" + "".join(f"{rel.split('/', 1)[1]},{g}\n" for rel, g in rows.items()))
    s = discover(train_dir, val_fraction=0.2, seed=1)
    assert s.test == [] and s.validation
    assert len(s.train) + len(s.validation) == len(rows)
    assert {x.group for x in s.train} | {x.group for x in s.validation} == set(rows.values())
    check_disjoint(s)  # groups kept whole
    as_root = discover(tmp_path / "root", val_fraction=0.2, seed=1)  # the same carve-out as the root's
    assert [x.path for x in as_root.validation] == [x.path for x in s.validation]


# --- the real data ----------------------------------------------------------------------------
def test_real_dfdc_faces_splits(dfdc_faces):
    s = discover(dfdc_faces)
    assert class_counts(s.train) == {"Real": 11446, "Fake": 17169}
    assert class_counts(s.validation) == {"Real": 1634, "Fake": 1634}
    assert class_counts(s.test) == {"Real": 1625, "Fake": 1625}
    check_disjoint(s)  # by path and by metadata.csv group
    # groups really come from metadata.csv (a path-as-group would make this check vacuous)
    n_train_groups = len({x.group for x in s.train})
    assert n_train_groups < len(s.train) and all(x.group.endswith(".mp4") for x in s.train[:100])
    # independently, straight from metadata.csv: every group sits in one split folder only
    splits_of_group: dict[str, set] = {}
    with open(dfdc_faces / "metadata.csv", newline="") as f:
        for row in csv.DictReader(f):
            splits_of_group.setdefault(row["group"], set()).add(row["file"].split("/")[0])
    assert all(len(v) == 1 for v in splits_of_group.values())
    assert len({x.group for x in s.train + s.validation + s.test}) == len(splits_of_group)
