"""benchmarks/learning_curve.py: the slope per doubling of cases, the rule written before the runs, and its
extension, checked against NumPy on small made-up curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks import learning_curve as lc


def test_the_slope_is_numpys_least_squares_line_on_log2_cases():
    cases, aucs = np.array([44, 87, 130, 173]), np.array([0.61, 0.66, 0.64, 0.70])
    intercept, slope = lc.fold_slope(cases, aucs)
    reference = np.polyfit(np.log2(cases.astype(np.float64)), aucs, 1)
    assert slope == pytest.approx(reference[0], abs=1e-12) and intercept == pytest.approx(reference[1], abs=1e-12)


def test_a_slope_needs_two_case_counts():
    with pytest.raises(ValueError, match="two or more case counts"):
        lc.fold_slope(np.array([50, 50]), np.array([0.6, 0.7]))


def test_the_line_reaches_the_target_where_log2_says():
    assert lc.cases_to_reach(0.0, 0.1, 0.8) == pytest.approx(2 ** 8)
    assert lc.cases_to_reach(0.7, 0.0, 0.85) is None and lc.cases_to_reach(0.7, -0.01, 0.85) is None


@pytest.mark.parametrize("slopes, verdict", [([0.02, 0.01, 0.03, -0.01], True), ([0.02, 0.01, -0.03, -0.01], False),
                                             ([0.05, 0.05, 0.05, -0.16], False), ([0.01] * 4, True)])
def test_the_rule_needs_a_positive_mean_and_three_of_four_folds(slopes, verdict):
    assert lc.more_cases_help(slopes) is verdict


def _points(slopes: list[float]) -> list[dict]:
    points = []
    for fold, slope in enumerate(slopes):
        for share, cases in ((0.25, 44), (0.5, 87), (1.0, 173)):
            points.append({"share": share, "fold": fold, "cases": cases, "auc": 0.5 + slope * np.log2(cases / 44),
                           "auc_train_side": 0.9, "tirads2_benign_rate": None, "cam_in_mask": 0.7})
    return points


def test_summary_reports_mean_and_spread_over_folds_and_extends_only_when_the_rule_holds():
    summary = lc.summarise(_points([0.04, 0.05, 0.06, 0.05]), target=0.85)
    assert summary["slope_per_doubling"]["mean"] == pytest.approx(0.05, abs=1e-9)
    assert summary["slope_per_doubling"]["sd"] == pytest.approx(np.std([0.04, 0.05, 0.06, 0.05], ddof=1), abs=1e-9)
    assert [s["auc"]["mean"] for s in summary["shares"]] == pytest.approx(
        [0.5, 0.5 + 0.05 * np.log2(87 / 44), 0.5 + 0.05 * np.log2(173 / 44)])
    assert summary["more_cases_help"] and summary["extension"]["cases_at_target"] == pytest.approx(44 * 2 ** 7, rel=1e-9)
    flat = lc.summarise(_points([0.01, -0.02, 0.0, -0.01]), target=0.85)
    assert not flat["more_cases_help"] and "extension" not in flat


def _rows(*rows: tuple[int, int, float]) -> dict:
    return {"per_fold": [{"fold": f, "seed": s, "auc": a, "auc_train_side": 0.9} for f, s, a in rows]}


def test_read_points_averages_the_seeds_asked_for_and_fills_whole_side_case_counts(tmp_path):
    run = tmp_path / "cv.json"
    run.write_text(json.dumps(_rows((0, 0, 0.7), (0, 1, 0.6), (0, 2, 0.1))))
    points = lc.read_points([(1.0, run)], seeds=[0], full_cases={0: 173})
    assert [(p["fold"], p["cases"], p["auc"]) for p in points] == [(0, 173, 0.7)]
    points = lc.read_points([(1.0, run)], seeds=[0, 1], full_cases={0: 173})
    assert points[0]["auc"] == pytest.approx(0.65, abs=1e-12)


def test_a_fold_without_every_seed_is_refused(tmp_path):
    import click

    run = tmp_path / "cv.json"
    run.write_text(json.dumps(_rows((0, 0, 0.7), (0, 1, 0.6), (1, 0, 0.7))))
    with pytest.raises(click.BadParameter, match=r"fold 1 lacks seeds \[1\]"):
        lc.read_points([(1.0, run)], seeds=[0, 1], full_cases={0: 173, 1: 170})


def test_a_run_of_another_share_is_refused(tmp_path):
    import click

    run = tmp_path / "cv.json"
    run.write_text(json.dumps({"per_fold": [{"fold": 0, "seed": 0, "train_cases": 0.5, "auc": 0.7,
                                             "auc_train_side": 0.9, "train_labelled_cases": 87}]}))
    with pytest.raises(click.BadParameter, match="trained on share 0.5, not 0.25"):
        lc.read_points([(0.25, run)], seeds=[0], full_cases={0: 173})


@pytest.mark.parametrize("bad", ["0.5", "x=a.json", "1.5=a.json", "0=a.json"])
def test_a_malformed_run_is_a_one_line_usage_error(tmp_path, bad):
    data = tmp_path / "pack.npz"
    data.write_bytes(b"")
    result = CliRunner().invoke(lc.main, ["--data", str(data), "--run", bad])
    assert result.exit_code == 2 and "expected SHARE=JSON" in result.output


def test_a_share_missing_a_fold_is_refused():
    points = [p for p in _points([0.04, 0.05]) if not (p["share"] == 0.5 and p["fold"] == 1)]
    with pytest.raises(ValueError, match=r"share 0.5 has no result for folds \[1\]"):
        lc.summarise(points, target=0.85)


@pytest.mark.parametrize("slopes", [[0.04, 0.05, 0.06, 0.05], [0.01, -0.02, 0.0, -0.01]])
def test_the_plot_is_a_png_with_or_without_the_extension(tmp_path, slopes):
    points = _points(slopes)
    path = tmp_path / "curve.png"
    lc.plot(points, lc.summarise(points, target=0.85), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_curve_has_one_training_schedule():
    """Shares trained for the whole side's steps and shares trained for the recipe's epochs are two curves;
    a result without the field was trained for the steps (the only schedule before the option)."""
    points = _points([0.04, 0.05, 0.06, 0.05])
    for p in points:
        p["schedule"] = None if p["share"] >= 1 else "epochs"
    assert lc.summarise(points, target=0.85)["train_schedule"] == "epochs"
    points[0]["schedule"] = "steps"
    with pytest.raises(ValueError, match=r"different schedules \(epochs, steps\)"):
        lc.summarise(points, target=0.85)
    assert lc.summarise(_points([0.04] * 4), target=0.85)["train_schedule"] is None


def test_read_points_takes_the_schedule_from_the_results(tmp_path):
    run = tmp_path / "cv.json"
    run.write_text(json.dumps({"per_fold": [{"fold": 0, "seed": 0, "auc": 0.6, "train_cases": 0.5,
                                             "train_schedule": "epochs", "train_labelled_cases": 87},
                                            {"fold": 1, "seed": 0, "auc": 0.6, "train_cases": 0.5,
                                             "train_labelled_cases": 86}]}))
    points = lc.read_points([(0.5, run)], [0], {0: 173, 1: 172})
    assert [p["schedule"] for p in points] == ["epochs", "steps"]


def test_one_curve_has_one_case_draw(tmp_path):
    """A curve's smaller shares are nested inside its larger ones only within one --case-draw, so shares of
    two draws are refused; the whole side (share 1) has no draw, and a result without the field is draw 0."""
    run = tmp_path / "cv.json"
    run.write_text(json.dumps({"per_fold": [{"fold": 0, "seed": 0, "auc": 0.6, "train_cases": 0.5, "case_draw": 1,
                                             "train_labelled_cases": 87},
                                            {"fold": 1, "seed": 0, "auc": 0.6, "train_cases": 0.5,
                                             "train_labelled_cases": 86}]}))
    assert [p["case_draw"] for p in lc.read_points([(0.5, run)], [0], {0: 173, 1: 172})] == [1, 0]
    assert [p["case_draw"] for p in lc.read_points([(1.0, run)], [0], {0: 173, 1: 172})] == [None, None]
    points = _points([0.04, 0.05, 0.06, 0.05])
    for p in points:
        p["case_draw"] = None if p["share"] >= 1 else 1
    assert lc.summarise(points, target=0.85)["case_draw"] == 1
    points[0]["case_draw"] = 0
    with pytest.raises(ValueError, match=r"different case draws \(0, 1\)"):
        lc.summarise(points, target=0.85)


def test_the_slope_interval_is_students_t_over_folds():
    from scipy import stats

    slopes = [0.102, 0.0134, 0.0116, -0.0061]
    low, high = lc.slope_interval(slopes)
    values = np.array(slopes, dtype=np.float64)
    half = stats.t.ppf(0.975, 3) * values.std(ddof=1) / 2.0
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half), abs=1e-12)
    assert low < 0 < high   # four folds this spread: the mean slope is not distinguishable from 0


def test_the_cases_range_turns_the_line_about_the_middle_of_the_data():
    # AUC = 0.3 + 0.05 log2(cases): 0.85 at 2^11 cases; the centre at 2^6 cases is the point (6, 0.6).
    assert lc.cases_range(0.3, 0.05, 6.0, (0.05, 0.05), 0.85) == pytest.approx([2.0 ** 11, 2.0 ** 11])
    fewest, most = lc.cases_range(0.3, 0.05, 6.0, (0.025, 0.1), 0.85)
    assert fewest == pytest.approx(2.0 ** (6 + 0.25 / 0.1)) and most == pytest.approx(2.0 ** (6 + 0.25 / 0.025))
    assert lc.cases_range(0.3, 0.05, 6.0, (-0.01, 0.1), 0.85)[1] is None


def test_the_extension_carries_the_slope_interval_into_cases():
    summary = lc.summarise(_points([0.04, 0.05, 0.06, 0.05]), target=0.85)
    low, high = summary["slope_per_doubling"]["ci95"]
    assert low < 0.05 < high
    fewest, most = summary["extension"]["cases_at_target_slope_ci95"]
    assert fewest < summary["extension"]["cases_at_target"] < most
