"""The web server under slow and hostile clients: slowloris connections, stalled and endless
uploads, more uploads or connections than the caps allow. A real ``serve`` (uvicorn, the guarded
h11 protocol of ``web/guards.py``) runs in a subprocess with short timeouts, so that its file
descriptors (``/proc/<pid>/fd``), memory and temporary folders can be watched; the clients are
raw sockets in bounded loops."""

from __future__ import annotations

import io
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'deepfake-detector[web]'")
pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install 'deepfake-detector[web]'")
pytest.importorskip("python_multipart", reason="the web extra is not installed: pip install 'deepfake-detector[web]'")
requests = pytest.importorskip("requests", reason="the tests need requests")

from .web_server import BackgroundServer, free_port  # noqa: E402

REQUEST_TIMEOUT = 1.0  # s for headers
UPLOAD_TIMEOUT = 2.0  # s without a byte; well above the time a 503 may take, so the two are told apart
UPLOAD_DEADLINE = 3.0  # s for a whole upload
MAX_UPLOADS = 4
MAX_CONNECTIONS = 150
N_SLOW, N_STALLED = 20, 100
HEALTH_S = 2.0  # each health check must answer within this while the attack is held
RSS_LIMIT_KB = 1_500_000
ROOT = Path(__file__).resolve().parents[1]

SERVER = r"""
import json, sys
from deepfake_detector.models import create_model
from deepfake_detector.web.app import serve
cfg = json.loads(sys.argv[1])
serve(model=create_model("seed-cnn", input_size=64), log_level="warning", ui=False, **cfg)
"""


