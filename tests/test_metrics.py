"""Metrics against scikit-learn and against values worked out by hand."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.special import expit
from sklearn import metrics as skm

from deepfake_detector.calibration import apply_temperature, choose_threshold, fit_temperature
from deepfake_detector.metrics import (
    compute_metrics,
    equal_error_rate,
    expected_calibration_error,
    metrics_table,
    reliability_curve,
)


def scores(seed: int, n: int = 300, decimals: int | None = None):
    """Labels and noisy P(fake) scores with some skill; rounding makes ties."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.22), 0.0, 1.0)
    return y, (np.round(p, decimals) if decimals is not None else p)


@pytest.mark.parametrize("seed, threshold", [(0, 0.5), (1, 0.3), (2, 0.62)])
def test_metrics_match_sklearn(seed, threshold):
    y, p = scores(seed)
    m = compute_metrics(y, p, threshold)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()

    assert m["n"] == len(y) and m["n_fake"] == y.sum() and m["n_real"] == len(y) - y.sum()
    assert m["threshold"] == threshold
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert m["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert m["accuracy_real"] == pytest.approx(tn / (tn + fp))
    assert m["accuracy_fake"] == pytest.approx(tp / (tp + fn))
    # EER: FPR and FNR at the interpolated point agree with the ROC on both sides
    assert 0 < m["eer"] < 0.5 and 0 <= m["eer_threshold"] <= 1
    json.dumps(m)  # plain Python values only
    assert all(type(v) in (int, float, list) for v in m.values())


def test_confusion_matrix_layout_and_threshold_is_inclusive():
    # rows true Real/Fake, columns predicted Real/Fake; p == threshold counts as Fake
    y = [0, 0, 0, 1, 1]
    p = [0.1, 0.5, 0.7, 0.5, 0.2]
    m = compute_metrics(y, p, threshold=0.5)
    # Real: 0.1 -> Real (TN), 0.5 -> Fake (FP), 0.7 -> Fake (FP); Fake: 0.5 -> Fake (TP), 0.2 -> Real (FN)
    assert m["confusion_matrix"] == [[1, 2], [1, 1]]
    assert m["accuracy_real"] == pytest.approx(1 / 3)
    assert m["accuracy_fake"] == pytest.approx(1 / 2)
    assert m["precision"] == pytest.approx(1 / 3)


def test_eer_hand_computed():
    # Real scores 0.1, 0.3, 0.7; Fake scores 0.5, 0.9. ROC points (threshold: FPR, FNR):
    #   inf: 0,   1      0.9: 0,   1/2      0.7: 1/3, 1/2      0.5: 1/3, 0 ...
    # FPR - FNR goes from -1/6 (at 0.7) to +1/3 (at 0.5): it crosses 0 at a = (1/6) / (1/6 + 1/3) = 1/3
    # of the way. FPR stays 1/3 and FNR = 1/2 - (1/3)(1/2) = 1/3, so EER = 1/3, at the threshold
    # 0.7 + (1/3)(0.5 - 0.7) = 0.6333...
    y = [0, 0, 0, 1, 1]
    p = [0.1, 0.3, 0.7, 0.5, 0.9]
    eer, t = equal_error_rate(y, p)
    assert eer == pytest.approx(1 / 3)
    assert t == pytest.approx(0.7 - 0.2 / 3)
    m = compute_metrics(y, p)
    assert m["eer"] == pytest.approx(1 / 3) and m["eer_threshold"] == pytest.approx(0.7 - 0.2 / 3)


def test_eer_interpolates_across_a_tie():
    # Real 0.2, 0.6; Fake 0.6, 0.9. ROC points (threshold: FPR, FNR): inf: 0, 1   0.9: 0, 1/2
    # 0.6: 1/2, 0 (the tie moves both at once). FPR - FNR goes -1/2 -> +1/2: halfway, where
    # FPR = 0 + 1/2 * 1/2 = 1/4 and FNR = 1/2 - 1/2 * 1/2 = 1/4; threshold 0.9 + 1/2 (0.6 - 0.9) = 0.75.
    eer, t = equal_error_rate([0, 0, 1, 1], [0.2, 0.6, 0.6, 0.9])
    assert eer == pytest.approx(0.25)
    assert t == pytest.approx(0.75)


def test_eer_perfect_and_reversed():
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])[0] == pytest.approx(0.0)
    assert equal_error_rate([0, 0, 1, 1], [0.8, 0.9, 0.1, 0.2])[0] == pytest.approx(1.0)


def test_ece_hand_computed():
    # 4 bins: (0, .25], (.25, .5], (.5, .75], (.75, 1]; confidence = max(p, 1 - p), Fake iff p >= .5
    #   p     y  pred  conf  correct  bin
    #   0.9   1  1     0.9   yes      (.75, 1]
    #   0.8   0  1     0.8   no       (.75, 1]
    #   0.3   0  0     0.7   yes      (.5, .75]
    #   0.4   1  0     0.6   no       (.5, .75]
    #   0.6   1  1     0.6   yes      (.5, .75]
    #   0.05  0  0     0.95  yes      (.75, 1]
    # bin (.5, .75]: acc 2/3, conf (0.7 + 0.6 + 0.6) / 3 = 0.6333 -> gap 0.1 / 3
    # bin (.75, 1]:  acc 2/3, conf (0.9 + 0.8 + 0.95) / 3 = 0.8833 -> gap 0.65 / 3
    # ECE = 3/6 * 0.1/3 + 3/6 * 0.65/3 = 0.75 / 6 = 0.125
    y = [1, 0, 0, 1, 1, 0]
    p = [0.9, 0.8, 0.3, 0.4, 0.6, 0.05]
    assert expected_calibration_error(y, p, n_bins=4) == pytest.approx(0.125)
    rc = reliability_curve(y, p, n_bins=4)
    assert rc["count"].tolist() == [0, 0, 3, 3]
    assert rc["accuracy"][2:] == pytest.approx([2 / 3, 2 / 3])
    assert rc["confidence"][2:] == pytest.approx([1.9 / 3, 2.65 / 3])
    assert np.isnan(rc["accuracy"][:2]).all()


