"""The fuse command's selection rules on hand-made score tables: the stack's regularisation is
chosen by the mean per-source validation AUC, cross-fitted, like the model itself."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from deepfake_detector.fuse import STACK_C, _cross_fitted, choose_stack_c


def _table(n_noise: int, n: int, seed: int = 0):
    """Two sources, each with reals and fakes: one feature that ranks them (2 sd apart) beside
    ``n_noise`` features of pure noise."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    src = np.repeat(["a", "b"], n // 2)
    x = rng.normal(size=(n, 1 + n_noise))
    x[:, 0] += 2.0 * y
    cells = np.array([f"{s}/{c}" for s, c in zip(src, y)])
    return x, y, list(src), list(src), cells


def test_the_stack_is_regularised_more_where_noise_features_would_be_fitted():
    x, y, src, roots, cells = _table(n_noise=60, n=100)
    C, means, scores = choose_stack_c(x, y, src, roots, cells, folds=5, seed=0)
    assert set(means) == set(STACK_C)
    assert C < 1.0 and means[C] > means[1.0] + 0.02  # 60 noise features over 80 rows a fold: C = 1 fits the noise
    # the figure it chose by is the cross-fitted per-source AUC, computed here independently
    z = _cross_fitted(x, y, cells, 5, 0, C)
    np.testing.assert_array_equal(scores, z)  # and the scores it returns are those
    src = np.array(src)
    by_hand = np.mean([roc_auc_score(y[src == s], z[src == s]) for s in ("a", "b")])
    assert means[C] == pytest.approx(by_hand, abs=1e-12)


def test_a_clean_table_keeps_the_weakest_regularisation():
    # one feature that separates perfectly: every C ranks every row right, and the tie goes to the first
    y = np.tile([0, 1], 20)
    x = (y * 2.0 - 1.0)[:, None] + np.linspace(0, 0.1, 40)[:, None]
    src = ["a"] * 20 + ["b"] * 20
    cells = np.array([f"{s}/{c}" for s, c in zip(src, y)])
    C, means, _ = choose_stack_c(x, y, src, src, cells)
    assert C == STACK_C[0] and all(m == 1.0 for m in means.values())
