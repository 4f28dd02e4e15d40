"""The evaluation page: ``metrics.json`` and one self-contained ``index.html`` beside the
plots (:func:`write_report`, which draws them through :mod:`.plots`)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..metrics import compute_metrics
from .plots import (
    PLOTS,
    SAMPLES,
    plot_confusion,
    plot_histogram,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_samples,
)

# rows of metrics.json / index.html: (key, label)
ROWS = (
    ("n", "samples"),
    ("n_real", "real"),
    ("n_fake", "fake"),
    ("threshold", "threshold"),
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("precision", "precision (fake)"),
    ("recall", "recall (fake)"),
    ("f1", "F1 (fake)"),
    ("accuracy_real", "accuracy on real"),
    ("accuracy_fake", "accuracy on fake"),
    ("roc_auc", "ROC AUC"),
    ("average_precision", "average precision"),
    ("eer", "EER"),
    ("eer_threshold", "EER threshold"),
    ("log_loss", "log loss"),
    ("brier", "Brier score"),
    ("ece", "ECE (15 bins)"),
)


# columns of the per-source table: (key, label)
SOURCE_ROWS = (
    ("n", "n"),
    ("n_real", "real"),
    ("n_fake", "fake"),
    ("roc_auc", "ROC AUC"),
    ("fake_recall", "fake recall"),
    ("false_alarm", "false-alarm rate"),
)


# --- JSON and HTML --------------------------------------------------------------------
def _jsonable(v):
    """``json.dumps`` fallback for numpy values and paths."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=_jsonable)
    return str(v)


def _cm_html(m: dict) -> str:
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    return (
        f"<table><caption>threshold {m['threshold']:.4f}</caption>"
        "<tr><th>true \\ predicted</th><th>Real</th><th>Fake</th></tr>"
        f"<tr><th>Real</th><td>{tn}</td><td>{fp}</td></tr>"
        f"<tr><th>Fake</th><td>{fn}</td><td>{tp}</td></tr></table>"
    )


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 1.5em 1em 0; display: inline-table; vertical-align: top; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; }
td { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; text-align: left; }
caption { font-weight: bold; padding: 0.3em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def _sources_html(report: dict) -> list[str]:
    """The per-source table (one row per source), or nothing."""
    if not report.get("sources"):
        return []
    e = html.escape
    head = "".join(f"<th>{e(label)}</th>" for _, label in SOURCE_ROWS)
    body = "".join(
        f"<tr><th>{e(str(r['source']))}</th>" + "".join(f"<td>{e(_fmt(r.get(k)))}</td>" for k, _ in SOURCE_ROWS)
        + "</tr>" for r in report["sources"]
    )
    return [
        "<h2>Per source</h2>",
        f"<table><caption>threshold {report['threshold']:.4f}</caption><tr><th>source</th>{head}</tr>{body}</table>",
        "<p>Fake recall: the share of a source's fakes called Fake; false-alarm rate: the share of its reals "
        "called Fake. A source of one class is ranked (ROC AUC) against the other class of its own dataset.</p>",
    ]


def _html(report: dict, images: list[str]) -> str:
    m05, mt = report["at_0.5"], report["at_threshold"]
    e = html.escape
    rows = "".join(
        f"<tr><th>{e(label)}</th><td>{e(_fmt(m05[k]))}</td><td>{e(_fmt(mt[k]))}</td></tr>"
        for k, label in ROWS
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(report['title'])}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(report['title'])}</h1>",
        "<h2>Metrics</h2>",
        "<table><tr><th>metric</th><th>threshold 0.5</th>"
        f"<th>threshold {report['threshold']:.4f}</th></tr>{rows}</table>",
        _cm_html(m05),
        _cm_html(mt),
        "<p>Fake is the positive class; a sample is called Fake when P(fake) &ge; threshold. "
        "ROC AUC, average precision, EER, log loss, Brier score and ECE do not depend on it.</p>",
        *_sources_html(report),
    ]
    if report["extra"]:
        extra = "".join(
            f"<tr><th>{e(str(k))}</th><td>{e(_fmt(v))}</td></tr>" for k, v in report["extra"].items()
        )
        parts += ["<h2>Details</h2>", f"<table>{extra}</table>"]
    parts.append("<h2>Plots</h2>")
    parts += [f'<figure><img src="{e(name)}" alt="{e(name)}"></figure>' for name in images]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --- entry point ----------------------------------------------------------------------
