"""The hostile corpus (tests/hostile.py) through predict, evaluate, train and scan, each in a
child process under a timeout: one row per file with the expected error, the valid files
still scored, no traceback, no hang, and the run's peak memory (its own high-water mark)
under 1.5 GB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepfake_detector.data import ImageDecodeError, load_image
from deepfake_detector.results import table_line

from .hostile import EVIL_NAME, make_corpus
from .synthetic import make_dataset

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and symbolic links need a POSIX system")

PEAK_LIMIT_MB = 1536
TIMEOUT_S = 240
# the CLI in this process's interpreter, reporting its peak memory (its own and its children's) at exit
RUNNER = """
import resource, sys
from deepfake_detector.cli import main
try:
    rc = main(sys.argv[1:])
finally:
    # its own high-water mark from /proc (ru_maxrss of RUSAGE_SELF keeps the parent's size from
    # before exec on Linux, so a large test process would inflate it), plus its largest child's
    # (the decode worker, stopped and waited for first): the two can be at their peaks together
    from deepfake_detector.data.deadline import shutdown
    shutdown()
    try:
        own = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
    except (OSError, StopIteration):
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = own + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"PEAK_KB {peak}", file=sys.stderr)
sys.exit(rc)
"""


def run_cli(*args, cwd=None) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak MB) of ``deepfake-detector ARGS`` in a child process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, "-c", RUNNER, *map(str, args)], capture_output=True, text=True,
                       timeout=TIMEOUT_S, cwd=cwd, env=env)
    peak = [line for line in p.stderr.splitlines() if line.startswith("PEAK_KB ")]
    assert peak, p.stderr[-2000:]
    return p.returncode, p.stdout, p.stderr, int(peak[-1].split()[1]) / 1024


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "corpus"
    return folder, make_corpus(folder)


def test_the_gate_refuses_each_crafted_image_with_its_reason_before_decoding(corpus):
    folder, expected = corpus
    for name, err in expected.items():
        if name.endswith(".mp4"):
            continue
        if err is None:
            assert load_image(folder / name).shape[2] == 3
            continue
        with pytest.raises(ImageDecodeError) as got:
            load_image(folder / name)
        assert err in str(got.value), (name, str(got.value))
        assert " at 0x" not in str(got.value)  # the same file always gets the same message


def test_predict_gives_one_row_per_file_and_scores_the_valid_ones(corpus):
    folder, expected = corpus
    rc, out, err, peak = run_cli("predict", "--fast", "--whole-image", "--follow-links", "--format", "json", folder)
    rows = {Path(r["path"]).name: r for r in json.loads(out)}
    assert sorted(rows) == sorted(expected)
    for name, want in expected.items():
        r = rows[name]
        if want is None and r["kind"] == "video":  # synthetic clips have no face: no verdict, no error
            assert r["label"] == "NoFace" and r["error"] is None, (name, r)
        elif want is None:
            assert r["label"] in ("Real", "Fake") and 0 <= r["p_fake"] <= 1, (name, r)
        else:
            assert r["label"] == "Error" and want in r["error"], (name, r)
    cut, whole = rows["cut.mp4"], rows["clip.mp4"]
    assert whole["n_frames"] == whole["n_frames_requested"] == 32 and whole["warning"] is None
    assert cut["n_frames_requested"] == 32 and cut["n_frames"] < 16
    assert f"only {cut['n_frames']} of the 32 requested frames" in cut["warning"]
    assert rc == 1  # some inputs failed
    assert "Traceback" not in err
    assert peak < PEAK_LIMIT_MB, f"peak {peak:.0f} MB"


def test_table_output_escapes_file_names_and_messages_are_stable(corpus):
    folder, _ = corpus
    runs = [run_cli("predict", "--fast", "--follow-links", folder) for _ in range(2)]
    assert runs[0][1] == runs[1][1]  # the same corpus, the same table, byte for byte
    out = runs[0][1]
    assert "\x1b" not in out and "evil\\n\\x1b[31mname.png" in out
    assert len(out.splitlines()) == 1 + len(make_corpus_names(folder))  # the header, then no row split by a newline
    row = {"path": EVIL_NAME, "label": "Error", "p_fake": None, "confidence": None, "error": "x\ny"}
    assert "\n" not in table_line(row)


def make_corpus_names(folder: Path) -> list[str]:
    return [p for p in os.listdir(folder) if not p.startswith(".")]


def test_evaluate_skips_and_counts_the_bad_files(corpus, tmp_path):
    folder, expected = corpus
    data = tmp_path / "labelled"
    rng = np.random.default_rng(0)
    for label in ("Real", "Fake"):
        (data / label).mkdir(parents=True)
        for name in expected:
            if not name.endswith(".mp4") and name != EVIL_NAME:
                src = folder / name
                dst = data / label / name
                if src.is_symlink():
                    os.symlink(os.readlink(src), dst)
                elif name == "fifo.jpg":
                    os.mkfifo(dst)
                elif name == "sparse.jpg":
                    with open(dst, "wb") as f:
                        f.truncate(1536 * 2**20)
                else:
                    dst.write_bytes(src.read_bytes())
    n_bad = sum(1 for n, e in expected.items() if e is not None and not n.endswith(".mp4"))
    del rng
    rc, out, err, peak = run_cli("evaluate", "--fast", "--follow-links", "--json", "--data", data, "--workers", "1")
    assert rc == 0, err[-2000:]
    result = json.loads(out)
    assert result["skipped"] == 2 * n_bad and result["n"] == 2 * 4
    assert "Traceback" not in err
    assert peak < PEAK_LIMIT_MB


def test_train_finishes_its_epoch_past_the_bad_files(corpus, tmp_path):
    folder, expected = corpus
    ds = make_dataset(tmp_path / "ds", n_per_class=(12, 6, 6), size=32)
    for split in ("Train", "Validation"):
        for name in ("header-65500.jpg", "half-with-end.jpg", "bomb-13000.png", "garbage.jpg", "empty.png"):
            (ds / split / "Real" / name).write_bytes((folder / name).read_bytes())
        os.mkfifo(ds / split / "Fake" / "fifo.jpg")
        os.symlink("/dev/zero", ds / split / "Fake" / "zero.jpg")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"arch": "df-cnn", "epochs": 1, "batch_size": 8, "workers": 1, "cache": False,
                                  "augment": None, "early_stopping": None,
                                  "model_config": {"input_size": 32, "widths": [8, 8, 8, 8, 8],
                                                   "depths": [1, 1, 1, 1, 1]}}))
    rc, out, err, peak = run_cli("train", "--config", config, "--data", ds, "--out", tmp_path / "run", "--quiet",
                                 "--follow-links")
    assert rc == 0, err[-3000:]
    assert (tmp_path / "run" / "best.npz").exists()
    assert "skipping unreadable image" in err and "a FIFO (named pipe)" in err
    assert "Traceback" not in err
    assert peak < PEAK_LIMIT_MB


def test_scan_does_not_hang_and_reports_what_it_could_not_read(corpus, tmp_path):
    folder, expected = corpus
    rc, out, err, peak = run_cli("scan", folder, "--out", tmp_path / "results.csv", "--fast", "--workers", "0",
                                 "--follow-links", "--json", "--quiet")
    summary = json.loads(out)
    unread = {"fifo.jpg", "zero.jpg", "loop.jpg", "sparse.jpg"}  # never read, so no hash and no row
    assert summary["unreadable"] == len(unread)
    listed = {Path(f["path"]).name: f["error"] for f in summary["failures"]}
    for name in unread:
        assert expected[name] in listed[name]
    assert summary["scanned"] == len(expected) - len(unread)
    assert rc == 1  # inputs were lost
    assert "Traceback" not in err
    assert peak < PEAK_LIMIT_MB


def test_an_unreadable_folder_is_reported_and_the_exit_is_nonzero(tmp_path, monkeypatch, capsys):
    """Simulated (root reads every folder): os.scandir fails on one sub-folder."""
    from deepfake_detector.cli import main

    from .hostile import png
    from .synthetic import face_like

    (tmp_path / "ok").mkdir()
    (tmp_path / "locked").mkdir()
    (tmp_path / "ok" / "a.png").write_bytes(png(face_like(np.random.default_rng(0), 32, False)))
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert main(["predict", "--fast", "--format", "json", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert [Path(r["path"]).name for r in json.loads(captured.out)] == ["a.png"]
    assert "1 folder(s) could not be read" in captured.err

    from deepfake_detector.data import list_images

    with pytest.raises(ValueError, match="could not be read"):
        list_images(tmp_path)


def test_limits_are_flags_and_reach_child_processes(corpus, tmp_path):
    folder, _ = corpus
    rc, out, err, _ = run_cli("predict", "--fast", "--format", "json", "--max-pixels", "1000", folder / "good1.png")
    assert rc == 1 and "the limit is 0.001 megapixels" in json.loads(out)[0]["error"]
    rc, out, err, _ = run_cli("predict", "--fast", "--max-pixels", "-5", folder / "good1.png")
    assert rc == 2 and err.startswith("error: max_pixels must be > 0")


def test_a_video_read_in_part_gets_a_warning_and_low_confidence():
    from deepfake_detector.results import VIDEO_MIN_DECODED_SHARE, video_confidence

    assert video_confidence(0.97, 32, 32) == ("HIGH", None)
    assert video_confidence(0.97, 16, 32) == ("HIGH", None)  # half read: enough
    level, warning = video_confidence(0.97, 1, 32)
    assert level == "LOW" and "only 1 of the 32 requested frames" in warning
    assert video_confidence(None, 1, 32)[0] is None and VIDEO_MIN_DECODED_SHARE == 0.5


def test_a_dfdc_clip_cut_to_5_percent_is_scored_low_with_a_warning(videos_dir, tmp_path):
    from deepfake_detector.models import load
    from deepfake_detector.video import analyze_video

    from .hostile import cut_mp4

    clip = sorted(videos_dir.glob("*.mp4"))[0]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(cut_mp4(clip.read_bytes()))
    model = load(fast=True)
    whole, part = analyze_video(clip, model), analyze_video(cut, model)
    assert whole["n_frames"] == 32 and whole["confidence"] in ("HIGH", "MEDIUM", "LOW") and whole["warning"] is None
    assert part["n_frames_requested"] == 32 and 1 <= part["n_frames"] < 16
    assert part["label"] in ("Real", "Fake") and part["confidence"] == "LOW"
    assert "requested frames could be decoded" in part["warning"]


def test_watch_refuses_a_fifo_named_like_a_video(tmp_path, capsys):
    from deepfake_detector.cli import main

    os.mkfifo(tmp_path / "live.mp4")
    assert main(["watch", "--fast", "--source", str(tmp_path / "live.mp4")]) == 2
    err = capsys.readouterr().err
    assert "a FIFO (named pipe), not a regular file" in err and "Traceback" not in err


def test_an_image_that_breaks_the_detector_costs_only_its_own_row(tmp_path):
    from deepfake_detector.models import load
    from deepfake_detector.predict import predict_paths

    from .hostile import png
    from .synthetic import face_like

    class Fragile:
        name = "fragile"

        def detect(self, image):
            if image[0, 0, 0] == 255:
                raise RuntimeError("the detector broke on this one")
            return []

    rng = np.random.default_rng(0)
    for i in range(3):
        img = face_like(rng, 32, False)
        img[0, 0] = 255 if i == 1 else 0
        (tmp_path / f"{i}.png").write_bytes(png(img))
    rows = list(predict_paths([tmp_path], load(fast=True), faces=True, whole_if_no_face=True, detector=Fragile()))
    assert [r["label"] for r in rows] != [] and len(rows) == 3
    assert rows[1]["label"] == "Error" and "the detector broke on this one" in rows[1]["error"]
    assert rows[0]["label"] in ("Real", "Fake") and rows[2]["label"] in ("Real", "Fake")


def test_the_web_ui_functions_refuse_each_bad_file_with_an_upload_error(corpus):
    """The Image and Video tabs' work (no Gradio needed): a refusal the UI shows, never a hang
    on a FIFO (the check opens only regular files) and never another exception."""
    pytest.importorskip("fastapi", reason="the web extra is not installed")
    from deepfake_detector.models import load
    from deepfake_detector.web.app import analyse_image, analyse_video
    from deepfake_detector.web.uploads import UploadError

    folder, expected = corpus
    model = load(fast=True)
    for name, err in expected.items():
        analyse = analyse_video if name.endswith(".mp4") else analyse_image
        if err is None:
            analyse(model, folder / name)
            continue
        with pytest.raises(UploadError):
            analyse(model, folder / name)


def test_a_video_claiming_billions_of_frames_cannot_make_sampling_unbounded():
    from deepfake_detector.video.read import MAX_SAMPLED_FRAMES, sample_indices

    assert len(sample_indices(2**31, 32)) == 32  # the default: 32 frames, whatever the claim
    assert len(sample_indices(MAX_SAMPLED_FRAMES * 3, None, every=3)) == MAX_SAMPLED_FRAMES
    with pytest.raises(ValueError, match="over the limit of 2048 sampled frames per video"):
        sample_indices(2**31, None, every=1)
    with pytest.raises(ValueError, match="over the limit"):
        sample_indices(2**31, None)  # "all frames" of a container that claims 2^31
    with pytest.raises(ValueError, match="n_frames must be >= 1"):
        sample_indices(2**31, 0)


# --- round two --------------------------------------------------------------------------------
def test_round_two_files_get_their_refusal_or_are_read_as_their_content(tmp_path):
    from .hostile import make_round_two

    expected = make_round_two(tmp_path / "r2")
    for name, want in expected.items():
        if name.endswith(".mp4"):
            continue
        if want is None:
            assert load_image(tmp_path / "r2" / name).shape == (96, 96, 3)
        else:
            with pytest.raises(ImageDecodeError, match=want.split(";")[0]):
                load_image(tmp_path / "r2" / name)
    rc, out, err, peak = run_cli("predict", "--fast", "--whole-image", "--format", "json", tmp_path / "r2")
    rows = {Path(r["path"]).name: r for r in json.loads(out)}
    assert sorted(rows) == sorted(expected)
    for name, want in expected.items():
        r = rows[name]
        if want is None:
            assert r["kind"] == "image" and r["label"] in ("Real", "Fake"), (name, r)
        else:
            assert r["label"] == "Error" and want in r["error"], (name, r)
    assert rc == 1 and "Traceback" not in err and peak < PEAK_LIMIT_MB


@pytest.fixture(scope="module")
def big_pngs(tmp_path_factory):
    """A 36-MP RGBA PNG and a 36-MP 16-bit grey PNG (smooth, so small on disk)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("big")
    ramp = np.linspace(0, 1, 6000, dtype=np.float32)
    rgba = np.empty((6000, 6000, 4), np.uint8)
    rgba[..., 0] = (ramp * 255).astype(np.uint8)[None, :]
    rgba[..., 1] = (ramp * 255).astype(np.uint8)[:, None]
    rgba[..., 2] = 90
    rgba[..., 3] = 200
    Image.fromarray(rgba).save(folder / "rgba.png", compress_level=1)
    del rgba
    grey = (ramp[None, :] * ramp[:, None] * 65535).astype(np.uint16)
    Image.fromarray(grey).save(folder / "grey16.png", compress_level=1)
    return folder


