"""The hostile corpus (``tests/hostile.py``: round one and round two, plus worst-case big images)
through ``predict`` (default model and ``--fast``), ``evaluate``, ``scan`` and the server.

    python benchmarks/hostile_corpus.py            # about 5 minutes on 2 cores
    python benchmarks/hostile_corpus.py --skip-default

For each CLI run: its peak memory (the process's high-water mark plus its decode worker's),
its wall time, whether one row came back per input, and whether a traceback was printed. For
the server (``deepfake-detector serve``, UI and API, default model): each file posted alone
(the longest answer is the longest time spent on one file), every answer checked to be JSON,
then 8 concurrent uploads of the worst-case image while the server's memory (its process and
its children, sampled every 50 ms) is watched. The last line gives the largest figures.
Goals (issue 21): peak <= 1.5 GB per run, <= 1 GB for a single file; <= 10 s a file; server
<= 1.5 GB with 8 concurrent worst-case uploads; no traceback, no non-JSON answer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepfake_detector.cpu import cpu_line  # noqa: E402
from tests.hostile import make_corpus, make_round_two  # noqa: E402
from tests.test_hostile_inputs import RUNNER  # noqa: E402


def worst_case(folder: Path) -> dict[str, None]:
    """Big images that pass every limit: what costs most memory and time and is still read."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, 8000, dtype=np.float32)
    img = np.empty((7999, 8000, 3), np.uint8)  # 64 MP of RGB, 192 MB decoded: just under the budget
    img[..., 0] = ramp[None, :].astype(np.uint8)
    img[..., 1] = ramp[:7999, None].astype(np.uint8)
    img[..., 2] = 128
    cv2.imwrite(str(folder / "worst-64mp.png"), img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    cv2.imwrite(str(folder / "worst-64mp.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95,
                                                      cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    return {"worst-64mp.png": None, "worst-64mp.jpg": None}


def build(folder: Path) -> list[Path]:
    make_corpus(folder / "round-one")
    make_round_two(folder / "round-two")
    worst_case(folder / "worst")
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink() or p.is_fifo())


def run(args: list, cwd=None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-c", RUNNER, *map(str, args)], capture_output=True, text=True,
                       timeout=1800, cwd=cwd, env=env)
    wall = time.monotonic() - t
    peak = [line for line in p.stderr.splitlines() if line.startswith("PEAK_KB ")]
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr, "wall_s": wall,
            "peak_mb": int(peak[-1].split()[1]) / 1024 if peak else float("nan"),
            "traceback": "Traceback" in p.stderr or "Traceback" in p.stdout}


def rows_of(out: str) -> list:
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        return []


def tree_rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` and all its descendants, in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(next(l.split()[1] for l in open(f"/proc/{p}/status") if l.startswith("VmRSS:")))
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def serve_figures(files: list[Path], worst: Path, fast: bool) -> dict:
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "deepfake_detector.cli", "serve", "--port", str(port)] + (["--fast"] if fast else [])
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if requests.get(url + "/api/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        times, non_json, statuses = {}, [], {}
        for f in files:
            try:
                if not stat.S_ISREG(os.stat(f).st_mode):  # a FIFO, a device: a client cannot send one
                    continue
                data = f.read_bytes()
            except OSError:  # a link loop
                continue
            t = time.monotonic()
            r = requests.post(url + "/api/predict", files={"file": (f.name, data)}, timeout=120)
            times[f.name] = time.monotonic() - t
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            try:
                r.json()
            except ValueError:
                non_json.append(f.name)
        base = tree_rss_mb(proc.pid)
        peak, stop = [base], threading.Event()

        def watch():
            while not stop.is_set():
                peak.append(tree_rss_mb(proc.pid))
                time.sleep(0.05)

        def upload(out, i):
            r = requests.post(url + "/api/predict", files={"file": (worst.name, worst.read_bytes())}, timeout=300)
            out[i] = r.status_code

        w = threading.Thread(target=watch)
        w.start()
        codes = {}
        clients = [threading.Thread(target=upload, args=(codes, i)) for i in range(8)]
        t = time.monotonic()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        concurrent_s = time.monotonic() - t
        stop.set()
        w.join()
        log.seek(0)
        tracebacks = log.read().count("Traceback")
        return {"times": times, "non_json": non_json, "statuses": statuses, "rss_idle_mb": base,
                "rss_peak_mb": max(peak), "concurrent_codes": codes, "concurrent_s": concurrent_s,
                "server_tracebacks": tracebacks}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-default", action="store_true", help="only --fast (no CLIP encoder needed)")
    args = ap.parse_args()
    print(cpu_line())
    tmp = Path(tempfile.mkdtemp(prefix="dfd-hostile-"))
    try:
        files = build(tmp / "corpus")
        n = len(files)
        print(f"corpus: {n} inputs under {tmp / 'corpus'}")
        # evaluate wants a dataset layout: the corpus as Test/Fake and Test/Real
        ds = tmp / "dataset" / "Test"
        for label in ("Fake", "Real"):
            make_corpus(ds / label / "round-one", seed=1 if label == "Real" else 0)
            make_round_two(ds / label / "round-two")
            shutil.copytree(tmp / "corpus" / "worst", ds / label / "worst")
        runs = {"predict --fast": ["predict", "--fast", "--format", "json", tmp / "corpus"]}
        if not args.skip_default:
            runs["predict (default)"] = ["predict", "--format", "json", tmp / "corpus"]
        runs["evaluate --fast"] = ["evaluate", "--fast", "--data", tmp / "dataset", "--json"]
        runs["scan --fast"] = ["scan", "--fast", "--quiet", "--json", "--out", tmp / "scan.sqlite", tmp / "corpus"]
        worst = 0.0
        print(f"{'run':<20} {'peak MB':>8} {'wall s':>7} {'rows':>9} traceback")
        for name, cmd in runs.items():
            r = run(cmd)
            rows = rows_of(r["out"]) if name.startswith("predict") else None
            got = f"{len(rows)}/{n}" if rows is not None else "-"
            print(f"{name:<20} {r['peak_mb']:>8.0f} {r['wall_s']:>7.1f} {got:>9} {'yes' if r['traceback'] else 'no'}")
            if not name.startswith("predict"):
                print("   ", r["out"].strip().splitlines()[-1][:300] if r["out"].strip() else r["err"][-300:])
            worst = max(worst, r["peak_mb"])
        single = run(["predict", "--fast", "--format", "json", tmp / "corpus" / "worst" / "worst-64mp.png"])
        print(f"{'one 64-MP PNG':<20} {single['peak_mb']:>8.0f} {single['wall_s']:>7.1f}")
        s = serve_figures(files, tmp / "corpus" / "worst" / "worst-64mp.png", fast=args.skip_default)
        slowest = sorted(s["times"].items(), key=lambda kv: -kv[1])[:3]
        print(f"server: {len(s['times'])} files posted one at a time; answers {s['statuses']}; "
              f"non-JSON {len(s['non_json'])}; tracebacks in its log {s['server_tracebacks']}")
        print("   slowest:", ", ".join(f"{k} {v:.1f} s" for k, v in slowest))
        print(f"   8 concurrent {Path('worst-64mp.png')}: answers {sorted(s['concurrent_codes'].values())} in "
              f"{s['concurrent_s']:.1f} s; RSS idle {s['rss_idle_mb']:.0f} MB, peak {s['rss_peak_mb']:.0f} MB")
        print(f"peak_cli_mb={worst:.0f} single_file_mb={single['peak_mb']:.0f} longest_file_s={slowest[0][1]:.1f} "
              f"server_peak_mb={s['rss_peak_mb']:.0f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
