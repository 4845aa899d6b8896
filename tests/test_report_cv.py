"""benchmarks/report_cv.py: the paired comparison of two cross-validation runs, model by model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks import report_cv


def _fold(fold: int, seed: int, auc: float, cam: float = 0.7, tirads2: float | None = 0.5) -> dict:
    return {"fold": fold, "seed": seed, "val_crops": 90, "val_benign": 12, "auc": auc, "auc_ci95": [auc - 0.1, auc + 0.1],
            "auc_margin_1.2": auc, "auc_margin_1.5": auc, "auc_margin_2.0": auc, "cam_in_mask": cam, "mask_area": 0.3,
            "sensitivity": 0.7, "specificity": 0.5, "tirads2_benign_rate": tirads2, "tirads2_crops": 7}


def _run(folds: list[dict]) -> dict:
    mean = float(np.mean([f["auc"] for f in folds]))
    return {"label_source": "TI-RADS", "command": "cv", "folds": 2, "seeds": [0, 1], "per_fold": folds,
            "summary": {"auc": {"mean": mean, "sd": 0.05}}}


def test_pairs_are_matched_by_fold_and_seed_not_by_position():
    first = _run([_fold(0, 0, 0.70), _fold(0, 1, 0.60), _fold(1, 0, 0.80)])
    # other order, one model the first run lacks (fold 1 seed 1), one it has that this lacks (fold 1 seed 0)
    other = _run([_fold(0, 1, 0.65), _fold(1, 1, 0.90), _fold(0, 0, 0.68)])
    d = report_cv.paired_differences(first, other, "auc")
    deltas = np.array([0.65 - 0.60, 0.68 - 0.70])
    assert d["pairs"] == 2
    assert d["mean"] == pytest.approx(deltas.mean()) and d["sd"] == pytest.approx(deltas.std(ddof=1))
    assert d["min"] == pytest.approx(-0.02) and d["max"] == pytest.approx(0.05)


def test_missing_values_and_no_shared_models():
    first = _run([_fold(0, 0, 0.7, tirads2=None), _fold(1, 0, 0.8)])
    other = _run([_fold(0, 0, 0.6), _fold(1, 0, 0.9)])
    assert report_cv.paired_differences(first, other, "tirads2_benign_rate")["pairs"] == 1
    single = report_cv.paired_differences(first, _run([_fold(1, 0, 0.75)]), "auc")
    assert single["pairs"] == 1 and single["sd"] is None and single["mean"] == pytest.approx(-0.05)
    assert report_cv.paired_differences(first, _run([_fold(3, 2, 0.7)]), "auc") is None


def test_the_command_prints_the_paired_row(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_run([_fold(0, 0, 0.70, cam=0.80), _fold(1, 0, 0.80, cam=0.70)])))
    b.write_text(json.dumps(_run([_fold(0, 0, 0.72, cam=0.78), _fold(1, 0, 0.76, cam=0.70)])))
    result = CliRunner().invoke(report_cv.main, [str(a), str(b), "--name", "f32", "--name", "bf16"])
    assert result.exit_code == 0, result.output
    assert "| run minus f32, same fold and seed | pairs |" in result.output
    # AUC differences +0.02 and -0.04: mean -0.010, sd 0.042; CAM -0.02 and 0
    assert "| bf16 | 2 | -0.010 ± 0.042 (-0.040 to +0.020) | -0.010 ± 0.014 (-0.020 to +0.000) |" in result.output
    assert result.output.count("| - |") >= 1   # no held-out scores in these files: the agreement cell says so


def _scored(run: dict, p_by_model: dict[tuple[int, int], list[float]]) -> dict:
    run["scores"] = [{"fold": f, "seed": s, "scores": [{"image": f"c{i}", "label": i % 2, "p": p} for i, p in enumerate(ps)]}
                     for (f, s), ps in p_by_model.items()]
    return run


def test_score_agreement_against_numpy_on_the_shared_models_and_crops():
    a = [0.1, 0.4, 0.35, 0.8, 0.9]
    b = [0.2, 0.3, 0.5, 0.7, 0.95]
    first = _scored(_run([_fold(0, 0, 0.7)]), {(0, 0): a, (1, 0): [0.5, 0.6, 0.7]})
    other = _scored(_run([_fold(0, 0, 0.7)]), {(0, 0): b, (2, 0): [0.1, 0.2, 0.3]})
    got = report_cv.score_agreement(first, other)
    assert got["models"] == 1   # only fold 0 seed 0 was scored by both
    assert got["r_mean"] == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-12) == got["r_min"]
    assert got["abs_dp_median"] == pytest.approx(np.median(np.abs(np.subtract(b, a))))
    # A second shared model: the mean and the smallest correlation part ways.
    first = _scored(_run([_fold(0, 0, 0.7)]), {(0, 0): a, (1, 0): a})
    other = _scored(_run([_fold(0, 0, 0.7)]), {(0, 0): a, (1, 0): b})
    got = report_cv.score_agreement(first, other)
    assert got["models"] == 2 and got["r_mean"] == pytest.approx((1 + np.corrcoef(a, b)[0, 1]) / 2)
    assert got["r_min"] == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert report_cv.score_agreement(first, _scored(_run([_fold(0, 0, 0.7)]), {(3, 1): a})) is None
    assert report_cv.score_agreement(_run([_fold(0, 0, 0.7)]), other) is None   # no scores recorded
