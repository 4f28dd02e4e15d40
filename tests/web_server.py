"""For the web tests: a real uvicorn server in a background thread on a free port of 127.0.0.1,
and a small test video."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """``with BackgroundServer(app) as srv: requests.get(srv.url + "/api/health")``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0,
                 http="auto"):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=5, http=http)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.timeout = timeout

    def __enter__(self):
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > self.timeout:
                raise RuntimeError(f"the test server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def bound_addresses(self) -> list[str]:
        return [sock.getsockname()[0] for srv in self.server.servers for sock in srv.sockets]

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


def write_video(path: Path, face: np.ndarray | None, n: int = 12) -> Path:
    """A 320x240 10-fps MP4: noisy grey background, ``face`` (RGB) pasted and moving right."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write .mp4")
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = np.full((240, 320, 3), 90, np.uint8)
        frame += rng.integers(0, 20, frame.shape, dtype=np.uint8)
        if face is not None:
            f = cv2.resize(face, (160, 160))
            x = 60 + 4 * i
            frame[40:200, x : x + 160] = f
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
