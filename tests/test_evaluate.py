"""edge-thyroid evaluate: scores through the engine (and a checkpoint through torch), the study's
figures computed from them, plots, and clear errors."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_thyroid import metrics
from edge_thyroid.evaluation import (Scored, SplitSpec, ThresholdRule, calibration, evaluate_model,
                                     evaluate_scores, select_samples)
from edge_thyroid.dataset import Split

from .conftest import needs_torch, ultrasound_like


def synthetic_csv(folder: Path, n_cases: int = 8, crops_per_case: int = 2) -> Path:
    """Generated speckle images, two crops per case, alternating benign/malignant cases."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for case in range(n_cases):
        for crop in range(crops_per_case):
            name = f"images/{case}_{crop}.png"
            image = ultrasound_like(90 + 10 * crop, 100, seed=case * 10 + crop)
            cv2.imwrite(str(folder / name), image)
            rows.append({"image": name, "case_id": str(case), "label": "malignant" if case % 2 else "benign",
                         "modality": "bmode"})
    path = folder / "labels.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "case_id", "label", "modality"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_calibration_bins_and_scores():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.95, 0.85, 0.55, 0.45])
    table = calibration(y, p, bins=2)
    assert table["brier"] == pytest.approx(np.mean((p - y) ** 2))
    low, high = table["bins"]
    assert (low["n"], high["n"]) == (3, 3)
    assert low["mean_predicted"] == pytest.approx((0.05 + 0.15 + 0.45) / 3)
    assert high["fraction_malignant"] == pytest.approx(1.0)
    assert table["ece"] == pytest.approx(0.5 * abs(low["mean_predicted"] - 0) + 0.5 * abs(high["mean_predicted"] - 1))


