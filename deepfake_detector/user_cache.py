"""The user's cache folder, the one place under which every cache of the package lives (the
CLIP encoder and its prepared files, the embedding cache, the compiled engine kernels).
Standard library only, so that every layer of the package may import it."""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "DEEPFAKE_DETECTOR_CACHE"


def cache_dir() -> Path:
    """``$DEEPFAKE_DETECTOR_CACHE``, else ``$XDG_CACHE_HOME/deepfake-detector``, else
    ``~/.cache/deepfake-detector``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deepfake-detector"
