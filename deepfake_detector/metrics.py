"""Binary detection metrics, per data source too; threshold choice and temperature scaling
are in :mod:`deepfake_detector.calibration`, which builds on these.

Conventions used throughout: label 0 = Real, 1 = Fake; a score is P(fake) in [0, 1];
a sample is predicted Fake when ``p_fake >= threshold``. Fake is the positive class
(precision, recall, F1, ROC, PR). Every value returned by :func:`compute_metrics` is a
plain Python ``int``/``float``/``None``/``list`` so the dict can go straight to JSON.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from .data.datasets import CLASS_NAMES  # noqa: F401  the one definition (data -> models -> metrics); report uses it

PROB_EPS = 1e-7  # log-loss clipping: probabilities live in [PROB_EPS, 1 - PROB_EPS]
TABLE_COLUMNS = ("n", "accuracy", "roc_auc", "average_precision", "eer", "f1", "log_loss", "ece")


# --- input checks ---------------------------------------------------------------------
def _check(y_true, p_fake) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(y, p)`` as 1-D int64 / float64 arrays of the same length."""
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(p_fake, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but p_fake has {p.size}")
    if y.size == 0:
        raise ValueError("no samples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 (Real) and 1 (Fake)")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("p_fake must be finite probabilities in [0, 1]")
    return y.astype(np.int64), p


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.size


# --- main metrics ---------------------------------------------------------------------
def equal_error_rate(y_true, p_fake) -> tuple[float | None, float | None]:
    """Equal error rate from the ROC curve, linearly interpolated between ROC points.

    Parameters
    ----------
    y_true : array-like, shape (N,)
        0 = Real, 1 = Fake.
    p_fake : array-like, shape (N,)
        P(fake) scores.

    Returns
    -------
    eer, threshold : float or None
        The error rate where FPR = FNR (FNR = 1 - TPR) and the score threshold there,
        both interpolated linearly between the two consecutive ROC points (all distinct
        scores, from ``sklearn.metrics.roc_curve``) where FPR - FNR changes sign. The
        threshold is clipped to [0, 1] (the ROC's "nothing is fake" point has threshold
        +inf). ``(None, None)`` when only one class is present.
    """
    y, p = _check(y_true, p_fake)
    if not _both_classes(y):
        return None, None
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    thr = np.minimum(thr, 1.0)
    fnr = 1.0 - tpr
    diff = fpr - fnr  # -1 at the first ROC point, +1 at the last: increasing
    i = int(np.argmax(diff >= 0))
    if diff[i] == 0 or i == 0:
        return float(fpr[i]), float(thr[i])
    a = diff[i - 1] / (diff[i - 1] - diff[i])  # in (0, 1): where the segment crosses 0
    eer = fpr[i - 1] + a * (fpr[i] - fpr[i - 1])
    t = thr[i - 1] + a * (thr[i] - thr[i - 1])
    return float(eer), float(t)


def reliability_curve(y_true, p_fake, n_bins: int = 15) -> dict:
    """Per-bin confidence and accuracy of the predicted class (for a reliability diagram).

    The predicted class is Fake when ``p_fake >= 0.5`` (the argmax, with ties to Fake);
    its confidence is ``max(p_fake, 1 - p_fake)`` in [0.5, 1]. The interval [0, 1] is cut
    into ``n_bins`` equal-width bins ``(lo, hi]`` (the first also holds 0); confidences
    are never below 0.5, so the bins under 0.5 stay empty.

    Parameters
    ----------
    y_true : array-like, shape (N,)
    p_fake : array-like, shape (N,)
    n_bins : int

    Returns
    -------
    dict with numpy arrays
        ``edges`` (n_bins + 1,), ``confidence`` (n_bins,) mean confidence per bin,
        ``accuracy`` (n_bins,) fraction of correct predictions per bin (both NaN for an
        empty bin) and ``count`` (n_bins,) int samples per bin.
    """
    y, p = _check(y_true, p_fake)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    pred = (p >= 0.5).astype(np.int64)
    conf = np.where(pred == 1, p, 1.0 - p)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")  # edges[b] < conf <= edges[b+1]
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(idx, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "confidence": confidence, "accuracy": accuracy, "count": count}


def expected_calibration_error(y_true, p_fake, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017) over the confidence of the predicted class.

    ``ECE = sum_b |B_b| / N * |acc_b - conf_b|`` where, for each of the ``n_bins``
    equal-width bins ``B_b`` of :func:`reliability_curve`, ``acc_b`` is the fraction of
    its samples whose predicted class (Fake iff ``p_fake >= 0.5``) is right and ``conf_b``
    their mean confidence ``max(p_fake, 1 - p_fake)``. Empty bins add nothing.

    Parameters
    ----------
    y_true : array-like, shape (N,)
    p_fake : array-like, shape (N,)
    n_bins : int

    Returns
    -------
    float in [0, 1]
    """
    rc = reliability_curve(y_true, p_fake, n_bins)
    used = rc["count"] > 0
    w = rc["count"][used] / rc["count"].sum()
    return float(np.sum(w * np.abs(rc["accuracy"][used] - rc["confidence"][used])))


def compute_metrics(y_true, p_fake, threshold: float = 0.5, n_bins: int = 15) -> dict:
    """All evaluation metrics of P(fake) scores against labels.

    Parameters
    ----------
    y_true : array-like, shape (N,)
        0 = Real, 1 = Fake.
    p_fake : array-like, shape (N,)
        P(fake) in [0, 1].
    threshold : float
        A sample is predicted Fake when ``p_fake >= threshold`` (used by accuracy,
        balanced accuracy, precision, recall, F1, per-class accuracy, confusion matrix).
    n_bins : int
        Number of ECE bins.

    Returns
    -------
    dict
        ``n, n_real, n_fake`` (int), ``threshold``, ``accuracy``, ``balanced_accuracy``
        (mean of the per-class accuracies present), ``precision``, ``recall``, ``f1`` (Fake
        positive; 0 when undefined), ``roc_auc``, ``average_precision``, ``eer``,
        ``eer_threshold`` (None with a single class), ``log_loss`` (probabilities clipped
        to [1e-7, 1 - 1e-7]), ``brier`` (mean squared error of P(fake)), ``ece`` (see
        :func:`expected_calibration_error`; threshold-independent), ``accuracy_real``,
        ``accuracy_fake`` (None when that class is absent) and ``confusion_matrix``
        ``[[TN, FP], [FN, TP]]`` (rows true Real/Fake, columns predicted Real/Fake).
    """
    y, p = _check(y_true, p_fake)
    pred = (p >= threshold).astype(np.int64)
    n, n_fake = int(y.size), int(y.sum())
    (tn, fp), (fn, tp) = confusion_matrix(y, pred, labels=[0, 1]).tolist()
    acc_real = tn / (tn + fp) if n - n_fake else None
    acc_fake = tp / (tp + fn) if n_fake else None
    present = [a for a in (acc_real, acc_fake) if a is not None]
    prec, rec, f1, _ = precision_recall_fscore_support(
        y, pred, average="binary", pos_label=1, zero_division=0
    )
    both = _both_classes(y)
    eer, eer_t = equal_error_rate(y, p)
    pc = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
    log_loss = -np.mean(y * np.log(pc) + (1 - y) * np.log(1.0 - pc))
    return {
        "n": n,
        "n_real": n - n_fake,
        "n_fake": n_fake,
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(np.mean(present)),
        "precision": float(prec),
        "recall": float(rec),
        "f1": float(f1),
        "roc_auc": float(roc_auc_score(y, p)) if both else None,
        "average_precision": float(average_precision_score(y, p)) if both else None,
        "eer": eer,
        "eer_threshold": eer_t,
        "log_loss": float(log_loss),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p, n_bins),
        "accuracy_real": None if acc_real is None else float(acc_real),
        "accuracy_fake": None if acc_fake is None else float(acc_fake),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


# --- per source -------------------------------------------------------------------------
def per_source_metrics(labels, p_fake, sources, threshold: float, roots=None) -> list[dict]:
    """Metrics of each data source (a generator, a photo collection, a dataset) separately.

    Parameters
    ----------
    labels : array-like, shape (N,)
        0 = Real, 1 = Fake.
    p_fake : array-like, shape (N,)
        P(fake) in [0, 1].
    sources : sequence of str, length N
        Sample i's source (``Sample.source``).
    threshold : float
        A sample is called Fake when ``p_fake >= threshold``.
    roots : sequence of str, length N, optional
        Sample i's dataset root (``Sample.root``); None: all samples are one root.

    Returns
    -------
    list of dict, one per source in order of first appearance: ``source``, ``n``,
    ``n_real``, ``n_fake``, ``roc_auc``, ``auc_against``, ``fake_recall`` (the share of the
    source's fakes with ``p_fake >= threshold``; None without fakes) and ``false_alarm``
    (the share of its reals with ``p_fake >= threshold``; None without reals).

    The AUC of a source holding both classes is its own (``auc_against="own"``). A source
    of a single class (a set of real photos, one generator's fakes: every source of
    ``faces-wild``) has no AUC of its own: its samples are ranked against the samples of
    the other class *from the same root* (``roots``), so a generator is measured against
    the real photos it was collected beside, not against another dataset's reals
    (``auc_against="root"``; ``"all"`` when ``roots`` is None: the other class of all the
    samples). None when there is nothing to rank against.
    """
    y, p = _check(labels, p_fake)
    src = np.asarray([str(s) for s in sources], dtype=object)
    if src.shape != y.shape:
        raise ValueError(f"{src.size} sources for {y.size} samples")
    rt = None if roots is None else np.asarray([str(r) for r in roots], dtype=object)
    if rt is not None and rt.shape != y.shape:
        raise ValueError(f"{rt.size} roots for {y.size} samples")
    rows = []
    for name in dict.fromkeys(src.tolist()):
        mine = src == name
        ys, ps = y[mine], p[mine]
        n_fake = int(ys.sum())
        n_real = int(ys.size - n_fake)
        if n_real and n_fake:
            auc, against = float(roc_auc_score(ys, ps)), "own"
        else:
            other = (y != ys[0]) & ~mine
            if rt is not None:
                other &= np.isin(rt, np.unique(rt[mine]))
            auc, against = None, None
            if other.any():
                yy = np.r_[ys, y[other]]
                auc, against = float(roc_auc_score(yy, np.r_[ps, p[other]])), "all" if rt is None else "root"
        rows.append({
            "source": name, "n": int(ys.size), "n_real": n_real, "n_fake": n_fake, "roc_auc": auc,
            "auc_against": against,
            "fake_recall": float(np.mean(ps[ys == 1] >= threshold)) if n_fake else None,
            "false_alarm": float(np.mean(ps[ys == 0] >= threshold)) if n_real else None,
        })
    return rows


def source_selection(rows: Sequence[dict]) -> dict:
    """What model selection reads from :func:`per_source_metrics` rows: ``mean_auc`` (the
    mean ROC-AUC over the sources that have one), ``worst_source`` and ``worst_auc`` (the
    lowest; the first of equals). All None when no source has an AUC. With one source
    holding both classes, ``mean_auc`` is the pooled ROC-AUC."""
    scored = [r for r in rows if r.get("roc_auc") is not None]
    if not scored:
        return {"mean_auc": None, "worst_source": None, "worst_auc": None}
    worst = min(scored, key=lambda r: r["roc_auc"])
    return {"mean_auc": float(np.mean([r["roc_auc"] for r in scored])), "worst_source": worst["source"],
            "worst_auc": float(worst["roc_auc"])}


SOURCE_COLUMNS = (("source", "source"), ("n", "n"), ("n_real", "real"), ("n_fake", "fake"),
                  ("roc_auc", "roc_auc"), ("fake_recall", "fake_recall"), ("false_alarm", "false_alarm"))


def source_table(rows: Sequence[dict]) -> str:
    """:func:`per_source_metrics` rows as a fixed-width plain-text table (no trailing newline)."""
    header = [label for _, label in SOURCE_COLUMNS]
    body = [[str(r["source"]), *(_cell(r.get(k)) for k, _ in SOURCE_COLUMNS[1:])] for r in rows]
    return _fixed_width(header, body)


# --- text table -------------------------------------------------------------------------
def _cell(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return f"{float(v):.4f}"


def metrics_table(rows: Sequence[dict], names: Sequence[str]) -> str:
    """A fixed-width plain-text table of the main metrics, one row per dataset.

    Parameters
    ----------
    rows : list of dict, length K
        :func:`compute_metrics` outputs (missing keys and None are shown as "-").
    names : list of str, length K
        Row labels (dataset names).

    Returns
    -------
    str
        A header line, a rule and K lines (no trailing newline); columns: name, n,
        accuracy, roc_auc, average_precision, eer, f1, log_loss, ece.
    """
    if len(rows) != len(names):
        raise ValueError(f"{len(rows)} rows but {len(names)} names")
    header = ["name", *TABLE_COLUMNS]
    body = [
        [str(name), *(_cell(r.get(c)) for c in TABLE_COLUMNS)] for r, name in zip(rows, names, strict=True)
    ]
    return _fixed_width(header, body)


def _fixed_width(header: list[str], body: list[list[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line):
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)]
    return "\n".join(lines)
