"""The web app, :func:`create_app` / :func:`serve`: a Gradio UI (:func:`build_ui`: tabs Image, Several
images, Video) and the HTTP API on one FastAPI server, calling the same library functions as the CLI.
Privacy: the server listens on 127.0.0.1 unless told otherwise, never creates a public share link and
sends no analytics (``GRADIO_ANALYTICS_ENABLED=False`` before Gradio is imported; local fonts only).
Gradio's upload cache is a private temporary folder removed at exit (:func:`serve`), and cached files
older than 15 minutes are deleted every 5 minutes.
"""

from __future__ import annotations

import html
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from ..options import DEFAULT_N_FRAMES, PredictOptions
from ..results import WEB_COLUMNS, error_row, json_safe, verdict_colour, verdict_hex, write_csv
from .api import SerialModel, add_api_routes, predict_file, serial, status_of
from .guards import (
    BODY_TIMEOUT_GRACE,
    DEFAULT_KEEP_ALIVE,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_UPLOADS,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_UPLOAD_DEADLINE,
    DEFAULT_UPLOAD_TIMEOUT,
    http_protocol,
)
from .uploads import DEFAULT_MAX_UPLOAD_MB, UploadError, check_file, check_uploaded, max_bytes, safe_name, upload_folder

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before any import of gradio
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_SSR_MODE", "False")

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DISPLAY_MAX_SIDE = 1024  # the annotated photo is shown at most this large
HEATMAP_SIDE = 256
CSS = f"""
.verdict {{border-radius: 8px; padding: 12px 16px; font-size: 1.1em}}
.verdict, .verdict * {{color: white !important}}
.verdict .label {{font-size: 1.8em; font-weight: 700; display: block}}
.verdict.Fake {{background: {verdict_hex("Fake")}}} .verdict.Real {{background: {verdict_hex("Real")}}}
.verdict.NoFace, .verdict.Error {{background: {verdict_hex(None)}}}
"""


# --- the work behind each tab (plain functions; no Gradio needed) -------------------------
def _with_extension(path, ext: str, tmp: str) -> Path:
    """A copy of ``path`` named by its sniffed type (the library reads files by extension)."""
    dest = Path(tmp) / ("upload" + ext)
    shutil.copyfile(path, dest)
    return dest


def analyse_image(model, path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, method: str = "auto",
                  name: str | None = None, detector=None, uploads: Path | None = None) -> dict:
    """One image file -> ``{"row", "annotated", "crop", "heatmap", "overlay"}``.

    ``row`` is the CLI's row (``predict``: the model's framing, so ``NoFace`` for a photo
    without a face); ``annotated`` the photo (at most :data:`DISPLAY_MAX_SIDE`) with the face
    box; ``crop`` the model's input (the face crop, or the whole image for a model that scores
    whole images); ``heatmap`` the evidence map over it and ``overlay`` both blended (None for
    ``NoFace``: there is no verdict to explain). Raises :class:`UploadError` for a refused file.
    ``uploads``: the folder ``path`` must lie in (the UI passes Gradio's upload folder).
    """
    model = serial(model)
    if uploads is not None:
        check_uploaded(path, uploads)
    ftype = check_file(path, max_upload_mb)
    if ftype.kind != "image":
        raise UploadError(f"this is a {ftype.name} video: use the Video tab", 415)
    name = name or safe_name(os.path.basename(str(path)))
    with tempfile.TemporaryDirectory(prefix="dfd-ui-") as tmp:
        local = _with_extension(path, ftype.ext, tmp)
        row = predict_file(model, local, name, PredictOptions(detector=detector, keep_pixels=True))
    if row.error:
        raise UploadError(row.error, 422)
    img, crop = row.image, row.crop  # the result keeps what it decoded and what the model saw
    if row.p_fake is None:  # NoFace
        return {"row": row, "annotated": draw_face(img, None, row), "crop": crop, "heatmap": None, "overlay": None}
    heat = model.explain(crop, method)
    big = cv2.resize(crop, (HEATMAP_SIDE, HEATMAP_SIDE), interpolation=cv2.INTER_CUBIC)
    from ..explain import overlay

    return {"row": row, "annotated": draw_face(img, row.get("face"), row), "crop": crop,
            "heatmap": heat, "overlay": overlay(big, heat)}


