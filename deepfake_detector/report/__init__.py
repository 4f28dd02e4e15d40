"""An evaluation report: plots, ``metrics.json`` and one self-contained ``index.html``
(:func:`write_report`); the figures, training curves included, live in :mod:`.plots`, the
page in :mod:`.html`."""

from __future__ import annotations

from .html import CSS, ROWS, write_report
from .plots import (
    COLORS,
    PER_GROUP,
    PLOTS,
    SAMPLES,
    TILE_PX,
    plot_confusion,
    plot_histogram,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_samples,
    plot_training_curves,
)

__all__ = [
    "COLORS", "CSS", "PER_GROUP", "PLOTS", "ROWS", "SAMPLES", "TILE_PX", "plot_confusion", "plot_histogram",
    "plot_pr", "plot_reliability", "plot_roc", "plot_samples", "plot_training_curves", "write_report",
]
