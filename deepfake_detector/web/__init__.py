"""The web interface: a Gradio UI and an HTTP API on one local FastAPI server.

``create_app(model, ...)`` builds the FastAPI app (``/api/predict``, ``/api/health`` and the
UI at ``/``); ``serve(...)`` runs it with uvicorn (``deepfake-detector serve``). Needs the
``web`` extra: ``pip install 'deepfake-detector[web]'``. Importing this package imports
neither Gradio nor FastAPI.
"""

from .app import DEFAULT_HOST, DEFAULT_PORT, create_app, serve
from .uploads import DEFAULT_MAX_UPLOAD_MB

__all__ = ["DEFAULT_HOST", "DEFAULT_MAX_UPLOAD_MB", "DEFAULT_PORT", "create_app", "serve"]