def draw_face(img: np.ndarray, box, row: dict) -> np.ndarray:
    """The photo scaled to at most :data:`DISPLAY_MAX_SIDE`, the face box and score drawn."""
    h, w = img.shape[:2]
    scale = min(1.0, DISPLAY_MAX_SIDE / max(h, w))
    if scale < 1:
        out = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    else:
        out = img.copy()
    if box is None:
        return out
    colour = verdict_colour(row.get("label"))
    x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
    t = max(2, round(max(out.shape[:2]) / 300))
    cv2.rectangle(out, (x1, y1), (x2, y2), colour, t)
    text = f"{row.get('label')} {row['p_fake']:.2f}" if row.get("p_fake") is not None else str(row.get("label"))
    fs = max(0.5, t / 3)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, fs, max(1, t // 2))
    ty = y1 - 4 if y1 - th - base - 4 >= 0 else min(out.shape[0] - 1, y2 + th + 4)
    cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 4, ty + base // 2), colour, -1)
    cv2.putText(out, text, (x1 + 2, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), max(1, t // 2),
                cv2.LINE_AA)
    return out


def verdict_html(row: dict) -> str:
    """The verdict box: label, P(fake), confidence and threshold."""
    label = row.get("label") or "Error"
    p = row.get("p_fake")
    lines = [f'<span class="label">{html.escape(label)}</span>']
    if p is not None:
        lines.append(f"P(fake) <b>{p:.3f}</b> &middot; confidence <b>{html.escape(str(row.get('confidence')))}</b>"
                     f" &middot; threshold {float(row.get('threshold') or 0.5):.2f}")
    for key in ("message", "error"):
        if row.get(key):
            lines.append(html.escape(str(row[key])))
    return f'<div class="verdict {html.escape(label)}" data-label="{html.escape(label)}">{"<br>".join(lines)}</div>'


def analyse_images(model, paths, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, out_dir=None,
                   detector=None, uploads: Path | None = None) -> tuple[list[dict], str | None]:
    """Several image files -> (CLI rows, the CSV file written to ``out_dir``).

    A refused file (too large, not an image, outside ``uploads`` where given) gets a row with
    ``error``; the others go on.
    """
    model = serial(model)
    rows = []
    for path in paths or []:
        name = safe_name(os.path.basename(str(path)))
        try:
            if uploads is not None:
                check_uploaded(path, uploads)
            ftype = check_file(path, max_upload_mb)
            if ftype.kind != "image":
                raise UploadError(f"a {ftype.name} video: use the Video tab", 415)
            with tempfile.TemporaryDirectory(prefix="dfd-ui-") as tmp:
                rows.append(predict_file(model, _with_extension(path, ftype.ext, tmp), name, detector=detector))
        except UploadError as e:
            rows.append(error_row(name, e.message, "image", model.threshold))
    csv_path = None
    if out_dir is not None and rows:
        csv_path = write_csv(rows, Path(out_dir) / f"predictions-{time.strftime('%Y%m%d-%H%M%S')}-"
                                                  f"{uuid.uuid4().hex[:6]}.csv")
    return rows, csv_path


def table_rows(rows: list) -> list[list]:
    """The Several-images table (:data:`~deepfake_detector.results.WEB_COLUMNS`)."""
    return [[None if r.get(k) is None else str(r[k]) if k == "face" else r.get(k) for k, _ in WEB_COLUMNS]
            for r in rows]


def analyse_video(model, path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, n_frames: int = DEFAULT_N_FRAMES,
                  name: str | None = None, detector=None,
                  uploads: Path | None = None) -> tuple[dict, np.ndarray | None]:
    """A video file -> (the CLI's video result, the timeline plot as an RGB array)."""
    from ..data import load_image
    from ..video.render import plot_timeline

    model = serial(model)
    if uploads is not None:
        check_uploaded(path, uploads)
    ftype = check_file(path, max_upload_mb)
    if ftype.kind != "video":
        raise UploadError(f"this is a {ftype.name} image: use the Image tab", 415)
    name = name or safe_name(os.path.basename(str(path)))
    with tempfile.TemporaryDirectory(prefix="dfd-ui-") as tmp:
        res = predict_file(model, _with_extension(path, ftype.ext, tmp), name, n_frames=n_frames, detector=detector)
        if status_of(res) != 200:
            raise UploadError(res.get("error") or "the video could not be read", 422)
        png = Path(tmp) / "timeline.png"
        plot_timeline(res, png)
        plot = load_image(png)
    return res, plot


def video_summary(res: dict) -> str:
    keys = ("n_frames", "n_frames_with_faces", "n_faces", "duration", "fps", "flicker", "aggregation")
    return verdict_html(res) + "<br>" + " &middot; ".join(
        f"{k.replace('_', ' ')}: <b>{html.escape(str(res.get(k)))}</b>" for k in keys if res.get(k) is not None)


# --- the Gradio UI -------------------------------------------------------------------------
def build_ui(model, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, work_dir=None, n_frames: int = DEFAULT_N_FRAMES,
             explain_method: str = "auto", detector=None):
    """The Gradio Blocks (not yet mounted).

    Tabs: **Image** (verdict, P(fake), confidence, the photo with the face box, and a heatmap
    of the evidence over the face crop), **Several images** (a table and a CSV download, the
    columns of ``predict --format csv``) and **Video** (verdict and the per-frame timeline).
    They call the same library functions as the CLI (``predict_paths``, ``analyze_video``,
    ``plot_timeline``, :func:`~deepfake_detector.explain.explain`).
    """
    import gradio as gr

    model = serial(model)
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="dfd-web-"))
    desc = model.describe()

    def refused(e: UploadError):
        return gr.Error(e.message, title="File refused" if e.status in (403, 413, 415) else "Cannot read the file")

    def on_image(path):
        if not path:
            raise gr.Error("Upload a photo first.")
        try:
            out = analyse_image(model, path, max_upload_mb, explain_method, detector=detector,
                                uploads=upload_folder())
        except UploadError as e:
            raise refused(e) from None
        return verdict_html(out["row"]), out["annotated"], out["overlay"], json_safe(out["row"])

    def on_images(files):
        if not files:
            raise gr.Error("Upload one or more photos first.")
        paths = [getattr(f, "name", f) for f in files]
        rows, csv_path = analyse_images(model, paths, max_upload_mb, out_dir=work_dir, detector=detector,
                                        uploads=upload_folder())
        return table_rows(rows), csv_path

    def on_video(path):
        if not path:
            raise gr.Error("Upload a video first.")
        try:
            res, plot = analyse_video(model, path, max_upload_mb, n_frames, detector=detector,
                                      uploads=upload_folder())
        except UploadError as e:
            raise refused(e) from None
        return video_summary(res), plot, json_safe(res)

    title = "Deepfake detector"
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(300, 900)) as ui:
        gr.Markdown(f"# {title}\nModel: `{desc.get('arch')}` ({desc.get('kind')} model, input "
                    f"{desc.get('input_size')} px, version {desc.get('version')}). Files up to "
                    f"{max_upload_mb:g} MB; nothing leaves this machine.")
        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                with gr.Row():
                    with gr.Column():
                        img_in = gr.Image(type="filepath", image_mode=None, label="Photo", elem_id="image-input",
                                          sources=["upload", "clipboard"])  # image_mode None: the file as sent
                        img_btn = gr.Button("Analyse", variant="primary", elem_id="image-button")
                    with gr.Column():
                        verdict = gr.HTML(elem_id="verdict")
                        annotated = gr.Image(label="Face used", interactive=False, elem_id="annotated",
                                             format="jpeg", buttons=["download", "fullscreen"])
                        heat = gr.Image(label="Heatmap: where the evidence for Fake is", interactive=False,
                                        elem_id="heatmap", format="png", buttons=["download", "fullscreen"])
                with gr.Accordion("Result (JSON, as predict --format json)", open=False):
                    img_json = gr.JSON()
                img_btn.click(on_image, img_in, [verdict, annotated, heat, img_json], api_visibility="private")
                img_in.upload(on_image, img_in, [verdict, annotated, heat, img_json], api_visibility="private")
            with gr.Tab("Several images", id="images"):
                files_in = gr.File(file_count="multiple", file_types=["image"], label="Photos", elem_id="files-input")
                files_btn = gr.Button("Analyse all", variant="primary")
                table = gr.Dataframe(headers=[header for _, header in WEB_COLUMNS], label="Results", interactive=False,
                                     elem_id="table")
                csv_out = gr.File(label="CSV", interactive=False)
                files_btn.click(on_images, files_in, [table, csv_out], api_visibility="private")
            with gr.Tab("Video", id="video"):
                with gr.Row():
                    with gr.Column():
                        vid_in = gr.Video(label="Video", sources=["upload"], elem_id="video-input")
                        vid_btn = gr.Button("Analyse video", variant="primary")
                    with gr.Column():
                        vid_verdict = gr.HTML(elem_id="video-verdict")
                        timeline = gr.Image(label="P(fake) per sampled frame", interactive=False,
                                            elem_id="timeline", format="png", buttons=["download", "fullscreen"])
                with gr.Accordion("Result (JSON)", open=False):
                    vid_json = gr.JSON()
                vid_btn.click(on_video, vid_in, [vid_verdict, timeline, vid_json], api_visibility="private")
    return ui


