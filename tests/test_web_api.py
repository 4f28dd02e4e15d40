"""The HTTP API against a real server: uvicorn on 127.0.0.1, real HTTP requests."""

from __future__ import annotations

import concurrent.futures
import io
import json
import select
import socket
from pathlib import Path

import cv2
import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'deepfake-detector[web]'")
pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install 'deepfake-detector[web]'")
pytest.importorskip("python_multipart", reason="the web extra is not installed: pip install 'deepfake-detector[web]'")
requests = pytest.importorskip("requests", reason="the tests need requests")

from deepfake_detector import __version__  # noqa: E402
from deepfake_detector.cli import main as cli_main  # noqa: E402
from deepfake_detector.models import (  # noqa: E402
    create_model,
    load,  # noqa: E402
    save_model,
)
from deepfake_detector.predict import predict_paths  # noqa: E402
from deepfake_detector.web.api import create_api  # noqa: E402
from deepfake_detector.web.uploads import UnsupportedType, sniff  # noqa: E402

from .web_server import BackgroundServer, write_video  # noqa: E402

TIMEOUT = 60


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "small.npz"
    save_model(create_model("seed-cnn", input_size=64), path)
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return load(model_path)


@pytest.fixture(scope="module")
def uploads_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def server(model, uploads_dir):
    with BackgroundServer(create_api(model, max_upload_mb=5, temp_dir=uploads_dir, n_frames=8)) as srv:
        yield srv


@pytest.fixture(scope="module")
def small_server(model, uploads_dir):
    with BackgroundServer(create_api(model, max_upload_mb=1, temp_dir=uploads_dir)) as srv:
        yield srv


@pytest.fixture(scope="module")
def face_jpg(dfdc_faces) -> Path:
    return sorted((dfdc_faces / "Test" / "Fake").glob("*.jpg"))[0]


def post(srv, name: str, data: bytes, **fields):
    return requests.post(f"{srv.url}/api/predict", files={"file": (name, data)}, data=fields, timeout=TIMEOUT)


def assert_no_temp_files(uploads_dir: Path):
    assert list(uploads_dir.iterdir()) == []


def same_row(api: dict, cli: dict):
    assert api.keys() == cli.keys()
    for k, v in cli.items():
        if k == "p_fake":
            assert api[k] == pytest.approx(v, abs=1e-6)
        elif k == "faces":
            assert len(api[k]) == len(v)
            for a, b in zip(api[k], v):
                assert a.keys() == b.keys()
                assert a["box"] == b["box"] and a["score"] == pytest.approx(b["score"], abs=1e-6)
        elif k != "path":
            assert api[k] == v, k


def test_health(server, model):
    r = requests.get(f"{server.url}/api/health", timeout=TIMEOUT)
    assert r.status_code == 200
    from deepfake_detector.cpu import cpu_line

    assert r.json() == {"status": "ok", "model": json.loads(json.dumps(model.describe())), "version": __version__,
                        "cpu": cpu_line()}


def test_binds_localhost(server):
    assert server.bound_addresses() == ["127.0.0.1"]


def test_serve_listens_on_localhost_by_default(monkeypatch, model):
    import uvicorn

    from deepfake_detector.web import app as web_app

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    monkeypatch.setattr(web_app, "create_app", lambda model, **kw: ("app", kw))
    web_app.serve(model=model, port=0)
    assert seen["host"] == "127.0.0.1" and seen["app"][0] == "app" and seen["app"][1]["max_upload_mb"] == 50.0


def test_image_is_the_cli_row(server, uploads_dir, face_jpg, model_path, capsys):
    r = post(server, face_jpg.name, face_jpg.read_bytes())
    assert r.status_code == 200, r.text
    api = r.json()
    assert_no_temp_files(uploads_dir)
    assert cli_main(["predict", str(face_jpg), "--faces", "--whole-if-no-face", "--format", "json",
                     "--model", str(model_path)]) == 0
    (cli,) = json.loads(capsys.readouterr().out)
    assert api["path"] == face_jpg.name and api["kind"] == "image" and api["face"] is not None
    same_row(api, cli)


def test_image_without_faces_option(server, uploads_dir, face_jpg, model):
    r = post(server, "face.jpeg", face_jpg.read_bytes(), faces="false")
    assert r.status_code == 200, r.text
    (cli,) = predict_paths([str(face_jpg)], model, faces=False)
    assert "face" not in r.json()
    same_row(r.json(), cli)
    assert_no_temp_files(uploads_dir)


