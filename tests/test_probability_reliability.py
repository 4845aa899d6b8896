"""benchmarks/probability_reliability.py: the Platt fit against SciPy, the per-fold figures and the rules on
made-up cross-validations whose p is calibrated for equal classes by construction, or is not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks import probability_reliability as pr
from edge_thyroid import metrics


def test_platt_fit_is_the_weighted_maximum_likelihood():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=400) < 0.8).astype(float)
    scores = 1 / (1 + np.exp(-rng.normal(0.8 * labels - 0.3, 1.2)))
    weights = metrics.prior_weights(labels, 0.5)
    x = pr._logit(scores)

    def loss(theta):
        z = theta[0] * x + theta[1]
        return float(np.sum(weights * (np.logaddexp(0, z) - labels * z)))

    reference = optimize.minimize(loss, [1.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
    a, b = pr.fit_platt(labels, scores, weights)
    assert a == pytest.approx(reference[0], abs=1e-5) and b == pytest.approx(reference[1], abs=1e-5)
    np.testing.assert_allclose(pr.apply_platt(scores, a, b), 1 / (1 + np.exp(-(a * x + b))), atol=1e-12)


def _cv(calibrated: bool, rows_per_fold: int = 1500, seed: int = 1) -> dict:
    """Four folds at 85% malignant whose p is the posterior at equal priors (a Gaussian score with a known
    likelihood ratio) when ``calibrated``, else that posterior's logit doubled (overconfident)."""
    rng = np.random.default_rng(seed)
    scores = []
    for fold in range(4):
        labels = (rng.uniform(size=rows_per_fold) < 0.85).astype(int)
        x = rng.normal(np.where(labels == 1, 1.0, -1.0), 1.5)
        logit = 2 * x / 1.5 ** 2   # log N(x; 1, s) - log N(x; -1, s)
        p = 1 / (1 + np.exp(-(logit if calibrated else 2 * logit)))
        scores.append({"fold": fold, "seed": 0,
                       "scores": [{"image": f"{fold}_{i}.png", "label": int(y), "p": float(q)}
                                  for i, (y, q) in enumerate(zip(labels, p))]})
    return {"label_source": "made up", "scores": scores}


def test_a_p_calibrated_for_equal_classes_passes_and_its_prior_shift_fits_the_data_mix():
    folds = pr.rows_by_fold(_cv(calibrated=True))
    per_fold = pr.fold_figures(folds)
    for f in per_fold:
        assert f["ece_own_mix"] > 0.15   # the 85% mix makes a balanced p look wrong ...
        assert f["ece_equal_classes"] < 0.05 and f["ece_own_mix_prior_shifted"] < 0.05   # ... and it is not
        assert f["platt"]["a"] == pytest.approx(1.0, abs=0.15) and f["platt"]["b"] == pytest.approx(0.0, abs=0.15)
        assert f["training_side_share"] == pytest.approx(0.85, abs=0.02)
    labels = np.concatenate([v[0] for v in folds.values()])
    scores = np.concatenate([v[1] for v in folds.values()])
    verdict = pr.verdicts(per_fold, metrics.calibration(labels, scores, prior=0.5)["ece"])
    assert verdict == {"calibrated_for_equal_classes": True, "prior_shift_checked": True, "ship_platt_map": False}


def test_an_overconfident_p_fails_and_a_platt_map_would_ship():
    folds = pr.rows_by_fold(_cv(calibrated=False))
    per_fold = pr.fold_figures(folds)
    assert all(f["platt"]["a"] == pytest.approx(1 / 2, abs=0.06) for f in per_fold)   # undoes the 2x
    assert all(f["ece_equal_classes_platt"] < f["ece_equal_classes"] - 0.03 for f in per_fold)
    labels = np.concatenate([v[0] for v in folds.values()])
    scores = np.concatenate([v[1] for v in folds.values()])
    verdict = pr.verdicts(per_fold, metrics.calibration(labels, scores, prior=0.5)["ece"])
    assert verdict["calibrated_for_equal_classes"] is False and verdict["ship_platt_map"] is True


def test_the_command_writes_its_figures_and_a_plot(tmp_path):
    pytest.importorskip("matplotlib")
    source = tmp_path / "cv.json"
    source.write_text(json.dumps(_cv(calibrated=True, rows_per_fold=300)))
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    result = CliRunner().invoke(pr.main, [str(source), "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert len(saved["per_fold"]) == 4 and saved["rows"] == 1200
    assert saved["summary"]["ece_own_mix"]["mean"] == pytest.approx(np.mean([f["ece_own_mix"] for f in saved["per_fold"]]))
    assert png.stat().st_size > 10_000 and "verdicts:" in result.output


@pytest.mark.parametrize("content, message", [("not json", "not a readable results JSON"),
                                              (json.dumps({"scores": []}), "no per-crop scores")])
def test_bad_results_files_get_one_line(tmp_path, content, message):
    source = tmp_path / "cv.json"
    source.write_text(content)
    result = CliRunner().invoke(pr.main, [str(source)])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
