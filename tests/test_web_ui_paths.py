"""The web UI analyses only what a browser uploaded to it.

Through Gradio's queue endpoint a client can hand a UI function a ``FileData`` naming any
path. Every UI function must refuse a path outside Gradio's upload folder: a project file,
``/etc/hostname`` renamed ``.png``, and a link inside the upload folder pointing out. A real
upload through the same protocol is analysed (the control: the protocol works).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the web extra is not installed")
requests = pytest.importorskip("requests", reason="the tests need requests")

from deepfake_detector.models import create_model, load, save_model  # noqa: E402
from deepfake_detector.web import create_app  # noqa: E402
from deepfake_detector.web.uploads import upload_folder  # noqa: E402

from .conftest import PROJECT_ROOT  # noqa: E402
from .web_server import BackgroundServer  # noqa: E402

TIMEOUT = 60
PROJECT_IMAGE = PROJECT_ROOT / "docs" / "app.png"  # a real image: it would be analysed if allowed


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.npz"
    save_model(create_model("seed-cnn", input_size=64), path)
    with BackgroundServer(create_app(load(path), max_upload_mb=5)) as srv:
        yield srv


def ui_functions(srv) -> dict[int, str]:
    """fn_index -> the id of its first input component's type, for every UI function that takes a file."""
    config = requests.get(f"{srv.url}/config", timeout=TIMEOUT).json()
    types = {c["id"]: c["type"] for c in config["components"]}
    out = {}
    for i, dep in enumerate(config["dependencies"]):
        kinds = [types.get(c) for c in dep.get("inputs", [])]
        if kinds and kinds[0] in ("image", "file", "video"):
            out[i] = kinds[0]
    return out


def call(srv, fn_index: int, path: str, kind: str) -> dict:
    """Join the queue with ``path`` as the function's file input; the final message."""
    session = uuid.uuid4().hex[:10]
    file_data = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": os.path.basename(path)}
    value = [file_data] if kind == "file" else ({"video": file_data, "subtitles": None} if kind == "video"
                                                 else file_data)
    r = requests.post(f"{srv.url}/gradio_api/queue/join", timeout=TIMEOUT,
                      json={"data": [value], "fn_index": fn_index, "trigger_id": None, "session_hash": session})
    if r.status_code != 200:
        return {"msg": "refused at join", "status": r.status_code, "success": False}
    with requests.get(f"{srv.url}/gradio_api/queue/data", params={"session_hash": session}, stream=True,
                      timeout=TIMEOUT) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError("the queue stream ended without a result")


def upload(srv, path: Path) -> str:
    with open(path, "rb") as f:
        r = requests.post(f"{srv.url}/gradio_api/upload", files={"files": (path.name, f)}, timeout=TIMEOUT)
    r.raise_for_status()
    return r.json()[0]


def hostile_paths(tmp_path) -> dict[str, str]:
    hostname = tmp_path / "hostname.png"
    shutil.copyfile("/etc/hostname" if os.path.exists("/etc/hostname") else PROJECT_ROOT / "README.md", hostname)
    inside = upload_folder() / f"test-{uuid.uuid4().hex[:8]}"
    inside.mkdir(parents=True)
    (inside / "link.png").symlink_to(PROJECT_IMAGE)
    return {"project file": str(PROJECT_IMAGE), "/etc/hostname as .png": str(hostname),
            "link out of the upload folder": str(inside / "link.png")}


def refused(msg: dict) -> bool:
    """True when the call failed, or (the several-images tab, whose rows carry their own
    errors) when every row is the refusal and none a verdict."""
    if not msg.get("success"):
        return True
    out = json.dumps(msg.get("output", {}).get("data"))
    return "not a file uploaded to this app" in out and '"Real"' not in out and '"Fake"' not in out


def test_every_ui_function_refuses_server_paths(server, tmp_path):
    functions = ui_functions(server)
    assert set(functions.values()) == {"file", "image", "video"}, functions
    for name, path in hostile_paths(tmp_path).items():
        for fn, kind in functions.items():
            msg = call(server, fn, path, kind)
            assert refused(msg), (name, kind, msg)


def test_a_real_upload_goes_through_the_same_protocol(server, tmp_path):
    """The control: the same call with a path the upload endpoint returned is analysed."""
    functions = {kind: fn for fn, kind in ui_functions(server).items()}
    path = upload(server, PROJECT_IMAGE)
    msg = call(server, functions["image"], path, "image")
    assert msg.get("success"), msg
    assert "Real" in json.dumps(msg["output"]["data"][0]) or "Fake" in json.dumps(msg["output"]["data"][0])