def create_app(model, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, temp_dir=None, ui: bool = True,
               n_frames: int = DEFAULT_N_FRAMES, explain_method: str = "auto", detector=None,
               upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT, upload_deadline: float = DEFAULT_UPLOAD_DEADLINE,
               max_uploads: int = DEFAULT_MAX_UPLOADS):
    """The FastAPI app: ``/api/predict``, ``/api/health`` and (with ``ui``) the Gradio UI at ``/``.

    ``model``: a loaded :class:`~deepfake_detector.models.Predictor`; ``temp_dir``: where the
    API's per-request temporary folders go (default: the system's); ``max_upload_mb``: the
    limit for the API and the UI alike; ``detector``: a face detector (default: the default one);
    ``upload_timeout`` / ``upload_deadline`` / ``max_uploads``: the API's upload limits (see
    :func:`.api.add_api_routes`). The connection-level limits (header timeout, connection cap)
    belong to the server: :func:`serve`, or ``uvicorn.Config(http=limits.http_protocol(...))``.
    """
    from fastapi import FastAPI

    from .. import __version__

    max_bytes(max_upload_mb)
    model = serial(model)
    app = FastAPI(title="deepfake-detector", version=__version__, docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    # the API before the UI: "/" catches the rest
    add_api_routes(app, model, max_upload_mb, temp_dir, n_frames, detector=detector, upload_timeout=upload_timeout,
                   upload_deadline=upload_deadline, max_uploads=max_uploads)
    app.state.model = model
    app.state.max_upload_mb = max_upload_mb
    if ui:
        import gradio as gr

        work_dir = tempfile.mkdtemp(prefix="dfd-web-")
        app.state.work_dir = work_dir
        blocks = build_ui(model, max_upload_mb, work_dir, n_frames, explain_method, detector)
        app = gr.mount_gradio_app(app, blocks, path="/", server_name=DEFAULT_HOST, footer_links=[], ssr_mode=False,
                                  max_file_size=max_bytes(max_upload_mb), allowed_paths=[work_dir], show_error=True,
                                  mcp_server=False, enable_monitoring=False, css=CSS, pwa=False)
        # Gradio refuses a client-named file outside its upload folder only once the Blocks "has
        # launched", which a mounted app never does: without this, the queue endpoint would read,
        # judge and serve back any image or video on the server (each UI function checks again).
        blocks.has_launched = True
        _cleanup_on_shutdown(app, work_dir)
    return app


def _cleanup_on_shutdown(app, *dirs):
    import contextlib

    old = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        try:
            async with old(a) as state:
                yield state
        finally:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)

    app.router.lifespan_context = lifespan


