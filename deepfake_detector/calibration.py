"""Decision thresholds and temperature scaling, chosen on validation scores.

The conventions of :mod:`deepfake_detector.metrics` hold here: label 0 = Real, 1 = Fake,
a score is P(fake), a sample is called Fake when ``p_fake >= threshold``. These names are
also importable from :mod:`deepfake_detector.metrics`, where they lived first.
"""

from __future__ import annotations

import numpy as np

__all__ = ["T_BOUNDS", "THRESHOLD_METHODS", "apply_temperature", "calibrate_on_validation", "choose_threshold",
           "fit_temperature", "threshold_at_false_alarm", "threshold_rule"]

T_BOUNDS = (0.05, 20.0)  # temperature search interval
THRESHOLD_METHODS = ("youden", "accuracy", "eer")


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
    from .metrics import _both_classes, _check

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
    from scipy.optimize import minimize_scalar

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
    from scipy.special import expit

    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return expit(_logit_diff(logit_diff) / temperature)


def calibrate_on_validation(logits, y_true, method: str = "youden",
                            max_false_alarm: float | None = None) -> tuple[float, float, dict]:
    """Temperature, decision threshold and the metrics at that threshold, all from
    validation logits: what a checkpoint stores as ``temperature``, ``threshold`` and
    ``validation``. The threshold is chosen on the temperature-scaled probabilities: by
    :func:`choose_threshold` with ``method``, or, when ``max_false_alarm`` is given (then
    ``method`` is not used), by :func:`threshold_at_false_alarm`: the lowest threshold that
    calls at most that share of the validation reals Fake.
    """
    from .metrics import compute_metrics

    temperature = fit_temperature(logits, y_true)
    p = apply_temperature(logits, temperature)
    if max_false_alarm is None:
        threshold = choose_threshold(y_true, p, method)
    else:
        threshold = threshold_at_false_alarm(y_true, p, max_false_alarm)
    return temperature, threshold, compute_metrics(y_true, p, threshold)


def threshold_at_false_alarm(y_true, p_fake, max_false_alarm: float) -> float:
    """The lowest threshold ``t`` whose false-alarm rate (the share of reals with
    ``p_fake >= t``) is at most ``max_false_alarm``: as many fakes caught as that budget of
    real faces called Fake allows.

    As in :func:`choose_threshold`, every distinct decision ``p_fake >= t`` is considered
    (over the scores of both classes) and the threshold returned is the midpoint between
    the rule's lowest Fake score and the next score below it; applying it as
    ``p_fake >= t`` reproduces the rule exactly. Example: 20 reals scored 0.01, 0.02, ...,
    0.20 and ``max_false_alarm=0.1`` give t = 0.185 (the reals at 0.19 and 0.20 are called
    Fake: 2 of 20). Fakes do not count against the budget; where no threshold in [0, 1]
    keeps within it (reals scored exactly 1.0 with a budget too small for them) the
    result is 1.0.

    Parameters
    ----------
    y_true : array-like, shape (N,), with at least one real (0)
    p_fake : array-like, shape (N,)
    max_false_alarm : float in [0, 1]

    Returns
    -------
    float in [0, 1]
    """
    from .metrics import _check

    if not 0 <= max_false_alarm <= 1:
        raise ValueError(f"max_false_alarm must be in [0, 1], got {max_false_alarm}")
    y, p = _check(y_true, p_fake)
    n_neg = int((y == 0).sum())
    if n_neg == 0:
        raise ValueError("a false-alarm threshold needs real (label 0) samples")
    thresholds, _, fp, lower = _operating_points(y, p)
    allowed = np.flatnonzero(fp <= max_false_alarm * n_neg + 1e-9)  # fp grows down the rows
    for k in allowed[::-1]:  # the least strict allowed rule whose threshold lies in [0, 1]
        rep = _representative(thresholds[k], lower[k])
        if rep is not None:
            return rep
    return 1.0


def threshold_rule(method: str = "youden", max_false_alarm: float | None = None) -> str:
    """How a threshold was chosen, in words (model cards, reports): ``"false alarm <= 5.0 %
    of Validation reals"`` or ``"Youden's J"`` / ``"accuracy"`` / ``"EER"``."""
    if max_false_alarm is not None:
        return f"false alarm <= {100 * max_false_alarm:.1f} % of Validation reals"
    return {"youden": "Youden's J", "accuracy": "maximum accuracy", "eer": "equal error rate"}.get(method, method)

