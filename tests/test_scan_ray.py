"""The scanner on a Ray cluster of two nodes on this machine: the same rows as a local scan."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="the scanner writes with pyarrow: pip install 'deepfake-detector[scan]'")
pd = pytest.importorskip("pandas")
pytest.importorskip("ray.data", reason="Ray scans need Ray Data: pip install 'deepfake-detector[ray]'")

from deepfake_detector.models import create_model, save_model  # noqa: E402
from deepfake_detector.scan import read_results, scan  # noqa: E402

from .test_scan import assert_same_scores, make_collection  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # Ray's own


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> list[str]:
    exe = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    return [exe] if exe else [sys.executable, "-m", "ray.scripts.scripts"]


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node, one CPU each; ``ray stop --force`` afterwards whatever happens."""
    ray = ray_cli()
    port = free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]

    def run(args):
        r = subprocess.run(ray + args, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    try:
        run(["start", "--head", f"--port={port}", "--include-dashboard=false", *common])
        run(["start", f"--address=127.0.0.1:{port}", *common])
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(ray + ["stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def setup(dfdc_faces, tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    col = make_collection(dfdc_faces, root, n=48, n_dup=2)
    model = tmp_path_factory.mktemp("model") / "small.npz"
    save_model(create_model("seed-cnn", input_size=64, seed=5), model, extra_meta={"framing": "as-is"})
    out = tmp_path_factory.mktemp("local") / "local.parquet"
    col["local"] = scan(root, out, model_path=str(model), workers=0, progress=False, part_rows=16)
    col["local_df"], col["local_out"] = read_results(out), out
    col["model"] = str(model)
    return col


def test_ray_scan_equals_local_scan_and_resumes(cluster, setup, tmp_path):
    out = tmp_path / "ray.parquet"
    s = scan(setup["root"], out, model_path=setup["model"], ray_address=cluster, batch_size=8, progress=False,
             part_rows=16)
    assert s["workers"] == 2 and s["ray"] == cluster  # one model actor per CPU: one on each node
    assert s["scanned"] == setup["unique"] and s["duplicates"] == setup["duplicates"] and s["failed"] == 1
    df = read_results(out)
    assert len(df) == setup["unique"] == len(pd.read_parquet(out))
    assert_same_scores(df, setup["local_df"])
    local = setup["local_df"].set_index("sha256")
    for _, row in df.iterrows():
        want = local.loc[row["sha256"]]
        assert row["label"] == want["label"] and row["kind"] == want["kind"]
        assert pd.isna(row["error"]) == pd.isna(want["error"])
    video = df[df["kind"] == "video"].iloc[0]
    assert video["n_frames"] == local.loc[video["sha256"], "n_frames"]
    assert video["flicker"] == pytest.approx(local.loc[video["sha256"], "flicker"], abs=1e-6)

    again = scan(setup["root"], out, model_path=setup["model"], ray_address=cluster, progress=False)
    assert again["scanned"] == 0 and again["skipped"] == setup["files"]
    assert len(read_results(out)) == setup["unique"]

    # a local scan's RESULTS and a Ray scan's are interchangeable: finish a local one on Ray
    half = tmp_path / "half.parquet"
    shutil.copytree(setup["local_out"], half)
    for p in sorted(Path(half).glob("part-*"))[1:]:
        p.unlink()
    kept = len(read_results(half))
    s = scan(setup["root"], half, model_path=setup["model"], ray_address=cluster, progress=False)
    assert s["scanned"] == setup["unique"] - kept
    assert_same_scores(read_results(half), setup["local_df"])


def test_a_ray_worker_that_dies_costs_only_its_file(cluster, setup, tmp_path, monkeypatch):
    from deepfake_detector.scan import ray_scan

    class CrashingScanner(ray_scan.RayScanner):  # defined here: Ray ships it by value
        def __call__(self, batch):
            if any(os.path.basename(str(p)).startswith("crash") for p in batch["path"]):
                os._exit(3)  # as a decoder crashing on a hostile file would
            return super().__call__(batch)

    monkeypatch.setattr(ray_scan, "RayScanner", CrashingScanner)
    root = setup["root"]
    crash = tmp_path / "crash.jpg"
    crash.write_bytes(next((root / "a" / "fake").iterdir()).read_bytes() + b"\0")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted((root / "b" / "real").iterdir())[:6]) + f"{crash}\n")
    out = tmp_path / "crash.parquet"
    s = scan(listing, out, model_path=setup["model"], ray_address=cluster, batch_size=4, progress=False)
    df = read_results(out)
    assert s["scanned"] == len(df) == 7 and s["failed"] == 1
    bad = df[df["path"] == str(crash)].iloc[0]
    assert bad["label"] == "Error" and "Ray worker died" in bad["error"]
    assert_same_scores(df[df["path"] != str(crash)], setup["local_df"], subset=True)


def test_the_scan_command_runs_on_ray_as_docs_scan_md_shows(cluster, setup, tmp_path, capsys):
    from deepfake_detector.cli import main

    out = tmp_path / "results.parquet"
    rc = main(["scan", str(setup["root"]), "--out", str(out), "--model", setup["model"], "--ray", cluster])
    assert rc == (1 if setup["local"].get("unreadable") else 0)  # 1: an input could not be read (its row says why)
    assert_same_scores(read_results(out), setup["local_df"])
