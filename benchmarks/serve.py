"""Load test of the web server's API with concurrent clients posting face photos.

    python benchmarks/serve.py                         # default model, 4 clients, 30 s
    python benchmarks/serve.py --model run/best.npz --clients 4 --seconds 10

Starts the server (``deepfake_detector.web.serve``: the UI and the API, as
``deepfake-detector serve``) in a subprocess on a free port of 127.0.0.1, waits for
``/api/health``, warms it up, then runs ``--clients`` threads that each post 224-px face
crops from ``<data>/dfdc-faces/Test`` to ``/api/predict`` (one at a time, keep-alive) for
``--seconds``. Prints requests/s, latency percentiles, failures (non-200 answers and
connection errors) and the server's resident memory (RSS) after the warm-up and at the end,
and as its last line ``rps=<..> p50_ms=<..> p95_ms=<..> failed=<n>``. Target: p95 < 150 ms
with 4 clients on 2 CPU cores.

Model: ``--model``, else the packaged default, else an untrained ``df-cnn`` (same cost).
Data: ``--data``, else ``$DEEPFAKE_DETECTOR_DATA``, else ``../shared/data`` from the project.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from deepfake_detector.cpu import cpu_line

ROOT = Path(__file__).resolve().parents[1]


def data_root(arg: str | None) -> Path:
    root = Path(arg or os.environ.get("DEEPFAKE_DETECTOR_DATA") or ROOT.parent / "shared" / "data")
    if not (root / "dfdc-faces").is_dir():
        sys.exit(f"no dfdc-faces folder under {root} (use --data)")
    return root


def photos(root: Path, n: int) -> list[tuple[str, bytes]]:
    files = []
    for label in ("Fake", "Real"):
        files += sorted((root / "dfdc-faces" / "Test" / label).glob("*.jpg"))[: n // 2]
    if not files:
        sys.exit(f"no .jpg under {root / 'dfdc-faces' / 'Test'}")
    return [(p.name, p.read_bytes()) for p in files]


def model_arg(path: str | None, tmp: str) -> str:
    if path:
        return path
    from deepfake_detector.models import default_model_path

    if default_model_path().exists():
        return str(default_model_path())
    from deepfake_detector.models import create_model, save_model

    out = Path(tmp) / "untrained-df-cnn.npz"
    save_model(create_model("df-cnn"), out)
    print("no default model in the package: serving an untrained df-cnn (same cost)", flush=True)
    return str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(model: str, port: int, max_upload_mb: float) -> subprocess.Popen:
    code = ("import sys; from deepfake_detector.web import serve; "
            f"serve(model_path={model!r}, host='127.0.0.1', port={port}, max_upload_mb={max_upload_mb!r}, "
            "log_level='warning')")
    return subprocess.Popen([sys.executable, "-c", code], cwd=str(ROOT))


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> dict:
    import requests

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"the server exited with status {proc.returncode}")
        try:
            r = requests.get(url + "/api/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except requests.RequestException:
            pass
        time.sleep(0.3)
    sys.exit(f"the server did not answer within {timeout:.0f} s")


def client(url: str, files, stop_at: float, offset: int, latencies: list, failures: list, lock):
    import requests

    session = requests.Session()
    i = offset
    while time.perf_counter() < stop_at:
        name, data = files[i % len(files)]
        i += 1
        t = time.perf_counter()
        try:
            r = session.post(url + "/api/predict", files={"file": (name, data, "image/jpeg")}, timeout=60)
            ok = r.status_code == 200
            why = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
        except Exception as e:  # noqa: BLE001  any client-side failure counts
            ok, why = False, f"{type(e).__name__}: {e}"
        dt = time.perf_counter() - t
        with lock:
            (latencies if ok else failures).append(dt if ok else why)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] if s else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint (.npz or .onnx); default: the packaged model")
    ap.add_argument("--data")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=int, default=8, help="requests before measuring")
    ap.add_argument("--images", type=int, default=64, help="distinct photos to cycle through")
    ap.add_argument("--max-upload-mb", type=float, default=50.0)
    args = ap.parse_args(argv)
    print(cpu_line(), flush=True)  # every speed figure names its CPU

    files = photos(data_root(args.data), args.images)
    with tempfile.TemporaryDirectory(prefix="dfd-bench-") as tmp:
        model = model_arg(args.model, tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        proc = start_server(model, port, args.max_upload_mb)
        try:
            health = wait_ready(url, proc)
            print(f"server up in {time.monotonic() - t0:.1f} s: model {health['model']}, version {health['version']}")
            import requests

            with requests.Session() as s:
                for name, data in files[: args.warmup]:
                    s.post(url + "/api/predict", files={"file": (name, data, "image/jpeg")}, timeout=60)
            rss_start = rss_mb(proc.pid)
            latencies, failures, lock = [], [], threading.Lock()
            t_start = time.perf_counter()
            stop_at = t_start + args.seconds
            threads = [threading.Thread(target=client, args=(url, files, stop_at, k * 7, latencies, failures, lock))
                       for k in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t_start
            rss_end = rss_mb(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    n = len(latencies)
    rps = n / elapsed
    ms = [1000 * x for x in latencies]
    print(f"{args.clients} clients, {elapsed:.1f} s, {n} requests ok, {len(failures)} failed, "
          f"{len(files)} distinct {len(files[0][1]) // 1024}-KB-ish photos, cores {os.cpu_count()}")
    if ms:
        print(f"latency ms: mean {statistics.fmean(ms):.1f}  p50 {pct(ms, 50):.1f}  p90 {pct(ms, 90):.1f}  "
              f"p95 {pct(ms, 95):.1f}  p99 {pct(ms, 99):.1f}  max {max(ms):.1f}")
    if rss_start is not None and rss_end is not None:
        print(f"server RSS MB: after warm-up {rss_start:.0f}, at the end {rss_end:.0f} "
              f"({rss_end - rss_start:+.0f} MB over {n} requests)")
    for why in failures[:5]:
        print(f"failure: {why}")
    print(f"rps={rps:.2f} p50_ms={pct(ms, 50):.1f} p95_ms={pct(ms, 95):.1f} failed={len(failures)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
