"""benchmarks/descriptor_ceiling.py's logistic regression and fold loop, checked against first principles
(the penalised score equations) and a float64 reference on small arrays."""

from __future__ import annotations

import numpy as np

from benchmarks import descriptor_ceiling as ceiling


def test_fit_logistic_solves_the_penalised_score_equations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x @ [1.5, -1.0, 0.0] + rng.normal(size=200) > 0).astype(float)
    weights = rng.uniform(0.5, 2.0, 200)
    beta = ceiling.fit_logistic(x, y, weights, penalty=1.0)
    design = np.c_[x, np.ones(200)]
    prob = 1 / (1 + np.exp(-design @ beta))
    gradient = design.T @ (weights * (prob - y)) + np.r_[beta[:3], 0.0]   # the intercept is not penalised
    assert np.abs(gradient).max() < 1e-8
    assert beta[0] > 0.5 and beta[1] < -0.3 and abs(beta[2]) < 0.3


def test_intercept_only_fit_is_the_weighted_log_odds():
    y = np.array([1, 1, 1, 0.0])
    weights = np.array([1, 1, 1, 3.0])                                     # weighted share of positives: 0.5
    beta = ceiling.fit_logistic(np.zeros((4, 1)), y, weights, penalty=1.0)
    assert abs(beta[1]) < 1e-10 and abs(beta[0]) < 1e-12


def test_cross_validated_auc_scores_each_fold_on_its_own_crops():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(40), np.ones(40)]
    x = np.c_[y * 2.0 + rng.normal(size=80), rng.normal(size=80)]          # feature 0 separates the classes
    folds = np.tile(np.arange(4), 20)
    aucs = ceiling.cross_validated_auc(x, y, folds, penalty=1.0)
    assert len(aucs) == 4 and min(aucs) > 0.8
    noise = ceiling.cross_validated_auc(x[:, 1:], y, folds, penalty=1.0)
    assert np.mean(noise) < 0.75
