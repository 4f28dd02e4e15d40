"""The collection scanner on this machine: rows, de-duplication, formats, sources, resuming."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="the scanner writes with pyarrow: pip install 'deepfake-detector[scan]'")
pd = pytest.importorskip("pandas")

from deepfake_detector.models import create_model, save_model  # noqa: E402
from deepfake_detector.scan import ScanInterrupted, read_results, scan  # noqa: E402
from deepfake_detector.scan.store import ResultsStore  # noqa: E402

from .conftest import PROJECT_ROOT  # noqa: E402

N_IMAGES = 240  # distinct face crops copied from the real data
N_DUPLICATES = 3
VIDEO_FRAMES = 10


def write_face_video(path: Path, faces: list[Path], n: int = VIDEO_FRAMES) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (224, 224))
    for i in range(n):
        writer.write(cv2.resize(cv2.imread(str(faces[i * len(faces) // n])), (224, 224)))
    writer.release()
    assert path.stat().st_size > 1000


def make_collection(dfdc_faces: Path, root: Path, n: int = N_IMAGES, n_dup: int = N_DUPLICATES) -> dict:
    """``n`` real and fake crops in two nested folders, ``n_dup`` byte copies under other names,
    a broken image, a text file (ignored by the folder walk) and a short video."""
    fake = sorted((dfdc_faces / "Test" / "Fake").glob("*.jpg"))[: n // 2]
    real = sorted((dfdc_faces / "Test" / "Real").glob("*.jpg"))[: n - n // 2]
    assert len(fake) + len(real) == n, "not enough real data"
    for sub, files in (("a/fake", fake), ("b/real", real)):
        (root / sub).mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, root / sub / f.name)
    (root / "dups").mkdir()
    for i in range(n_dup):
        shutil.copyfile(fake[i], root / "dups" / f"copy-{i}.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (root / "notes.txt").write_text("not an image")
    write_face_video(root / "clip.mp4", real[:5])
    return {"root": root, "unique": n + 2, "files": n + n_dup + 2, "duplicates": n_dup}


@pytest.fixture(scope="module")
def collection(dfdc_faces, tmp_path_factory):
    return make_collection(dfdc_faces, tmp_path_factory.mktemp("collection"))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.npz"
    save_model(create_model("seed-cnn", input_size=64, seed=3), path, extra_meta={"framing": "as-is"})  # whole images
    return str(path)


@pytest.fixture(scope="module")
def reference(collection, model_path, tmp_path_factory):
    """One uninterrupted scan with two worker processes."""
    out = tmp_path_factory.mktemp("ref") / "results.parquet"
    summary = scan(collection["root"], out, model_path=model_path, workers=2, batch_size=16, progress=False,
                   part_rows=64)
    return {"out": out, "summary": summary, "df": read_results(out)}


def scores(df) -> dict:
    return dict(zip(df["sha256"], df["p_fake"]))


def assert_same_scores(df, ref_df, subset: bool = False) -> None:
    got, want = scores(df), scores(ref_df)
    assert df["sha256"].is_unique
    if subset:
        assert set(got) <= set(want)
    else:
        assert set(got) == set(want)
    for h, p in got.items():
        q = want[h]
        assert (pd.isna(p) and pd.isna(q)) or abs(p - q) <= 1e-6 + 1e-9, (h, p, q)


def test_rows_hashes_errors_and_video(reference, collection, model_path):
    s, df = reference["summary"], reference["df"]
    assert len(df) == collection["unique"] == s["scanned"] == s["rows_total"]
    assert s["duplicates"] == collection["duplicates"] and s["skipped"] == 0
    assert s["files"] == collection["files"] and s["images"] == collection["unique"] - 1 and s["videos"] == 1
    assert df["sha256"].is_unique
    root = collection["root"]
    for _, row in df.sample(10, random_state=0).iterrows():  # the hash is the SHA-256 of the bytes
        assert row["sha256"] == hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest()
        assert row["size"] == Path(row["path"]).stat().st_size
    assert not any("dups" in p for p in df["path"])  # the first path with the content is kept
    assert not any(p.endswith(".txt") for p in df["path"])

    bad = df[df["path"] == str(root / "broken.jpg")].iloc[0]
    assert bad["label"] == "Error" and "cannot read image" in bad["error"] and pd.isna(bad["p_fake"])
    assert s["failed"] == 1 and s["failures"][0]["path"] == str(root / "broken.jpg")

    ok = df[df["error"].isna()]
    assert ok["p_fake"].between(0, 1).all() and set(ok["label"]) <= {"Real", "Fake", "NoFace"}
    assert s["fake"] + s["real"] + s["no_verdict"] == len(ok)
    assert (df["model"] == "seed-cnn").all() and (df["model_version"] == "untrained").all()

    video = df[df["kind"] == "video"].iloc[0]
    assert video["path"] == str(root / "clip.mp4")
    assert video["n_frames"] == VIDEO_FRAMES and 0 <= video["n_frames_with_faces"] <= VIDEO_FRAMES
    assert video["width"] == 224 and video["duration"] > 0
    images = df[df["kind"] == "image"]
    assert images["n_frames"].isna().all()


def test_parquet_folder_is_readable_by_pandas_and_pyarrow(reference, collection):
    import pyarrow.dataset as ds

    out = reference["out"]
    assert out.is_dir() and not [p for p in os.listdir(out) if p.startswith(".tmp-")]
    assert len(pd.read_parquet(out)) == collection["unique"]
    table = ds.dataset(out, format="parquet").to_table()
    assert table.num_rows == collection["unique"] and "sha256" in table.column_names
    meta = json.loads((out / "_scan.json").read_text())
    assert meta["model"]["arch"] == "seed-cnn" and meta["format"] == "parquet"


def test_second_run_does_no_work(reference, collection, model_path):
    out = reference["out"]
    parts = sorted(os.listdir(out))
    s = scan(collection["root"], out, model_path=model_path, workers=2, progress=False)
    assert s["scanned"] == 0 and s["failed"] == 0 and s["duplicates"] == 0
    assert s["skipped"] == collection["files"]
    assert sorted(os.listdir(out)) == parts  # no part written
    assert s["elapsed_s"] < 10  # no worker started: hashing only


def test_csv_output_and_a_list_file(reference, collection, model_path, tmp_path):
    root = collection["root"]
    listing = tmp_path / "list.txt"
    fakes = sorted(p.name for p in (root / "a" / "fake").iterdir())[:20]
    listing.write_text("# some of the fakes, a folder and a file that is gone\n\n"
                       + "".join(f"{os.path.relpath(root / 'a' / 'fake' / n, tmp_path)}\n" for n in fakes)
                       + f"{root / 'dups'}\n{root / 'gone.jpg'}\n")
    out = tmp_path / "results.csv"
    s = scan(listing, out, model_path=model_path, workers=0, progress=False, part_rows=8)
    assert s["scanned"] == 20 and s["duplicates"] == collection["duplicates"]
    assert s["failed"] == 1 and "gone.jpg" in s["failures"][0]["path"] and s["rows_total"] == 20
    parts = sorted(out.glob("part-*.csv"))
    assert len(parts) == 3
    raw = pd.concat([pd.read_csv(p) for p in parts])  # plain CSV files, one header each
    assert len(raw) == 20 and list(raw.columns)[:4] == ["path", "sha256", "size", "kind"]
    df = read_results(out)
    assert len(df) == 20 and df["sha256"].is_unique
    assert_same_scores(df, reference["df"], subset=True)
    again = scan(listing, out, model_path=model_path, workers=0, progress=False)
    assert again["scanned"] == 0 and again["skipped"] == 20 + collection["duplicates"]
    with pytest.raises(FileNotFoundError):
        scan(tmp_path / "no-such-folder", out, model_path=model_path, workers=0, progress=False)


def test_glob_source(reference, collection, model_path, tmp_path):
    root = collection["root"]
    out = tmp_path / "glob.parquet"
    s = scan([str(root / "b" / "**" / "*.jpg"), str(root / "*.mp4")], out, model_path=model_path, workers=1,
             progress=False)
    n_real = len(list((root / "b" / "real").iterdir()))
    assert s["scanned"] == n_real + 1 and s["videos"] == 1
    df = read_results(out)
    assert all("/b/real/" in p or p.endswith("clip.mp4") for p in df["path"])
    assert_same_scores(df, reference["df"], subset=True)


def test_refuses_another_model_and_a_second_writer(reference, collection, tmp_path):
    other = tmp_path / "other.npz"
    save_model(create_model("seed-cnn", input_size=64, seed=4), other, extra_meta={"framing": "as-is"})
    with pytest.raises(ValueError, match="another folder"):
        scan(collection["root"], reference["out"], model_path=other, workers=0, progress=False)
    store = ResultsStore(tmp_path / "locked.parquet").open({"model": {"sha256": "x"}})
    try:
        with pytest.raises(RuntimeError, match="another scan"):
            ResultsStore(tmp_path / "locked.parquet").open({"model": {"sha256": "x"}})
    finally:
        store.close()


# A scan in its own process, as a user starts one: Ctrl-C as a terminal delivers it (a process started
# in the background by a shell without job control, a CI script's `cmd &`, inherits SIGINT ignored,
# and Python then keeps it ignored), and its folder walk paced at 20 ms a file, so that it lasts
# seconds on any CPU and a signal sent after its first part lands mid-scan.
RUNNER = """
import json, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from deepfake_detector.scan import local, scan
walk = local.iter_sources
def paced(*args, **kwargs):
    for path in walk(*args, **kwargs):
        time.sleep(0.02)
        yield path