@pytest.mark.parametrize("name", ["rgba.png", "grey16.png"])
def test_a_big_deep_png_is_decoded_within_a_gigabyte(big_pngs, name):
    rc, out, err, peak = run_cli("predict", "--fast", "--whole-image", "--format", "json", big_pngs / name)
    row = json.loads(out)[0]
    assert rc == 0 and row["label"] in ("Real", "Fake"), (row, err[-500:])
    assert peak < 1024, f"peak {peak:.0f} MB"


def test_the_decoded_bytes_budget_counts_channels_and_sample_size(big_pngs):
    rc, out, err, _ = run_cli("predict", "--fast", "--whole-image", "--format", "json", "--max-decoded-mb", "100",
                              big_pngs)
    rows = {Path(r["path"]).name: r for r in json.loads(out)}
    assert "6000 x 6000 x 4 channels x 1 byte(s) = 137 MB" in rows["rgba.png"]["error"]
    assert rows["grey16.png"]["label"] in ("Real", "Fake")  # 6000 x 6000 x 1 x 2 = 69 MB: decoded
    assert rc == 1


# --- folder walks: any depth, no loops, no links out of the folder unless asked -------------------
def test_a_walk_holds_on_any_tree_and_skips_links_out_of_its_folder(tmp_path):
    from deepfake_detector.data.media import walk_media

    root = tmp_path / "root"
    root.mkdir()
    deep = root
    for _ in range(1200):  # deeper than Python's recursion limit (1,000), within PATH_MAX
        deep = deep / "a"
        os.mkdir(deep)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"x")
    (deep / "deep.jpg").write_bytes(b"x")
    (root / "inside.jpg").write_bytes(b"x")
    os.symlink(root / "inside.jpg", root / "link-in.jpg")
    os.symlink(outside, root / "link-out.jpg")
    os.symlink(root, root / "a" / "loop")  # a folder link back to the root
    walk = walk_media(root)
    names = [p.name for p in walk]
    assert sorted(names) == ["deep.jpg", "inside.jpg", "link-in.jpg"]
    assert walk.ignored.by_type["link out of the folder"] == 1 and walk.ignored.by_type["folder link"] == 1
    assert "link-out.jpg" in walk.ignored.describe()
    followed = [p.name for p in walk_media(root, follow_links=True)]
    assert "link-out.jpg" in followed
    remove_deep(root / "a", 1200)


def remove_deep(top: Path, depth: int) -> None:
    """Remove a chain of ``depth`` nested folders bottom-up (shutil.rmtree recurses, and
    pytest's clean-up would hit the recursion limit on it)."""
    chain = [top]
    for _ in range(depth - 1):
        chain.append(chain[-1] / "a")
    for folder in reversed(chain):
        for entry in os.scandir(folder):
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        os.rmdir(folder)


def test_predict_says_what_it_skipped_out_of_the_folder(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    os.symlink("/etc/hostname" if os.path.exists("/etc/hostname") else __file__, root / "x.jpg")
    rc, out, err, _ = run_cli("predict", "--fast", "--format", "json", root)
    assert json.loads(out) == [] and "link out of the folder" in err