class Server:
    def __init__(self, tmp: Path):
        self.tmp = tmp / "tmp"  # the server's TMPDIR: its dfd-upload-* folders go here
        self.tmp.mkdir()
        self.log = tmp / "server.log"
        self.host, self.port = "127.0.0.1", free_port()
        self.url = f"http://{self.host}:{self.port}"
        cfg = dict(port=self.port, request_timeout=REQUEST_TIMEOUT, upload_timeout=UPLOAD_TIMEOUT,
                   upload_deadline=UPLOAD_DEADLINE, max_uploads=MAX_UPLOADS, max_connections=MAX_CONNECTIONS)
        env = {**os.environ, "TMPDIR": str(self.tmp), "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(cfg)], cwd=ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 30.0):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not start: {self.log.read_text()[-2000:]}")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def memory_kb(self) -> dict:
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
        return out

    def upload_dirs(self) -> list[str]:
        return [p.name for p in self.tmp.glob("dfd-upload-*")]

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=5)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to count the server's file descriptors")
    srv = Server(tmp_path_factory.mktemp("hostile"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
    log = srv.log.read_text(errors="replace")
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def health_ok(srv: Server):
    t0 = time.monotonic()
    r = requests.get(srv.url + "/api/health", timeout=HEALTH_S + 1)
    took = time.monotonic() - t0
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert took < HEALTH_S, f"health took {took:.2f} s"


def parse(raw: bytes):
    """(status, headers, body) of a complete HTTP response, else None."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln))
    n = int(headers.get("content-length", len(body)))
    if len(body) < n:
        return None
    return int(lines[0].split()[1]), headers, body[:n]


def multipart_start(boundary: str = "XbOuNdArY") -> tuple[str, bytes]:
    return boundary, (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
                      "Content-Type: image/jpeg\r\n\r\n").encode() + b"\xff\xd8\xff\xe0" + bytes(1000)


def stalled_upload(srv: Server, length: int = 100_000) -> bytes:
    boundary, body = multipart_start()
    return (f"POST /api/predict HTTP/1.1\r\nHost: {srv.host}\r\nContent-Length: {length}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode() + body


class Client:
    """One raw connection and what came back on it."""

    def __init__(self, sock: socket.socket, kind: str):
        self.sock, self.kind = sock, kind
        self.sock.setblocking(False)
        self.sent_at = time.monotonic()
        self.raw = b""
        self.done_at = None  # when a whole response, or the server's close, arrived
        self.closed_by_server = False

    @property
    def response(self):
        return parse(self.raw)

    def read(self):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.closed_by_server = True
            self.done_at = self.done_at or time.monotonic()
        else:
            self.raw += data
            if self.response is not None:
                self.done_at = self.done_at or time.monotonic()


def watch(clients: list[Client], until: float, each=None, done=None):
    """Read from ``clients`` until each was closed by the server (or ``done()``), or ``until``;
    ``each()`` is called about every 0.25 s meanwhile."""
    sel = selectors.DefaultSelector()
    for c in clients:
        sel.register(c.sock, selectors.EVENT_READ, c)
    try:
        last = 0.0
        done = done or (lambda: all(c.closed_by_server for c in clients))
        while time.monotonic() < until and not done():
            for key, _ in sel.select(0.05):
                c = key.data
                c.read()
                if c.closed_by_server:
                    sel.unregister(c.sock)
            if each is not None and time.monotonic() - last > 0.25:
                last = time.monotonic()
                each()
    finally:
        sel.close()


def test_slowloris_and_stalled_uploads_are_cut_off(server):
    health_ok(server)
    time.sleep(0.3)
    base_fds = server.fds()
    slow = []
    for _ in range(N_SLOW):  # headers never finished, a byte at a time
        s = server.connect()
        s.sendall(f"GET /api/health HTTP/1.1\r\nHost: {server.host}\r\nX-Slow: ".encode())
        slow.append(Client(s, "slow"))
    t_end = time.monotonic() + REQUEST_TIMEOUT / 2
    while server.fds() < base_fds + N_SLOW and time.monotonic() < t_end:
        time.sleep(0.02)
    assert server.fds() >= base_fds + N_SLOW  # the attack does hold connections open
    stalled = []
    request = stalled_upload(server)
    for _ in range(N_STALLED):  # a multipart body that starts, then stops
        s = server.connect()
        s.sendall(request)
        stalled.append(Client(s, "stalled"))
    t0 = time.monotonic()
    held = {"health": 0}

    def meanwhile():
        for c in slow:
            if not c.closed_by_server:
                try:
                    c.sock.send(b"a")
                except OSError:
                    pass
        if not all(c.closed_by_server for c in slow + stalled) and held["health"] < 6:
            health_ok(server)  # answers while the attack is held
            held["health"] += 1

    watch(slow + stalled, t0 + UPLOAD_DEADLINE + 4, meanwhile)
    assert held["health"] >= 2

    # the slowloris connections: closed by the server after the header timeout, trickling or not
    for c in slow:
        assert c.closed_by_server, "a slowloris connection was left open"
        assert c.done_at - c.sent_at < REQUEST_TIMEOUT + 2.5
        status, headers, body = c.response
        assert status == 408 and "error" in json.loads(body)
    # the uploads: over the cap 503 at once; the admitted ones 408 once they stall; never a 500
    statuses = [c.response[0] if c.response else None for c in stalled]
    assert set(statuses) <= {408, 503}, statuses
    n503 = statuses.count(503)
    assert n503 >= N_STALLED - 3 * MAX_UPLOADS and statuses.count(408) >= 1, statuses
    for c in stalled:
        assert c.closed_by_server
        status, headers, body = c.response
        assert headers["content-type"].startswith("application/json") and json.loads(body)["error"]
        if status == 503:
            assert headers["retry-after"].isdigit()
            assert c.done_at - c.sent_at < UPLOAD_TIMEOUT - 0.5, "503 was not immediate"
        else:
            assert "stalled" in json.loads(body)["error"]
            assert UPLOAD_TIMEOUT - 0.2 < c.done_at - c.sent_at < UPLOAD_TIMEOUT + 2.5

    # our sockets are still open: what the server freed, it freed itself
    t_end = time.monotonic() + 5
    while server.fds() > base_fds + 3 and time.monotonic() < t_end:
        time.sleep(0.1)
    assert server.fds() <= base_fds + 3, (server.fds(), base_fds)
    assert server.upload_dirs() == []
    mem = server.memory_kb()
    assert mem["VmHWM"] < RSS_LIMIT_KB and mem["VmRSS"] < RSS_LIMIT_KB, mem
    for c in slow + stalled:
        c.sock.close()
    health_ok(server)


def test_kept_alive_connection_cannot_trickle_its_next_request(server):
    with server.connect() as s:
        s.sendall(f"GET /api/health HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode())
        c = Client(s, "keep-alive")
        watch([c], time.monotonic() + 5, done=lambda: c.response is not None or c.closed_by_server)
        assert c.response[0] == 200 and not c.closed_by_server
        c.raw, c.done_at, c.sent_at = b"", None, time.monotonic()
        next_request = f"GET /api/health HTTP/1.1\r\nHost: {server.host}\r\nX-Slow: ".encode() + b"a" * 100
        sent = iter(next_request)

        def trickle():
            if not c.closed_by_server:
                try:
                    s.send(bytes([next(sent)]))
                except OSError:
                    pass

        watch([c], c.sent_at + REQUEST_TIMEOUT + 3, trickle)
        assert c.closed_by_server and c.done_at - c.sent_at < REQUEST_TIMEOUT + 2.5


def test_upload_that_never_finishes_gets_408_at_the_deadline(server):
    with server.connect() as s:
        s.sendall(stalled_upload(server, 10_000_000))
        c = Client(s, "endless")

        def trickle():  # a byte every 0.25 s: never idle long enough for the idle timeout
            if not c.closed_by_server:
                try:
                    s.send(b"\x00")
                except OSError:
                    pass

        watch([c], c.sent_at + UPLOAD_DEADLINE + 3, trickle)
        status, headers, body = c.response
        assert status == 408 and "within" in json.loads(body)["error"]
        assert UPLOAD_DEADLINE - 0.2 < c.done_at - c.sent_at < UPLOAD_DEADLINE + 2.5
    time.sleep(0.2)
    assert server.upload_dirs() == []


def test_too_many_connections_are_refused_then_freed(server):
    base = server.fds()
    clients = []
    try:
        for _ in range(MAX_CONNECTIONS + 10):
            clients.append(Client(server.connect(), "idle"))
        watch(clients, time.monotonic() + REQUEST_TIMEOUT + 3)
        refused = [c for c in clients if c.response is not None]
        assert len(refused) >= 5  # the ones over the cap
        for c in refused:
            status, headers, body = c.response
            assert status == 503 and "too many connections" in json.loads(body)["error"]
            assert c.done_at - c.sent_at < 1.0
        assert all(c.closed_by_server for c in clients)  # the idle ones: closed after the header timeout
    finally:
        for c in clients:
            c.sock.close()
    health_ok(server)
    t_end = time.monotonic() + 3
    while server.fds() > base + 3 and time.monotonic() < t_end:
        time.sleep(0.1)
    assert server.fds() <= base + 3


def small_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (120, 90, 60)).save(buf, format="PNG")
    return buf.getvalue()


def test_ordinary_uploads_still_work_on_kept_alive_connections(server):
    with requests.Session() as session:
        for _ in range(3):
            r = session.post(server.url + "/api/predict", files={"file": ("p.png", small_png())},
                             data={"faces": "false"}, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["kind"] == "image" and r.json()["path"] == "p.png"
    assert server.upload_dirs() == []


def test_a_malformed_request_gets_a_json_400(server):
    with server.connect() as s:
        s.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
        c = Client(s, "bad")
        watch([c], time.monotonic() + 3)
        status, headers, body = c.response
        assert status == 400 and headers["content-type"] == "application/json" and json.loads(body)["error"]


# --- in-process: the pieces alone ------------------------------------------------------------
def test_unexpected_error_is_a_generic_500_logged_with_its_traceback(monkeypatch, caplog, tmp_path):
    from deepfake_detector.models import create_model
    from deepfake_detector.web import api

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail /opt/internal/path")

    monkeypatch.setattr(api, "predict_file", broken)
    with BackgroundServer(api.create_api(create_model("seed-cnn", input_size=64), temp_dir=tmp_path)) as srv:
        r = requests.post(srv.url + "/api/predict", files={"file": ("p.png", small_png())}, timeout=30)
    assert r.status_code == 500
    assert r.json() == {"error": "internal error; see the server log"}
    assert "secret" not in r.text and "RuntimeError" not in r.text
    assert "secret detail" in caplog.text and "Traceback" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_body_backstop_on_any_route():
    """A route other than /api/predict that reads its body: a stalled body is cut off by the
    connection's idle timer; a whole one is answered."""
    import threading

    import uvicorn

    from deepfake_detector.web.guards import http_protocol

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        n = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            n += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": str(n).encode()})

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                            http=http_protocol(request_timeout=5, body_timeout=1, max_connections=10))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        t_end = time.monotonic() + 10
        while not server.started and time.monotonic() < t_end:
            time.sleep(0.02)
        r = requests.post(f"http://127.0.0.1:{port}/upload", data=b"x" * 5000, timeout=10)
        assert r.status_code == 200 and r.text == "5000"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            c = Client(s, "stalled")
            watch([c], c.sent_at + 4)
            assert c.closed_by_server and 0.8 < c.done_at - c.sent_at < 3
            status, headers, body = c.response
            assert status == 408 and "stalled" in json.loads(body)["error"]
    finally:
        server.should_exit = True
        thread.join(10)


def test_cli_flags(monkeypatch, tmp_path):
    from deepfake_detector import cli
    from deepfake_detector.web import app as web_app
    from deepfake_detector.web import guards as limits

    args = cli.build_parser().parse_args(["serve"])
    assert (args.request_timeout, args.upload_timeout, args.upload_deadline, args.max_uploads,
            args.max_connections) == (limits.DEFAULT_REQUEST_TIMEOUT, limits.DEFAULT_UPLOAD_TIMEOUT,
                                      limits.DEFAULT_UPLOAD_DEADLINE, limits.DEFAULT_MAX_UPLOADS,
                                      limits.DEFAULT_MAX_CONNECTIONS)
    seen = {}
    monkeypatch.setattr(web_app, "serve", lambda **kw: seen.update(kw))
    monkeypatch.setattr("deepfake_detector.web.serve", lambda **kw: seen.update(kw))
    assert cli.main(["serve", "--request-timeout", "3", "--upload-timeout", "4", "--upload-deadline", "60",
                     "--max-uploads", "2", "--max-connections", "50"]) == 0
    assert (seen["request_timeout"], seen["upload_timeout"], seen["upload_deadline"], seen["max_uploads"],
            seen["max_connections"]) == (3.0, 4.0, 60.0, 2, 50)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--max-uploads", "0"])


def test_serve_passes_the_limits_to_uvicorn(monkeypatch):
    import uvicorn

    from deepfake_detector.models import create_model
    from deepfake_detector.web import app as web_app

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    monkeypatch.setattr(web_app, "create_app", lambda model, **kw: ("app", kw))
    web_app.serve(model=create_model("seed-cnn", input_size=64), port=0, request_timeout=3, upload_timeout=4,
                  max_uploads=2, max_connections=9)
    proto = seen["http"]
    assert (proto.request_timeout, proto.body_timeout, proto.max_connections) == (3, 9.0, 9)
    assert seen["timeout_keep_alive"] <= 3
    kw = seen["app"][1]
    assert (kw["upload_timeout"], kw["max_uploads"]) == (4, 2)


def test_the_hostile_corpus_gets_json_refusals_and_bounded_memory(server, tmp_path):
    """Each crafted file of tests/hostile.py uploaded: a verdict for the valid ones, a 4xx with
    a JSON error for the others (413 by the header's pixel count, before any decode), never a
    500; the server's memory high-water mark stays under the bound."""
    from .hostile import EVIL_NAME, make_corpus

    expected = make_corpus(tmp_path / "corpus", special=False)
    for name, err in expected.items():
        data = (tmp_path / "corpus" / name).read_bytes()
        r = requests.post(server.url + "/api/predict", files={"file": ("upload", data)}, timeout=60)
        assert r.status_code < 500, (name, r.status_code, r.text[:300])
        body = r.json()
        if err is None:
            assert r.status_code == 200 and body["label"] in ("Real", "Fake", "NoFace"), (name, body)
        else:
            assert 400 <= r.status_code < 500 and body["error"], (name, body)
        if name.startswith(("header-", "bomb-")):
            assert r.status_code == 413 and "too large" in body["error"], (name, body)
        if name == "cut.mp4":
            assert body["warning"] and body["n_frames"] < body["n_frames_requested"]
    assert EVIL_NAME in expected
    assert server.memory_kb()["VmHWM"] < RSS_LIMIT_KB
    assert server.upload_dirs() == []
