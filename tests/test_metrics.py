"""AUC, DeLong and operating points against brute force and independent computations."""

import numpy as np
import pytest

from edge_thyroid import metrics


def brute_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    y[:2] = [0, 1]
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounding creates ties
    assert metrics.roc_auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_delong_variance_matches_its_definition():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(30, int), np.ones(20, int)]
    s = rng.normal(y * 1.0, 1.0)
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    var = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    ci = metrics.delong_auc_ci(y, s)
    assert ci.std_error == pytest.approx(np.sqrt(var), rel=1e-10)
    assert ci.low == pytest.approx(ci.auc - 1.959963984540054 * ci.std_error, rel=1e-8)


def test_operating_point_counts():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.05])
    op = metrics.operating_point(y, s, 0.5)
    assert (op.tp, op.fn, op.fp, op.tn) == (2, 1, 1, 3)
    assert op.sensitivity == pytest.approx(2 / 3) and op.specificity == pytest.approx(3 / 4)
    assert op.ppv == pytest.approx(2 / 3) and op.npv == pytest.approx(3 / 4)


def test_single_class_is_refused():
    with pytest.raises(ValueError, match="needs both classes"):
        metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