def test_ece_zero_when_calibrated_per_bin():
    # four at p = 0.75 (predicted Fake, confidence 0.75), three of them Fake: acc 0.75 = conf -> ECE 0;
    # p = 0.75 (Fake, right) and 0.25 (Real, right): both at confidence 0.75, acc 1 -> ECE 0.25
    assert expected_calibration_error([1, 1, 1, 0], [0.75] * 4, n_bins=15) == pytest.approx(0.0)
    assert expected_calibration_error([1, 0], [0.75, 0.25], n_bins=15) == pytest.approx(0.25)


def brute_force(y, p, t):
    pred = p >= t
    tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
    fn, tn = np.sum(~pred & (y == 1)), np.sum(~pred & (y == 0))
    tpr, fpr = tp / (tp + fn), fp / (fp + tn)
    return {"youden": tpr - fpr, "accuracy": (tp + tn) / len(y), "eer": -abs(fpr - (1 - tpr))}


@pytest.mark.parametrize("method", ["youden", "accuracy", "eer"])
@pytest.mark.parametrize("seed, decimals", [(3, None), (4, 2), (5, 1)])
def test_choose_threshold_reaches_brute_force_optimum(method, seed, decimals):
    y, p = scores(seed, n=200, decimals=decimals)
    candidates = np.r_[np.unique(p), np.nextafter(p.max(), 2.0)]  # every distinct rule p >= t
    best = max(brute_force(y, p, t)[method] for t in candidates)
    t = choose_threshold(y, p, method)
    assert isinstance(t, float) and 0.0 <= t <= 1.0
    assert brute_force(y, p, t)[method] == pytest.approx(best, abs=1e-12)
    assert choose_threshold(y, p, method) == t  # deterministic


def test_choose_threshold_separable_and_errors():
    y, p = [0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8]
    t = choose_threshold(y, p, "youden")
    assert 0.3 < t <= 0.6  # separates the classes perfectly
    assert choose_threshold([0, 0, 0], [0.2, 0.4, 0.9], "accuracy") > 0.9
    with pytest.raises(ValueError):
        choose_threshold([1, 1], [0.2, 0.4], "youden")
    with pytest.raises(ValueError):
        choose_threshold(y, p, "f1")


def nll(z, y, t=1.0):
    return skm.log_loss(y, expit(z / t), labels=[0, 1])


def test_fit_temperature_fixes_overconfidence():
    rng = np.random.default_rng(7)
    n = 20000
    z = rng.normal(0.0, 2.0, n)  # a calibrated model's logit differences
    y = (rng.random(n) < expit(z)).astype(int)  # labels drawn from its own probabilities
    logits = 5.0 * z  # the same model, five times over-confident
    fit, held = slice(0, n // 2), slice(n // 2, n)

    t = fit_temperature(logits[fit], y[fit])
    assert 4.0 < t < 6.25
    assert nll(logits[held], y[held], t) < nll(logits[held], y[held]) - 0.1
    assert apply_temperature(logits[held], t) == pytest.approx(expit(logits[held] / t))

    two = np.stack([np.zeros(n), logits], axis=1)[fit] + 3.0  # (N, 2): same differences
    assert fit_temperature(two, y[fit]) == pytest.approx(t, rel=1e-4)


def test_fit_temperature_stays_in_bounds():
    y = np.array([0, 1] * 50)
    z = np.where(y == 1, 1.0, -1.0)  # separable: NLL keeps falling as T shrinks
    assert 0.05 <= fit_temperature(z, y) < 0.06


def test_single_class_gives_none_without_raising():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for label in (0, 1):
            m = compute_metrics([label] * 5, [0.1, 0.4, 0.5, 0.7, 0.9])
            assert m["roc_auc"] is None and m["average_precision"] is None
            assert m["eer"] is None and m["eer_threshold"] is None
            assert m["accuracy"] == pytest.approx(3 / 5 if label else 2 / 5)
            assert (m["accuracy_real"] is None) == (label == 1)
            json.dumps(m)


def test_bad_input_raises():
    with pytest.raises(ValueError):
        compute_metrics([0, 1], [0.5])
    with pytest.raises(ValueError):
        compute_metrics([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError):
        compute_metrics([0, 1], [0.5, 1.5])


def test_metrics_table_one_row_per_name():
    rows = [compute_metrics(*scores(s)) for s in range(3)] + [compute_metrics([1, 1], [0.3, 0.8])]
    names = ["dfdc-val", "celeb-df", "ff++", "fakes-only"]
    table = metrics_table(rows, names)
    lines = table.splitlines()
    assert len(lines) == 2 + len(names)  # header, rule, one line per dataset
    for line, name, row in zip(lines[2:], names, rows, strict=True):
        assert line.startswith(name)
        assert f"{row['accuracy']:.4f}" in line
    assert lines[0].split() == [
        "name",
        "n",
        "accuracy",
        "roc_auc",
        "average_precision",
        "eer",
        "f1",
        "log_loss",
        "ece",
    ]
    assert lines[-1].split()[3:6] == ["-", "-", "-"]  # roc_auc, average_precision, eer undefined
    # fixed width: every column ends at the same place on every line
    ends = {len(line) for line in lines}
    assert len(ends) == 1
    with pytest.raises(ValueError):
        metrics_table(rows, names[:2])
