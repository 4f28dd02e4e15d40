"""The web UI in a real browser: headless Chromium (Debian's package) driven by Playwright.

Opens the page served by a real uvicorn server, uploads a face photo from the DFDC data,
waits for the verdict and the heatmap, checks that the page fetched nothing from any other
host, and saves a screenshot (``app.png`` in the test's temporary folder; also
``docs/app.png`` when ``UPDATE_DOCS_SCREENSHOT=1``, with the model at ``$DFD_SCREENSHOT_MODEL``
or else the packaged default model when there is one). Then the other tabs: several photos
-> a table and a CSV, a video -> a verdict and a timeline, and a file over the limit -> an
error message.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT
from .web_server import BackgroundServer, write_video

CHROMIUM = Path(os.environ.get("DFD_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
UPDATE_DOCS = os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1"
MAX_UPLOAD_MB = 1
TIMEOUT_MS = 45_000

pytestmark = [
    pytest.mark.slow,
    # Gradio's own use of pandas 3 (its queue), nothing of ours
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("playwright", reason="playwright is not installed: pip install playwright")
    pytest.importorskip("gradio", reason="the web extra is not installed: pip install 'deepfake-detector[web]'")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set DFD_CHROMIUM)")
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        except Error as e:
            pytest.skip(f"Chromium at {CHROMIUM} does not start under Playwright: {e}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(browser, tmp_path_factory):
    from deepfake_detector.models import create_model, default_model_path, load, save_model
    from deepfake_detector.web import create_app

    shown = os.environ.get("DFD_SCREENSHOT_MODEL") or (default_model_path() if default_model_path().exists() else None)
    if UPDATE_DOCS and shown:
        model = load(shown)  # the screenshot in the docs shows a trained model
    else:
        path = tmp_path_factory.mktemp("model") / "small.npz"
        save_model(create_model("seed-cnn", input_size=64), path)
        model = load(path)
    with BackgroundServer(create_app(model, max_upload_mb=MAX_UPLOAD_MB, n_frames=6)) as srv:
        yield srv


@pytest.fixture()
def page(browser, server):
    """A fresh page on the app; fails the test if the page fetched anything from another host."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    foreign = []
    page.on("request", lambda r: None if r.url.startswith((server.url, "data:", "blob:")) else foreign.append(r.url))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url + "/", wait_until="domcontentloaded")
    yield page
    page.close()
    assert foreign == [], f"the page fetched from other hosts: {foreign}"


@pytest.fixture(scope="module")
def photos(dfdc_faces) -> list[Path]:
    """A fake and a real face: the brightest of the first 20 of each (many DFDC clips are dark)."""
    import numpy as np
    from PIL import Image

    def brightness(p):
        with Image.open(p) as im:
            return float(np.asarray(im.convert("L")).mean())

    return [max(sorted((dfdc_faces / "Test" / c).glob("*.jpg"))[:20], key=brightness) for c in ("Fake", "Real")]


def test_upload_a_photo_see_verdict_and_heatmap(page, photos, tmp_path):
    page.locator("#image-input input[type=file]").set_input_files(str(photos[0]))
    verdict = page.locator("#verdict .verdict")
    verdict.wait_for(state="visible")
    assert verdict.get_attribute("data-label") in ("Real", "Fake")
    text = verdict.inner_text()
    assert "P(fake)" in text and "confidence" in text
    heat = page.locator("#heatmap img")
    heat.wait_for(state="visible")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heat.element_handle())
    assert page.locator("#annotated img").is_visible()
    page.wait_for_timeout(300)  # let the last image paint
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    if UPDATE_DOCS:
        docs = PROJECT_ROOT / "docs" / "app.png"
        docs.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, docs)


def test_several_photos_table_and_csv(page, photos):
    page.get_by_role("tab", name="Several images").click()
    page.locator("#files-input input[type=file]").set_input_files([str(p) for p in photos])
    page.get_by_role("button", name="Analyse all").click()
    page.get_by_text(".csv").first.wait_for(state="visible")  # the CSV file to download: the work is done
    text = page.locator("#table").inner_text()
    for p in photos:
        assert p.name in text
    assert "Fake" in text or "Real" in text


def test_video_verdict_and_timeline(page, photos, tmp_path):
    import cv2

    face = cv2.cvtColor(cv2.imread(str(photos[0])), cv2.COLOR_BGR2RGB)
    video = write_video(tmp_path / "clip.mp4", face, n=8)
    page.get_by_role("tab", name="Video").click()
    page.locator("#video-input input[type=file]").set_input_files(str(video))
    page.get_by_role("button", name="Analyse video").click()
    verdict = page.locator("#video-verdict .verdict")
    verdict.wait_for(state="visible")
    assert verdict.get_attribute("data-label") in ("Real", "Fake", "NoFace")
    page.locator("#timeline img").wait_for(state="visible")


def test_file_over_the_limit_is_refused_with_a_message(page, tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + bytes(int(1.5 * MAX_UPLOAD_MB * 2**20)))
    page.locator("#image-input input[type=file]").set_input_files(str(big))
    toast = page.locator(".toast-body").first
    toast.wait_for(state="visible")
    assert "maximum allowed size" in toast.inner_text()
    assert page.locator("#verdict .verdict").count() == 0