local.iter_sources = paced
scan(**json.loads(sys.argv[1]))
"""


def start_scan(kwargs: dict) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(kwargs)], start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_part(proc: subprocess.Popen, out: Path, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not list(out.glob("part-*")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() - t0 < timeout, "no part file appeared"
        time.sleep(0.02)


def test_sigkill_and_resume_equals_an_uninterrupted_scan(reference, collection, model_path, tmp_path):
    out = tmp_path / "killed.parquet"
    kwargs = {"sources": [str(collection["root"])], "out": str(out), "model_path": model_path, "workers": 1,
              "batch_size": 8, "part_rows": 8, "progress": False}
    proc = start_scan(kwargs)
    wait_for_part(proc, out)
    assert proc.poll() is None, "the scan finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the scan and its worker, mid-flight
    proc.wait(timeout=10)
    proc.stderr.close()
    partial = read_results(out)
    assert 0 < len(partial) < collection["unique"]
    # a part half-written at the moment of the kill stays under its temporary name: never read
    (out / ".tmp-part-20000101T000000-dead00-00001.parquet").write_bytes(b"PAR1 half a part")
    assert len(pd.read_parquet(out)) == len(partial)

    s = scan(kwargs["sources"], out, model_path=model_path, workers=1, batch_size=8, progress=False)
    assert s["skipped"] >= len(partial) and s["scanned"] == collection["unique"] - len(partial)
    assert not list(out.glob(".tmp-*"))
    df = read_results(out)
    assert len(df) == collection["unique"] == len(pd.read_parquet(out))  # no duplicate row, none lost
    assert_same_scores(df, reference["df"])


def test_ctrl_c_commits_what_is_finished(collection, model_path, tmp_path):
    out = tmp_path / "interrupted.parquet"
    kwargs = {"sources": [str(collection["root"])], "out": str(out), "model_path": model_path, "workers": 1,
              "batch_size": 8, "part_rows": 1000, "part_seconds": 0.5, "progress": False}
    proc = start_scan(kwargs)
    wait_for_part(proc, out)
    assert proc.poll() is None, "the scan finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and b"ScanInterrupted" in err
    n = len(read_results(out))
    assert 0 < n <= collection["unique"]
    s = scan(kwargs["sources"], out, model_path=model_path, workers=0, progress=False)
    assert s["scanned"] == collection["unique"] - n and len(read_results(out)) == collection["unique"]


def crashing_task(paths, *args):
    """A worker task that dies on a file named crash*.jpg, as a decoder crashing on a hostile file would."""
    if any(os.path.basename(p).startswith("crash") for p in paths):
        os._exit(3)
    from deepfake_detector.scan.local import _run_task

    return _run_task(paths, *args)


def test_a_worker_that_dies_costs_only_its_file(reference, collection, model_path, tmp_path, monkeypatch):
    from deepfake_detector.scan import local

    monkeypatch.setattr(local, "_run_task", crashing_task)  # what the pool's workers run
    root = collection["root"]
    crash = tmp_path / "crash.jpg"
    crash.write_bytes(next((root / "a" / "fake").iterdir()).read_bytes() + b"\0")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted((root / "b" / "real").iterdir())[:20]) + f"{crash}\n")
    out = tmp_path / "crash.parquet"
    s = scan(listing, out, model_path=model_path, workers=2, batch_size=4, progress=False)
    df = read_results(out)
    assert s["scanned"] == len(df) == 21 and s["failed"] == 1
    bad = df[df["path"] == str(crash)].iloc[0]
    assert bad["label"] == "Error" and "worker process died" in bad["error"]
    assert_same_scores(df[df["path"] != str(crash)], reference["df"], subset=True)


def test_scan_interrupted_carries_the_summary():
    e = ScanInterrupted({"scanned": 3})
    assert isinstance(e, KeyboardInterrupt) and e.summary["scanned"] == 3