def serve(model_path=None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, runtime: str = "auto", model=None,
          device: str = "cpu", log_level: str = "info", threads: int | None = None,
          detector: str | None = None, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
          upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT, upload_deadline: float = DEFAULT_UPLOAD_DEADLINE,
          max_uploads: int = DEFAULT_MAX_UPLOADS, max_connections: int = DEFAULT_MAX_CONNECTIONS,
          ui: bool = True) -> None:
    """Run the web app until interrupted (``deepfake-detector serve``). Listens on 127.0.0.1
    unless ``host`` says otherwise; no share link, no analytics.

    ``model_path`` / ``runtime``: as :func:`deepfake_detector.models.load` (default: the packaged
    model); ``model``: an already loaded model instead (then ``model_path`` and ``runtime`` are
    ignored); ``ui``: False for the API alone.

    Limits against slow or hostile clients (:mod:`.guards`): ``request_timeout`` seconds for a
    request's headers (then the connection is closed; idle kept-alive connections close after
    at most :data:`~.limits.DEFAULT_KEEP_ALIVE` s); ``upload_timeout`` seconds without a byte
    and ``upload_deadline`` seconds in all for an upload (408; other routes' request bodies,
    the UI's uploads included, are cut off after ``upload_timeout`` + 5 s without a byte);
    ``max_uploads`` ``/api/predict`` requests at a time (503 and ``Retry-After`` above);
    ``max_connections`` open connections (a new one above is answered 503 and closed).
    """
    import signal
    import sys
    import threading

    import uvicorn

    own_cache = None
    if not os.environ.get("GRADIO_TEMP_DIR") and "gradio" not in sys.modules:
        own_cache = tempfile.mkdtemp(prefix="dfd-gradio-")  # Gradio's upload cache, private to this server
        os.environ["GRADIO_TEMP_DIR"] = own_cache
    previous = None
    if threading.current_thread() is threading.main_thread():
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it: exit through Python then,
        # so that the clean-up below runs (the default handler would kill the process first)
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if model is None:
            from ..models import load

            model = load(model_path, runtime, device, threads)
        from ..faces import get_detector

        chosen = {"detector": get_detector(detector)} if detector else {}  # else create_app's default
        protocol = http_protocol(request_timeout, upload_timeout + BODY_TIMEOUT_GRACE, max_connections)
        app = create_app(model, max_upload_mb=max_upload_mb, upload_timeout=upload_timeout,
                         upload_deadline=upload_deadline, max_uploads=max_uploads, ui=ui, **chosen)
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("listening on %s: the app is reachable from other machines", host)
        print(f"deepfake-detector web app on http://{'[' + host + ']' if ':' in host else host}:{port}/ "
              f"(API: /api/predict, /api/health); Ctrl+C stops it", flush=True)
        uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False, http=protocol,
                    timeout_keep_alive=min(DEFAULT_KEEP_ALIVE, request_timeout))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if own_cache:
            shutil.rmtree(own_cache, ignore_errors=True)
            os.environ.pop("GRADIO_TEMP_DIR", None)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(0)


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "SerialModel", "analyse_image", "analyse_images", "analyse_video",
           "build_ui", "create_app", "serve"]