def write_report(
    out_dir: str | Path,
    y_true,
    p_fake,
    *,
    paths: Sequence[str | Path] | None = None,
    thumbnails: np.ndarray | None = None,
    threshold: float = 0.5,
    title: str = "Evaluation",
    extra: dict | None = None,
    sources: Sequence[dict] | None = None,
) -> dict:
    """Write plots, ``metrics.json`` and ``index.html`` for one evaluation into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Created if missing; files in it with the same names are overwritten.
    y_true : array-like, shape (N,)
        0 = Real, 1 = Fake.
    p_fake : array-like, shape (N,)
        P(fake) in [0, 1].
    paths : sequence of str or Path, length N, optional
        Image files, loaded with Pillow for the sample grid when ``thumbnails`` is None.
    thumbnails : uint8 array, shape (N, H, W, 3), optional
        Images aligned with ``y_true`` for the sample grid.
    threshold : float
        The chosen decision threshold (``p_fake >= threshold`` => Fake).
    title : str
        Page title.
    extra : dict, optional
        JSON-serialisable extra information (model, dataset, temperature...), stored
        in ``metrics.json`` and shown in the page.
    sources : list of dict, optional
        :func:`~deepfake_detector.metrics.per_source_metrics` rows (at ``threshold``): stored
        as ``sources`` in ``metrics.json`` and shown as a table, one row per source.

    Returns
    -------
    dict
        What ``metrics.json`` holds: ``title``, ``threshold``, ``at_0.5`` and
        ``at_threshold`` (:func:`~deepfake_detector.metrics.compute_metrics` at 0.5 and at
        ``threshold``), ``extra``, ``sources`` (only when given) and ``files`` (names
        written, relative to ``out_dir``).
        Files: roc.png, pr.png, confusion_matrix.png, score_histogram.png,
        reliability.png, samples.png (only when ``thumbnails`` or ``paths`` is given),
        metrics.json, index.html.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m05 = compute_metrics(y_true, p_fake, 0.5)
    mt = compute_metrics(y_true, p_fake, threshold)
    y = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(p_fake, dtype=np.float64).reshape(-1)
    for name, seq in (("thumbnails", thumbnails), ("paths", paths)):
        if seq is not None and len(seq) != y.size:
            raise ValueError(f"{name} has {len(seq)} entries for {y.size} labels")

    plot_roc(out / "roc.png", y, p, m05)
    plot_pr(out / "pr.png", y, p, m05)
    plot_confusion(out / "confusion_matrix.png", mt)
    plot_histogram(out / "score_histogram.png", y, p, threshold)
    plot_reliability(out / "reliability.png", y, p, m05["ece"])
    images = list(PLOTS)
    if plot_samples(out / SAMPLES, y, p, threshold, thumbnails, paths):
        images.append(SAMPLES)

    report = {
        "title": title,
        "threshold": float(threshold),
        "at_0.5": m05,
        "at_threshold": mt,
        "extra": dict(extra or {}),
        "files": [*images, "metrics.json", "index.html"],
    }
    if sources:
        report["sources"] = [dict(r) for r in sources]
    text = json.dumps(report, indent=2, default=_jsonable)
    (out / "metrics.json").write_text(text + "\n", encoding="utf-8")
    report = json.loads(text)  # exactly what the file holds (numpy values made plain)
    (out / "index.html").write_text(_html(report, images), encoding="utf-8")
    return report
