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


# --- calibration at a chosen mix of the classes ------------------------------------------------------------

def test_calibration_with_a_prior_equals_replicating_the_smaller_class():
    """Equal class weights are exactly the unweighted figures on a data set where each benign row is repeated
    until the classes are the same size (an integer ratio here, so the reference is exact)."""
    rng = np.random.default_rng(3)
    labels = np.array([0] * 4 + [1] * 12)
    scores = rng.uniform(0.02, 0.98, labels.size)
    replicated_labels = np.concatenate([np.repeat(labels[labels == 0], 3), labels[labels == 1]])
    replicated_scores = np.concatenate([np.repeat(scores[labels == 0], 3), scores[labels == 1]])
    weighted = metrics.calibration(labels, scores, bins=5, prior=0.5)
    reference = metrics.calibration(replicated_labels, replicated_scores, bins=5)
    assert weighted["brier"] == pytest.approx(reference["brier"], abs=1e-12)
    assert weighted["ece"] == pytest.approx(reference["ece"], abs=1e-12)
    for a, b in zip(weighted["bins"], reference["bins"]):
        assert a["mean_predicted"] == pytest.approx(b["mean_predicted"], abs=1e-12)
        assert a["fraction_malignant"] == pytest.approx(b["fraction_malignant"], abs=1e-12)
    assert weighted["prior"] == 0.5 and metrics.calibration(labels, scores)["prior"] is None
    # the data's own mix is not the equal one: the two must differ on these scores
    assert metrics.calibration(labels, scores, bins=5)["ece"] != pytest.approx(weighted["ece"])


def test_prior_weights_give_the_malignant_rows_their_share():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    for prior in (0.2, 0.5, 0.9):
        w = metrics.prior_weights(labels, prior)
        assert w[labels == 1].sum() / w.sum() == pytest.approx(prior, abs=1e-12)
        assert w.sum() == pytest.approx(labels.size)
    assert np.all(metrics.prior_weights(labels, None) == 1)
    with pytest.raises(ValueError, match="needs both classes"):
        metrics.prior_weights(np.ones(4), 0.5)
    with pytest.raises(ValueError, match=r"expected a share of malignant rows in \(0, 1\)"):
        metrics.prior_weights(labels, 1.0)


def test_shift_prior_is_bayes_rule():
    """p calibrated at one share of malignant nodules, read at another: against the posterior computed from
    the likelihood ratio in float64, back again, and ranks unchanged."""
    p = np.array([0.01, 0.2, 0.5, 0.593, 0.9, 0.999])
    for to_prior, from_prior in ((0.85, 0.5), (0.1, 0.5), (0.3, 0.7)):
        ratio = (to_prior / (1 - to_prior)) / (from_prior / (1 - from_prior))
        reference = p * ratio / (p * ratio + (1 - p))
        shifted = metrics.shift_prior(p, to_prior, from_prior)
        np.testing.assert_allclose(shifted, reference, rtol=0, atol=1e-12)
        np.testing.assert_allclose(metrics.shift_prior(shifted, from_prior, to_prior), p, rtol=0, atol=1e-9)
        assert np.all(np.diff(shifted) > 0)
    np.testing.assert_allclose(metrics.shift_prior(p, 0.5), p, atol=1e-12)
    with pytest.raises(ValueError, match="to_prior 0"):
        metrics.shift_prior(p, 0.0)
