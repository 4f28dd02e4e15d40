"""Binary detection metrics, threshold choice and temperature scaling.

Conventions used throughout: label 0 = Real, 1 = Fake; a score is P(fake) in [0, 1];
a sample is predicted Fake when ``p_fake >= threshold``. Fake is the positive class
(precision, recall, F1, ROC, PR). Every value returned by :func:`compute_metrics` is a
plain Python ``int``/``float``/``None``/``list`` so the dict can go straight to JSON.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
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
T_BOUNDS = (0.05, 20.0)  # temperature search interval
THRESHOLD_METHODS = ("youden", "accuracy", "eer")
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


# --- threshold choice -----------------------------------------------------------------
def _operating_points(y: np.ndarray, p: np.ndarray):
    """Every distinct decision ``p >= t`` as counts, most to least strict.

    Returns ``thresholds`` (K,), ``tp`` (K,), ``fp`` (K,) and ``lower`` (K,): row k
    predicts Fake for exactly the scores ``>= thresholds[k]``; ``lower[k]`` is the next
    distinct score below it (-1 for the smallest). Row 0 is "nothing is fake"
    (threshold ``+inf``).
    """
    s = np.unique(p)[::-1]  # distinct scores, descending
    pos = np.searchsorted(np.sort(p[y == 1]), s, side="left")
    neg = np.searchsorted(np.sort(p[y == 0]), s, side="left")
    tp = np.r_[0, int(y.sum()) - pos]
    fp = np.r_[0, int((y == 0).sum()) - neg]
    thresholds = np.r_[np.inf, s]
    lower = np.r_[s, -1.0]
    return thresholds, tp, fp, lower


def _representative(t: float, lower: float) -> float | None:
    """A threshold in [0, 1] with the same decisions as ``t``: the midpoint to ``lower``."""
    if not np.isfinite(t):  # "nothing is fake": any value above the top score
        if lower >= 1.0:
            return None
        mid = (lower + 1.0) / 2
        return float(mid) if mid > lower else 1.0
    if lower < 0:
        return float(t / 2)  # "everything is fake": any value in (-, smallest score]
    mid = (t + lower) / 2
    return float(mid) if lower < mid <= t else float(t)


def choose_threshold(y_true, p_fake, method: str = "youden") -> float:
    """Pick the decision threshold on validation scores.

    Every distinct decision rule ``p_fake >= t`` is scored and the best one kept:

    - ``"youden"``: maximum of Youden's J = TPR - FPR;
    - ``"accuracy"``: maximum accuracy;
    - ``"eer"``: minimum |FPR - FNR| (the ROC point closest to the equal error rate).

    Ties go to the strictest rule (highest threshold). The threshold returned is the
    midpoint between the rule's lowest Fake score and the next score below it (so it
    generalises better than the score itself), or a value above the top score for the
    "nothing is fake" rule; applying it as ``p_fake >= t`` reproduces the rule exactly.

    Parameters
    ----------
    y_true : array-like, shape (N,)
    p_fake : array-like, shape (N,)
    method : {"youden", "accuracy", "eer"}

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    ValueError
        Unknown method, or "youden"/"eer" with a single class present.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {THRESHOLD_METHODS}")
    y, p = _check(y_true, p_fake)
    if method != "accuracy" and not _both_classes(y):
        raise ValueError(f"method {method!r} needs both classes in y_true")
    thresholds, tp, fp, lower = _operating_points(y, p)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if method == "accuracy":
        score = (tp + (n_neg - fp)) / y.size
    else:
        tpr, fpr = tp / n_pos, fp / n_neg
        score = tpr - fpr if method == "youden" else -np.abs(fpr - (1.0 - tpr))
    reps = [_representative(t, lo) for t, lo in zip(thresholds, lower, strict=True)]
    score = np.where([r is None for r in reps], -np.inf, score)  # unreachable within [0, 1]
    return reps[int(np.argmax(score))]


# --- temperature scaling --------------------------------------------------------------
def _logit_diff(logits) -> np.ndarray:
    """``(N, 2)`` logits -> ``z_fake - z_real`` (N,); ``(N,)`` is taken as differences."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2 and z.shape[1] == 2:
        return z[:, 1] - z[:, 0]
    if z.ndim == 1:
        return z
    raise ValueError(f"expected logits of shape (N, 2) or (N,), got {z.shape}")


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean -log P(true class) with P(fake) = sigmoid(z / T), computed stably."""
    signed = np.where(y == 1, z, -z) / temperature
    return float(np.mean(np.logaddexp(0.0, -signed)))


def fit_temperature(logits, y_true) -> float:
    """Temperature scaling (Guo et al. 2017): the T that minimises validation NLL.

    P(fake) = sigmoid((z_fake - z_real) / T). The search is a bounded 1-D minimisation
    over log T (``scipy.optimize.minimize_scalar``) with T in [0.05, 20].

    Parameters
    ----------
    logits : array-like, shape (N, 2) or (N,)
        Raw two-class logits (columns Real, Fake) or the differences z_fake - z_real.
    y_true : array-like, shape (N,)

    Returns
    -------
    float
        The fitted temperature (T > 1 softens over-confident scores).
    """
    z = _logit_diff(logits)
    y = np.asarray(y_true).reshape(-1)
    if y.shape != z.shape or y.size == 0:
        raise ValueError(f"need one label per logit row: {y.size} labels, {z.size} rows")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    lo, hi = np.log(T_BOUNDS)
    res = minimize_scalar(
        lambda s: _nll(z, y, np.exp(s)), bounds=(lo, hi), method="bounded", options={"xatol": 1e-6}
    )
    return float(np.exp(res.x))


def apply_temperature(logit_diff, temperature: float) -> np.ndarray:
    """P(fake) = sigmoid(logit_diff / T).

    Parameters
    ----------
    logit_diff : array-like, shape (N,) or (N, 2)
        z_fake - z_real, or raw (N, 2) logits.
    temperature : float
        T > 0.

    Returns
    -------
    np.ndarray, shape (N,), float64
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return expit(_logit_diff(logit_diff) / temperature)


def calibrate_on_validation(logits, y_true, method: str = "youden") -> tuple[float, float, dict]:
    """Temperature, decision threshold and the metrics at that threshold, all from
    validation logits: what a checkpoint stores as ``temperature``, ``threshold`` and
    ``validation``. The threshold is chosen on the temperature-scaled probabilities.
    """
    temperature = fit_temperature(logits, y_true)
    p = apply_temperature(logits, temperature)
    threshold = choose_threshold(y_true, p, method)
    return temperature, threshold, compute_metrics(y_true, p, threshold)


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
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line):
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)]
    return "\n".join(lines)