def test_type_judged_by_content_not_name(server, uploads_dir, face_jpg):
    png = io.BytesIO()
    from PIL import Image

    Image.open(face_jpg).save(png, format="PNG")
    r = post(server, "photo.mp4", png.getvalue())  # a PNG named .mp4 is read as an image
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "image" and r.json()["path"] == "photo.mp4"
    assert_no_temp_files(uploads_dir)


def test_video(server, uploads_dir, face_jpg, tmp_path):
    face = cv2.cvtColor(cv2.imread(str(face_jpg)), cv2.COLOR_BGR2RGB)
    video = write_video(tmp_path / "clip.mp4", face)
    r = post(server, "clip.mp4", video.read_bytes())
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["kind"] == "video" and res["path"] == "clip.mp4"
    assert len(res["frames"]) == 8 and res["n_frames_with_faces"] >= 1
    assert 0.0 <= res["p_fake"] <= 1.0 and res["label"] in ("Real", "Fake")
    assert len(res["timeline_smoothed"]) == len(res["frames"])
    assert_no_temp_files(uploads_dir)


def test_synthetic_video_without_data(server, uploads_dir, tmp_path):
    video = write_video(tmp_path / "noface.mp4", None, n=6)
    r = post(server, "noface.mp4", video.read_bytes())
    assert r.status_code == 200, r.text  # no face is a result (label NoFace), not an error
    assert r.json()["kind"] == "video" and r.json()["label"] == "NoFace" and r.json()["frames"]
    assert_no_temp_files(uploads_dir)


@pytest.mark.parametrize("name,data,needle", [
    ("empty.jpg", b"", "empty"),
    ("notes.jpg", b"just some text, renamed to look like a photo\n" * 20, "unknown file type"),
    ("anim.gif", b"GIF89a" + bytes(200), "GIF"),
    ("bm.bmp", b"BM but actually a text file about bitmaps\n" * 3, "unknown file type"),
    ("photo.heic", b"\x00\x00\x00\x18ftypheic" + bytes(100), "HEIF"),
])
def test_unsupported_types_415(server, uploads_dir, name, data, needle):
    r = post(server, name, data)
    assert r.status_code == 415
    assert r.headers["content-type"].startswith("application/json")
    assert needle in r.json()["error"]
    assert_no_temp_files(uploads_dir)


def test_corrupt_image_422_with_the_cli_row(server, uploads_dir):
    r = post(server, "broken.jpg", b"\xff\xd8\xff\xe0" + bytes(300))
    assert r.status_code == 422
    row = r.json()
    assert row["kind"] == "image" and row["p_fake"] is None and "broken.jpg" in row["error"]
    assert "dfd-upload" not in row["error"]  # the temporary path is not shown
    assert_no_temp_files(uploads_dir)