def test_report_from_known_scores():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40, int), np.ones(60, int)]
    s = 1 / (1 + np.exp(-rng.normal(1.5 * y - 0.5, 1.0)))
    samples = [type("S", (), {"image": Path(f"{i}.png"), "label": int(v), "case_id": str(i // 2),
                              "label_source": "tirads"})() for i, v in enumerate(y)]
    scored = Scored(samples, s, 0.5, "known")
    report = evaluate_scores(scored, data="synthetic", resamples=300)
    assert report.auc == pytest.approx(metrics.roc_auc(y, s))
    assert report.auc_ci_delong["low"] < report.auc < report.auc_ci_delong["high"]
    assert report.auc_ci_bootstrap["low"] < report.auc < report.auc_ci_bootstrap["high"]
    op = report.at_model_threshold
    assert op["tp"] == int(((s >= 0.5) & (y == 1)).sum()) and op["tn"] == int(((s < 0.5) & (y == 0)).sum())
    assert report.chosen_threshold["threshold"] == pytest.approx(metrics.youden_threshold(y, s))
    assert report.cases == 50
    target = evaluate_scores(scored, data="synthetic", rule=ThresholdRule.SENSITIVITY, sensitivity_target=0.9,
                             resamples=100)
    assert target.chosen_threshold["operating_point"]["sensitivity"] >= 0.9
    assert any("TI-RADS" in line for line in report.lines())
    # calibration read twice: at the data's 60% malignant and with the classes weighted equally
    assert report.calibration_equal_classes == metrics.calibration(y, s, prior=0.5)
    assert report.calibration_equal_classes["ece"] != pytest.approx(report.calibration["ece"])
    line = next(line for line in report.lines() if line.startswith("calibration"))
    assert "(60% malignant)" in line and f"weighted equally: Brier {report.calibration_equal_classes['brier']:.4f}" in line


def test_threshold_is_chosen_on_the_validation_side():
    y = np.array([0, 1, 0, 1])
    make = lambda scores: Scored([type("S", (), {"image": Path(f"{i}"), "label": int(v), "case_id": str(i)})()
                                  for i, v in enumerate(y)], np.asarray(scores, float), 0.5, "m")
    train, val = make([0.1, 0.9, 0.2, 0.8]), make([0.3, 0.45, 0.35, 0.6])
    report = evaluate_scores(train, data="t", validation=val, resamples=50)
    assert report.chosen_threshold["threshold"] == pytest.approx(metrics.youden_threshold(val.labels, val.scores))


def test_select_samples_splits_by_case(tmp_path):
    csv_path = synthetic_csv(tmp_path, n_cases=12)
    val, val_again = select_samples(csv_path, SplitSpec(Split.VAL))
    train, _ = select_samples(csv_path, SplitSpec(Split.TRAIN))
    assert [s.image for s in val] == [s.image for s in val_again]
    assert not {s.case_id for s in val} & {s.case_id for s in train}
    assert len(val) + len(train) == 24


def test_bad_csv_is_a_clear_error(tmp_path):
    from edge_thyroid.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("image,case_id\nx.png,1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path), "--data", str(bad)])
    assert exit_info.value.code != 0


@needs_torch
def test_bundle_and_checkpoint_give_the_same_scores(random_bundle, random_model, tmp_path):
    from edge_thyroid.engine import Engine
    from edge_thyroid.frames import Pane
    from edge_thyroid.evaluation import score_model
    from edge_thyroid.export.checkpoint import CheckpointInfo, save_checkpoint

    csv_path = synthetic_csv(tmp_path)
    samples, _ = select_samples(csv_path, SplitSpec(Split.ALL))
    bundle_scored, _ = score_model(random_bundle, samples)
    with Engine(random_bundle) as engine:
        frame = cv2.imread(str(samples[3].image))
        direct = engine.classify(frame, [Pane("bmode", (0, 0, frame.shape[1], frame.shape[0]))]).probability
    assert bundle_scored.scores[3] == pytest.approx(direct, abs=1e-12)
    ckpt = tmp_path / "random.pt"
    save_checkpoint(ckpt, random_model, CheckpointInfo(image_size=64, threshold={"value": 0.5}))
    ckpt_scored, _ = score_model(ckpt, samples)
    np.testing.assert_allclose(ckpt_scored.scores, bundle_scored.scores, atol=2e-4)
    assert ckpt_scored.threshold == 0.5


@needs_torch
def test_evaluate_command_on_a_bundle(random_bundle, tmp_path):
    from click.testing import CliRunner

    from edge_thyroid.cli import cli

    csv_path = synthetic_csv(tmp_path)
    plots, scores_csv = tmp_path / "plots", tmp_path / "scores.csv"
    result = CliRunner().invoke(cli, ["evaluate", str(random_bundle), "--data", str(csv_path), "--split", "all",
                                      "--json", "--plots", str(plots), "--scores", str(scores_csv),
                                      "--resamples", "200"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 16 and report["positives"] == 8 and report["cases"] == 8
    with open(scores_csv) as handle:
        rows = list(csv.DictReader(handle))
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    assert report["auc"] == pytest.approx(metrics.roc_auc(y, s))
    op = report["at_model_threshold"]
    assert op["tp"] + op["fp"] + op["tn"] + op["fn"] == 16
    assert op["tp"] == int(((s >= op["threshold"]) & (y == 1)).sum())
    for name in ("roc.png", "calibration.png"):
        image = cv2.imread(str(plots / name))
        assert image is not None and image.shape[0] > 100
    text = CliRunner().invoke(cli, ["evaluate", str(random_bundle), "--data", str(csv_path), "--split", "all",
                                    "--resamples", "100"])
    assert "confusion matrix" in text.stdout and "AUC" in text.stdout


def test_evaluate_model_refuses_a_missing_model(tmp_path):
    from edge_thyroid.errors import InputError

    csv_path = synthetic_csv(tmp_path)
    with pytest.raises(InputError, match="model not found"):
        evaluate_model(tmp_path / "nope", csv_path, SplitSpec(Split.ALL))


def test_checkpoint_without_torch_says_how_to_install(tmp_path):
    import subprocess
    import sys

    from .test_torch_free import BLOCK_TORCH

    csv_path = synthetic_csv(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"not used")
    script = BLOCK_TORCH + f"""
from edge_thyroid.cli import main
main(['evaluate', {str(tmp_path / 'model.pt')!r}, '--data', {str(csv_path)!r}, '--split', 'all'])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    assert "pip install 'edge-thyroid[export]'" in result.stderr


@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_a_missing_data_csv_is_one_line_with_exit_2(command, tmp_path, capsys):
    """Without --split the CSV is hashed (is it the training CSV?) before its rows are read: a missing
    file gave a FileNotFoundError traceback there."""
    from edge_thyroid.cli import main
    from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path

    bundle = str(data_path(DEMO_BUNDLE))
    models = [bundle, "--backend", "onnxruntime"] if command == "evaluate" else [bundle, bundle]
    missing = tmp_path / "nope.csv"
    with pytest.raises(SystemExit) as exit_info:
        main([command, *models, "--data", str(missing)])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("notice:")]
    assert err == [f"error: data CSV not found: {missing}; expected a CSV with image, label and case_id columns"]


@pytest.mark.parametrize("command, option, name", [("evaluate", "--plots", "plots"), ("evaluate", "--scores", "s.csv"),
                                                   ("compare", "--plot", "roc.png")])
def test_an_output_place_that_cannot_be_created_is_one_line_before_scoring(command, option, name, tmp_path, capsys):
    """The plots folder (or the scores/plot file's folder) was made only after every image was scored:
    a NotADirectoryError traceback then, and the report was lost."""
    from edge_thyroid.cli import main
    from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path

    csv_path = synthetic_csv(tmp_path / "data")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bundle = str(data_path(DEMO_BUNDLE))
    models = [bundle, "--backend", "onnxruntime"] if command == "evaluate" else [bundle, bundle]
    target = blocker / "sub" / name
    with pytest.raises(SystemExit) as exit_info:
        main([command, *models, "--data", str(csv_path), "--split", "all", option, str(target)])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("notice:")]
    folder = target if option == "--plots" else target.parent
    assert err == [f"error: {option}: cannot create the folder {folder} (Not a directory); expected a writable folder path"]
