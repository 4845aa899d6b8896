"""DeLong's paired test against independent implementations, and the compare command."""

import json

import numpy as np
import pytest
from scipy import stats

from edge_thyroid import metrics

from .conftest import needs_torch


def brute_force_delong(y, a, b):
    """DeLong 1988 written out from the definition: O(m n) kernel psi, placement values, covariance."""
    def placements(s):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(), psi.mean(1), psi.mean(0)

    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = placements(a), placements(b)
    m, n = len(v10a), len(v01a)
    s10 = np.cov(np.stack([v10a, v10b]))
    s01 = np.cov(np.stack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (auc_a - auc_b) / np.sqrt(var)
    return auc_a, auc_b, np.sqrt(var), z, 2 * stats.norm.sf(abs(z))


def correlated_scores(seed, n_neg=60, n_pos=90, ties=False):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    shared = rng.normal(size=y.size)
    a = 1.2 * y + shared + 0.6 * rng.normal(size=y.size)
    b = 0.6 * y + shared + 0.9 * rng.normal(size=y.size)
    if ties:
        a, b = np.round(a), np.round(b * 2) / 2
    return y, a, b


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_delong_matches_its_definition(seed, ties):
    y, a, b = correlated_scores(seed, ties=ties)
    ours = metrics.delong_test(y, a, b)
    auc_a, auc_b, se, z, p = brute_force_delong(y, a, b)
    assert ours.auc_a == pytest.approx(auc_a, abs=1e-12)
    assert ours.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert ours.std_error == pytest.approx(se, rel=1e-9)
    assert ours.z == pytest.approx(z, rel=1e-9)
    assert ours.p_value == pytest.approx(p, rel=1e-6)


def test_delong_agrees_with_an_independent_paired_bootstrap():
    """A scipy-based paired bootstrap (AUC via Mann-Whitney U) estimates the same standard error."""
    y, a, b = correlated_scores(5, n_neg=150, n_pos=200)
    rng = np.random.default_rng(11)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)

    def auc(s, p, q):
        return stats.mannwhitneyu(s[p], s[q]).statistic / (len(p) * len(q))

    diffs = []
    for _ in range(1500):  # stratified resampling: positives and negatives drawn separately
        p, q = rng.choice(pos, pos.size), rng.choice(neg, neg.size)
        diffs.append(auc(a, p, q) - auc(b, p, q))
    boot_se = np.std(diffs, ddof=1)
    ours = metrics.delong_test(y, a, b)
    assert ours.difference > 0.05  # the comparison is not degenerate
    assert ours.std_error == pytest.approx(boot_se, rel=0.12)
    p_boot = 2 * stats.norm.sf(abs(ours.difference) / boot_se)
    assert abs(np.log10(ours.p_value) - np.log10(p_boot)) < 0.5


def test_paired_bootstrap_test_matches_delong():
    y, a, b = correlated_scores(7, n_neg=150, n_pos=200)
    boot = metrics.paired_bootstrap_test(y, a, b, resamples=1500, seed=3)
    test = metrics.delong_test(y, a, b)
    assert boot.difference == pytest.approx(test.difference, abs=1e-12)
    assert boot.std_error == pytest.approx(test.std_error, rel=0.15)
    assert boot.low < boot.difference < boot.high
    assert boot.resamples == 1500


def test_paired_bootstrap_resamples_whole_groups():
    """With every crop duplicated inside its case, a case bootstrap keeps the duplicates together and
    gives the same spread as a crop bootstrap of the undoubled data; a crop bootstrap of the doubled
    data (pretending the copies are independent) would be ~1/sqrt(2) too narrow."""
    y, a, b = correlated_scores(8, n_neg=100, n_pos=120)
    yy, aa, bb = np.repeat(y, 2), np.repeat(a, 2), np.repeat(b, 2)
    groups = np.repeat(np.arange(y.size), 2)
    by_case = metrics.paired_bootstrap_test(yy, aa, bb, groups=groups, resamples=800, seed=1)
    by_crop = metrics.paired_bootstrap_test(yy, aa, bb, resamples=800, seed=1)
    single = metrics.paired_bootstrap_test(y, a, b, resamples=800, seed=1)
    assert by_case.std_error == pytest.approx(single.std_error, rel=0.15)
    assert by_crop.std_error < 0.85 * by_case.std_error


def test_identical_models_are_not_different():
    y, a, _ = correlated_scores(4)
    test = metrics.delong_test(y, a, a)
    assert test.difference == 0 and test.p_value == 1.0


def test_hanley_mcneil_worked_example():
    """Hanley & McNeil (Radiology 1982), 109 CT images rated 1-5: published AUC 0.893 (SE 0.032 by
    their exponential approximation; DeLong's nonparametric SE is close to it)."""
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(normal.size, int), np.ones(abnormal.size, int)]
    ci = metrics.delong_auc_ci(y, np.r_[normal, abnormal].astype(float))
    assert ci.auc == pytest.approx(0.893, abs=5e-4)
    assert ci.std_error == pytest.approx(0.032, abs=0.004)


@needs_torch
def test_compare_command_on_a_bundle_and_its_checkpoint(random_bundle, random_model, tmp_path):
    from edge_thyroid.cli import main
    from edge_thyroid.export.checkpoint import CheckpointInfo, save_checkpoint

    from .test_evaluate import synthetic_csv

    csv_path = synthetic_csv(tmp_path, n_cases=8)
    ckpt = tmp_path / "random.pt"
    save_checkpoint(ckpt, random_model, CheckpointInfo(image_size=64))
    from click.testing import CliRunner

    from edge_thyroid.cli import cli

    result = CliRunner().invoke(cli, ["compare", str(random_bundle), str(ckpt), "--data", str(csv_path),
                                      "--split", "all", "--json", "--resamples", "200"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # The same model through ONNX Runtime and through torch: same ranking, no difference.
    assert report["delong"]["auc_a"] == pytest.approx(report["delong"]["auc_b"], abs=1e-9)
    assert report["n"] == 16 and report["cases"] == 8
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(random_bundle), str(tmp_path / "missing.pt"), "--data", str(csv_path)])
    assert exit_info.value.code != 0


def test_compare_draws_its_roc_plot(tmp_path):
    """--plot titles the ROC with the rows decided for the comparison (it named a variable that an earlier
    change of the split decision had removed: a NameError after both models had scored)."""
    from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path
    from edge_thyroid.evaluation import SplitSpec, compare_models

    from .test_evaluate import synthetic_csv

    bundle = data_path(DEMO_BUNDLE)
    plot = tmp_path / "roc.png"
    report = compare_models(bundle, bundle, synthetic_csv(tmp_path, n_cases=8), SplitSpec(None), resamples=50,
                            plot=plot)
    assert report.n == 16 and plot.stat().st_size > 10_000