def test_not_multipart_400(server, uploads_dir):
    r = requests.post(f"{server.url}/api/predict", data=b"\xff\xd8\xff", timeout=TIMEOUT,
                      headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400 and "multipart" in r.json()["error"]
    r = requests.post(f"{server.url}/api/predict", files={"other": ("a.jpg", b"\xff\xd8\xff")}, timeout=TIMEOUT)
    assert r.status_code == 400 and "file" in r.json()["error"]
    assert_no_temp_files(uploads_dir)


def test_too_large_413(small_server, uploads_dir):
    r = post(small_server, "big.jpg", b"\xff\xd8\xff" + bytes(2 * 2**20))
    assert r.status_code == 413
    assert "limit" in r.json()["error"]
    assert_no_temp_files(uploads_dir)


def png_header(w: int, h: int) -> bytes:
    """A tiny PNG file whose header announces a w x h image."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("w,h", [(9000, 8000), (30000, 30000)])
def test_too_many_pixels_413(server, uploads_dir, w, h):
    r = post(server, "bomb.png", png_header(w, h))  # a few hundred bytes that would decode to gigabytes
    assert r.status_code == 413 and "image too large" in r.json()["error"]
    assert_no_temp_files(uploads_dir)


def test_too_large_without_content_length_is_cut_off(small_server, uploads_dir):
    """A chunked upload (no Content-Length) is counted as it arrives and cut off at the limit."""
    boundary = "XbOuNdArY"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + b"\xff\xd8\xff"
    sent, total = 0, 32 * 2**20  # the client would go on to 32 MB
    with socket.create_connection((small_server.host, small_server.port), timeout=TIMEOUT) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        s.sendall((f"POST /api/predict HTTP/1.1\r\nHost: {small_server.host}\r\nTransfer-Encoding: chunked\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
        chunk = bytes(64 * 1024)
        s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        response = b""
        while sent < total:
            readable, _, _ = select.select([s], [], [], 0)
            if readable:
                break
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        s.settimeout(TIMEOUT)
        try:
            while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
                part = s.recv(65536)
                if not part:
                    break
                response += part
        except ConnectionResetError:
            pass
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent < total // 2  # refused long before the end: the server did not read it all
    assert b'"error"' in response
    assert_no_temp_files(uploads_dir)


def test_concurrent_requests_agree(server, face_jpg):
    data = face_jpg.read_bytes()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: post(server, "f.jpg", data), range(8)))
    assert all(r.status_code == 200 for r in results)
    assert len({r.json()["p_fake"] for r in results}) == 1


def test_sniff():
    assert sniff(b"\xff\xd8\xff\xe0").ext == ".jpg"
    assert sniff(b"\x89PNG\r\n\x1a\n").ext == ".png"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ").ext == ".webp"
    assert sniff(b"RIFF\x00\x00\x00\x00AVI LIST").ext == ".avi"
    assert sniff(b"\x00\x00\x00\x20ftypisom").ext == ".mp4"
    assert sniff(b"\x00\x00\x00\x14ftypqt  ").ext == ".mov"
    assert sniff(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm").ext == ".webm"
    assert sniff(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska").ext == ".mkv"
    bmp = b"BM" + (70).to_bytes(4, "little") + bytes(4) + (54).to_bytes(4, "little") + (40).to_bytes(4, "little")
    assert sniff(bmp + bytes(12)).ext == ".bmp"
    for bad in (b"", b"GIF87a", b"hello", b"%PDF-1.7"):
        with pytest.raises(UnsupportedType):
            sniff(bad)


def test_full_app_mounts_ui_and_api(model, uploads_dir, face_jpg):
    pytest.importorskip("gradio", reason="the web extra is not installed")
    from deepfake_detector.web import create_app

    with BackgroundServer(create_app(model, max_upload_mb=2, temp_dir=uploads_dir)) as srv:
        assert requests.get(f"{srv.url}/api/health", timeout=TIMEOUT).json()["status"] == "ok"
        page = requests.get(f"{srv.url}/", timeout=TIMEOUT)
        assert page.status_code == 200 and "<html" in page.text.lower()
        r = post(srv, face_jpg.name, face_jpg.read_bytes())
        assert r.status_code == 200 and r.json()["kind"] == "image"
        assert post(srv, "big.png", b"\x89PNG\r\n\x1a\n" + bytes(3 * 2**20)).status_code == 413
    assert_no_temp_files(uploads_dir)


def test_ui_work_functions(model, face_jpg, tmp_path):
    """What the UI's tabs run, without a browser: same rows as the API, box, heatmap, CSV, timeline."""
    from deepfake_detector.web.app import analyse_image, analyse_images, analyse_video, verdict_html
    from deepfake_detector.web.uploads import UploadError

    out = analyse_image(model, face_jpg)
    (cli,) = predict_paths([str(face_jpg)], model, faces=True, whole_if_no_face=True)
    same_row(out["row"], cli)
    assert out["row"]["path"] == face_jpg.name
    assert out["annotated"].shape == cv2.imread(str(face_jpg)).shape
    assert out["heatmap"].shape == (64, 64) and 0.0 <= out["heatmap"].min() <= out["heatmap"].max() <= 1.0
    assert out["overlay"].shape == (256, 256, 3)
    assert 'data-label="' + out["row"]["label"] + '"' in verdict_html(out["row"])

    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    with pytest.raises(UploadError) as e:
        analyse_image(model, text)
    assert e.value.status == 415
    with pytest.raises(UploadError) as e:
        analyse_image(model, face_jpg, max_upload_mb=0.001)
    assert e.value.status == 413

    rows, csv_path = analyse_images(model, [face_jpg, text], out_dir=tmp_path)
    assert [r["path"] for r in rows] == [face_jpg.name, "notes.jpg"]
    assert rows[0]["p_fake"] == pytest.approx(cli["p_fake"], abs=1e-6) and "unknown file type" in rows[1]["error"]
    lines = Path(csv_path).read_text().splitlines()
    assert lines[0] == "path,kind,p_fake,label,confidence,error" and len(lines) == 3

    face = cv2.cvtColor(cv2.imread(str(face_jpg)), cv2.COLOR_BGR2RGB)
    res, plot = analyse_video(model, write_video(tmp_path / "v.mp4", face, n=6), n_frames=4)
    assert res["kind"] == "video" and len(res["frames"]) == 4 and res["path"] == "v.mp4"
    assert plot.ndim == 3 and plot.shape[2] == 3


def test_cli_serve_defaults_to_localhost_and_calls_the_library(monkeypatch, model_path):
    from deepfake_detector import cli
    from deepfake_detector.web import app as web_app

    args = cli.build_parser().parse_args(["serve", "--model", str(model_path)])
    assert (args.host, args.port, args.max_upload_mb) == ("127.0.0.1", 7860, 50.0)
    seen = {}
    monkeypatch.setattr(web_app, "serve", lambda **kw: seen.update(kw))
    monkeypatch.setattr("deepfake_detector.web.serve", lambda **kw: seen.update(kw))
    assert cli.main(["serve", "--model", str(model_path), "--port", "9999"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 9999 and seen["model_path"] == str(model_path)
    # docs/web.md's second command: every interface, another port, a smaller upload cap
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "8080", "--max-upload-mb", "20",
                     "--model", str(model_path)]) == 0
    assert (seen["host"], seen["port"], seen["max_upload_mb"]) == ("0.0.0.0", 8080, 20.0)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_a_wrong_method_is_405_json(server, method):
    r = requests.request(method, f"{server.url}/api/predict", timeout=TIMEOUT)
    assert r.status_code == 405 and "error" in r.json() and r.headers["Allow"] == "POST"


@pytest.mark.parametrize("path", ["/api/nope", "/api/predict/extra", "/elsewhere"])
def test_an_unknown_path_is_404_json(server, path):
    r = requests.get(f"{server.url}{path}", timeout=TIMEOUT)
    assert r.status_code == 404 and set(r.json()) == {"error"}


def test_a_huge_multipart_boundary_is_400_json(model, uploads_dir):
    """Served as `serve` serves it (the guarded HTTP protocol): whether the 70 KB header reaches
    the application (which refuses the boundary) or is refused by the HTTP parser first (its
    headers arrived in more than one read), the answer is a 400 with a JSON error."""
    from deepfake_detector.web.guards import http_protocol

    with BackgroundServer(create_api(model, max_upload_mb=5, temp_dir=uploads_dir), http=http_protocol()) as srv:
        for _ in range(3):
            r = requests.post(f"{srv.url}/api/predict", data=b"--" + b"b" * 70000 + b"\r\n",
                              headers={"Content-Type": "multipart/form-data; boundary=" + "b" * 70000},
                              timeout=TIMEOUT)
            error = r.json()["error"]
            assert r.status_code == 400 and ("boundary" in error or "Invalid HTTP request" in error), error


def test_the_full_app_answers_json_for_api_refusals(model, uploads_dir):
    pytest.importorskip("gradio", reason="the web extra is not installed")
    from deepfake_detector.web import create_app

    with BackgroundServer(create_app(model, max_upload_mb=2, temp_dir=uploads_dir)) as srv:
        r = requests.get(f"{srv.url}/api/predict", timeout=TIMEOUT)
        assert r.status_code == 405 and "error" in r.json()
        r = requests.delete(f"{srv.url}/api/health", timeout=TIMEOUT)
        assert r.status_code == 405 and "error" in r.json()
        r = requests.get(f"{srv.url}/api/unknown", timeout=TIMEOUT)
        assert r.status_code == 404 and "error" in r.json()
        assert requests.get(f"{srv.url}/api/health", timeout=TIMEOUT).json()["status"] == "ok"


def test_analyses_wait_for_a_slot_and_a_request_cancelled_while_waiting_stops():
    """At most ANALYSES_AT_ONCE files are decoded and scored at once (the rest wait with their
    upload on disk), which bounds the decoded pictures the server holds."""
    import threading

    from deepfake_detector.data.deadline import Cancelled, run_cancellable
    from deepfake_detector.web import api

    def analyse():
        with api.analysis_slot():
            return "analysed"

    held = 0
    for _ in range(api.ANALYSES_AT_ONCE):
        assert api._ANALYSES.acquire(timeout=5)
        held += 1
    try:
        cancel = threading.Event()
        timer = threading.Timer(0.6, cancel.set)  # the client leaves while the request waits
        timer.start()
        with pytest.raises(Cancelled):
            run_cancellable(cancel, analyse)
        timer.join()
    finally:
        for _ in range(held):
            api._ANALYSES.release()
    assert run_cancellable(threading.Event(), analyse) == "analysed"  # a free slot: no wait
