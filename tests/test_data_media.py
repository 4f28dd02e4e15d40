"""The one table of media extensions and the folder walk that counts what it skips (data.media)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_detector.data import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    MediaWalk,
    datasets,
    kind_of,
    list_images,
    load_image,
    media,
    walk_media,
)
from deepfake_detector.video import read as video_read

PIL_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".webp": "WEBP",
               ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF", ".avif": "AVIF"}


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_one_table_everywhere():
    assert datasets.IMAGE_EXTENSIONS is media.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
    assert video_read.VIDEO_EXTENSIONS is media.VIDEO_EXTENSIONS is VIDEO_EXTENSIONS
    for ext in (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"):
        assert ext in VIDEO_EXTENSIONS
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} <= set(IMAGE_EXTENSIONS)
    assert not set(IMAGE_EXTENSIONS) & set(VIDEO_EXTENSIONS)
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)


def test_kind_of_is_case_insensitive():
    assert kind_of("a/b.JPG") == kind_of(Path("x.gif")) == kind_of("y.TiFf") == "image"
    assert kind_of("clip.FLV") == kind_of(Path("d/clip.mp4")) == "video"
    assert kind_of("notes.txt") is None and kind_of("README") is None and kind_of(".jpg") is None
    assert video_read.is_video_path("c.MKV") and not video_read.is_video_path("c.png")


@pytest.mark.parametrize("ext", IMAGE_EXTENSIONS)
def test_every_listed_image_extension_decodes(tmp_path, ext):
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[:, :, 0] = 200
    rgb[:12, :, 2] = 100
    path = tmp_path / f"img{ext}"
    Image.fromarray(rgb).save(path, format=PIL_FORMATS[ext])
    got = load_image(path)
    assert got.shape == (24, 32, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - rgb).mean() < 8  # lossy formats: close, not equal


def test_gif_decodes_its_first_frame(tmp_path):
    red, blue = np.zeros((16, 20, 3), np.uint8), np.zeros((16, 20, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    frames = [Image.fromarray(red), Image.fromarray(blue)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    got = load_image(tmp_path / "anim.gif")
    assert got.shape == (16, 20, 3) and (got == red).all()


def media_tree(root: Path) -> None:
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(root / "a.gif")
    touch(root / "sub" / "clip.flv")  # the walk goes by extension; nothing is decoded
    touch(root / "sub" / "deeper" / "z.PNG")
    touch(root / "sub" / "notes.txt")
    touch(root / "b.MP4")
    touch(root / "README")
    touch(root / ".hidden.jpg")
    touch(root / ".cache" / "x.jpg")


def test_walk_finds_gif_and_flv_and_counts_what_it_ignores(tmp_path):
    media_tree(tmp_path)
    walk = walk_media(tmp_path)
    assert isinstance(walk, MediaWalk) and not walk.done
    got = [p.relative_to(tmp_path).as_posix() for p in walk]
    assert got == ["a.gif", "b.MP4", "sub/clip.flv", "sub/deeper/z.PNG"]
    assert walk.done and walk.found == 4
    assert walk.ignored.count == 2  # hidden files and folders are neither found nor ignored
    assert sorted(p.name for p in walk.ignored.examples) == ["README", "notes.txt"]
    assert walk.ignored.by_type == {".txt": 1, "no extension": 1}
    assert "2 ignored" in walk.ignored.describe() and "notes.txt" in walk.ignored.describe()


def test_walk_is_lazy_and_kinds_filter(tmp_path):
    media_tree(tmp_path)
    walk = walk_media(tmp_path, kinds="image", max_examples=1)
    assert next(walk).name == "a.gif"
    assert walk.found == 1 and walk.ignored.count == 1 and not walk.done  # b.MP4 seen on the way
    rest = list(walk)
    assert [p.name for p in rest] == ["z.PNG"]
    assert walk.ignored.count == 4 and len(walk.ignored.examples) == 1
    assert walk.ignored.by_type == {".mp4": 1, ".flv": 1, ".txt": 1, "no extension": 1}
    assert walk.ignored.describe().endswith(", ...")
    assert [p.name for p in walk_media(tmp_path, kinds=["video"])] == ["b.MP4", "clip.flv"]
    with pytest.raises(ValueError, match="unknown media kind"):
        walk_media(tmp_path, kinds=("audio",))


def test_walk_named_files_are_yielded_as_given_and_order_matches_sorted(tmp_path):
    media_tree(tmp_path)
    named = [tmp_path / "sub" / "notes.txt", tmp_path / "missing.jpg"]
    walk = walk_media([*named, tmp_path / "sub"])
    assert list(walk)[:2] == named  # the caller named them: it reports what is wrong
    assert walk.ignored.count == 1  # only sub/notes.txt seen while walking sub/
    for rel in ["b/x.jpg", "b.jpg", "b-c/y.jpg", "b/c/z.jpg", "B/w.jpg"]:
        touch(tmp_path / "order" / rel)
    found = list(walk_media(tmp_path / "order"))
    assert found == sorted(found)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_walk_reports_folder_links_and_broken_links(tmp_path):
    touch(tmp_path / "real" / "a.jpg")
    (tmp_path / "top").mkdir()
    try:
        os.symlink(tmp_path / "real", tmp_path / "top" / "linked")
        os.symlink(tmp_path / "top" / "gone.jpg", tmp_path / "top" / "broken.jpg")  # inside: followed
        os.symlink(tmp_path / "gone.txt", tmp_path / "top" / "broken.txt")
    except OSError:
        pytest.skip("cannot create symbolic links here")
    touch(tmp_path / "top" / "b.jpg")
    walk = walk_media(tmp_path / "top")
    # a broken link with an image's name is yielded, so that its reader gives it an error row
    # ("no such file (a broken symbolic link)"); one with another name is counted as not a file
    assert [p.name for p in walk] == ["b.jpg", "broken.jpg"]
    assert walk.ignored.by_type == {"folder link": 1, "not a file": 1}
    assert walk.ignored.lost == 0


def test_list_images_warns_with_the_count_it_ignored(tmp_path, caplog):
    media_tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="deepfake_detector.data.datasets"):
        got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a.gif", "sub/deeper/z.PNG"]
    assert "4 ignored" in caplog.text and ".flv: 1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deepfake_detector.data.datasets"):
        assert list_images(tmp_path / "sub" / "deeper") == [tmp_path / "sub" / "deeper" / "z.PNG"]
        assert list_images(tmp_path / "missing") == []
    assert caplog.text == ""


def test_walk_items_give_the_kind(tmp_path):
    media_tree(tmp_path)
    walk = walk_media([tmp_path / "sub", tmp_path / "README"])
    assert [(p.name, k) for p, k in walk.items()] == [("clip.flv", "video"), ("z.PNG", "image"), ("README", None)]
    assert walk.done and walk.found == 3 and walk.ignored.count == 1
