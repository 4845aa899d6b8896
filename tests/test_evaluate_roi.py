"""Evaluating on full frames: a nodule box per image (``roi`` column), which rows are used and why,
and the label note only for TI-RADS-labelled data. Runs on the shipped demo bundle (no torch)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_thyroid.bundle import sha256_file
from edge_thyroid.dataset import Split, read_samples
from edge_thyroid.errors import InputError
from edge_thyroid.evaluation import LABEL_NOTE, SplitSpec, decide_split, evaluate_model
from edge_thyroid.scorer import TrainingRows, training_rows

from .conftest import DDTI_CSV, demo_copy_with_box_context, needs_data, needs_torch, ultrasound_like
from .test_evaluate import synthetic_csv

DEMO_BUNDLE = Path(__file__).resolve().parents[1] / "edge_thyroid" / "data" / "demo_bundle"


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def full_frames(crops_csv: Path, folder: Path, seed: int = 0) -> Path:
    """Each crop pasted at a random place of a larger speckle frame; its box in a ``roi`` column."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in csv.DictReader(open(crops_csv)):
        crop = cv2.imread(str(crops_csv.parent / row["image"]))
        height, width = crop.shape[:2]
        frame = cv2.cvtColor(ultrasound_like(height + 160, width + 220, seed=int(rng.integers(1000))),
                             cv2.COLOR_GRAY2BGR)
        x, y = int(rng.integers(0, 220)), int(rng.integers(0, 160))
        frame[y:y + height, x:x + width] = crop
        name = f"full_{Path(row['image']).name}"
        cv2.imwrite(str(folder / name), frame)
        rows.append({**row, "image": name, "roi": f"{x},{y},{width},{height}"})
    return write_csv(folder / "labels.csv", rows)


def test_a_roi_column_gives_the_scores_and_auc_of_the_cropped_images(tmp_path):
    crops = synthetic_csv(tmp_path / "crops")
    frames = full_frames(crops, tmp_path / "frames")
    # Boxes as given (context 1), so the model sees exactly the pasted crop (tests/test_box_context.py
    # covers a bundle that grows its boxes).
    bundle = demo_copy_with_box_context(tmp_path / "bundle", 1.0)
    cropped, scored_crops = evaluate_model(bundle, crops, SplitSpec(Split.ALL), resamples=50)
    boxed, scored_frames = evaluate_model(bundle, frames, SplitSpec(Split.ALL), resamples=50)
    np.testing.assert_allclose(scored_frames.scores, scored_crops.scores, atol=1e-5)
    assert abs(boxed.auc - cropped.auc) <= 0.01
    whole, scored_whole = evaluate_model(DEMO_BUNDLE, write_csv(tmp_path / "frames" / "no_roi.csv", [
        {k: v for k, v in r.items() if k != "roi"} for r in csv.DictReader(open(frames))]), SplitSpec(Split.ALL),
        resamples=50)
    assert np.abs(scored_whole.scores - scored_crops.scores).max() > 1e-3   # without the box: another answer


def test_a_roi_outside_its_image_or_malformed_is_a_clear_error(tmp_path):
    crops = synthetic_csv(tmp_path)
    rows = list(csv.DictReader(open(crops)))
    bad = write_csv(tmp_path / "outside.csv", [{**r, "roi": "50,50,200,200"} for r in rows])
    with pytest.raises(InputError, match=r"0_0.png: roi x=50,y=50,w=200,h=200 is outside the 100x90 frame"):
        evaluate_model(DEMO_BUNDLE, bad, SplitSpec(Split.ALL), resamples=50)
    malformed = write_csv(tmp_path / "malformed.csv", [{**r, "roi": "1,2,three,4"} for r in rows])
    with pytest.raises(ValueError, match=r"malformed.csv:2: roi '1,2,three,4' is not x,y,w,h"):
        read_samples(malformed)


def test_an_external_csv_is_evaluated_on_every_row_and_says_why(tmp_path):
    crops = synthetic_csv(tmp_path, n_cases=12)
    report, scored = evaluate_model(DEMO_BUNDLE, crops, SplitSpec(None), resamples=50)
    assert report.n == 24 and "24 of 24 labelled rows" in report.rows
    # the demo model records DDTI's CSV (it was trained on every row of it), and this is another one
    assert "is not the model's training CSV" in report.rows
    lines = "\n".join(report.lines())
    assert "rows: 24 of 24" in lines and "chosen on validation side" not in lines
    assert "in-sample" in report.chosen_threshold["chosen_on"]
    assert LABEL_NOTE not in lines              # no tirads column, no label_source: no TI-RADS note


def test_the_training_csv_is_cut_to_its_validation_side(tmp_path):
    crops = synthetic_csv(tmp_path / "data", n_cases=12)
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["provenance"]["training_data"] = {"data": str(crops), "sha256": sha256_file(crops), "folds": 4,
                                               "fold": 0, "seed": 0}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "manifest.sig").unlink()     # edited, so no longer signed (an unsigned bundle loads without a trust key)
    report, _ = evaluate_model(bundle, crops, SplitSpec(None), resamples=50)
    assert report.n < 24 and f"{report.n} of 24 labelled rows" in report.rows
    assert "is the one the model was trained on" in report.rows
    assert report.chosen_threshold["chosen_on"] == "validation side"
    other = write_csv(tmp_path / "data" / "other.csv", list(csv.DictReader(open(crops)))[::-1])
    report, _ = evaluate_model(bundle, other, SplitSpec(None), resamples=50)
    assert report.n == 24 and "is not the model's training CSV" in report.rows
    report, _ = evaluate_model(bundle, other, SplitSpec(Split.VAL), resamples=50)
    assert report.n < 24 and "--split val as asked" in report.rows


def test_decide_split_rules(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("image,label,case_id\n")
    digest = sha256_file(path)
    auto = SplitSpec(None)
    split_of = lambda *seen: decide_split(path, auto, list(seen))[0]   # noqa: E731
    assert decide_split(path, SplitSpec(Split.TRAIN), [TrainingRows()])[0].split is Split.TRAIN
    assert split_of(TrainingRows(digest, folds=4, fold=0, seed=0)).split is Split.VAL
    # the model's own held-out fold, not the command line's default fold 0
    assert (split_of(TrainingRows(digest, folds=5, fold=3, seed=2)).folds, split_of(TrainingRows(digest, folds=5,
            fold=3, seed=2)).fold) == (5, 3)
    assert split_of(TrainingRows(digest), TrainingRows()).split is Split.ALL   # compare: both models must match
    assert "does not record the CSV" in decide_split(path, auto, [TrainingRows()])[1]
    assert split_of(TrainingRows("0" * 64)).split is Split.ALL
    with pytest.raises(InputError, match="trained on different splits"):
        split_of(TrainingRows(digest, folds=4, fold=0, seed=0), TrainingRows(digest, folds=4, fold=1, seed=0))


def test_a_model_trained_on_every_row_is_evaluated_in_sample_and_says_so(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("image,label,case_id\n")
    digest = sha256_file(path)
    spec, why = decide_split(path, SplitSpec(None), [TrainingRows(digest, every_row=True)])
    assert spec.split is Split.ALL and "trained on every row of this CSV" in why and "in-sample" in why
    spec, why = decide_split(path, SplitSpec(Split.VAL), [TrainingRows(digest, every_row=True)])
    assert spec.split is Split.VAL and why.startswith("--split val as asked; the model was trained on every row")
    assert "in-sample" not in decide_split(path, SplitSpec(None), [TrainingRows("0" * 64, every_row=True)])[1]


def test_the_records_that_say_which_rows_a_model_saw():
    split = {"data": "a.csv", "sha256": "ab" * 32, "folds": 4, "fold": 2, "seed": 0}
    assert training_rows(split, {"data_csv_sha256": "cd" * 32}) == TrainingRows("ab" * 32, False, 4, 2, 0)
    assert training_rows(None, {"data_csv_sha256": "cd" * 32}) == TrainingRows("cd" * 32, every_row=True)
    assert training_rows({}, {}) == TrainingRows() == training_rows(None, None)
    assert training_rows({**split, "fold": "2", "seed": None}, None) == TrainingRows("ab" * 32, False, 4, None, None)
    every = {"data": "a.csv", "sha256": "ab" * 32, "every_row": True}
    assert training_rows(every, None) == TrainingRows("ab" * 32, every_row=True)
    assert training_rows({**every, "every_row": "yes"}, None) == TrainingRows("ab" * 32)   # free-form: only true counts


@needs_data
def test_the_demo_model_evaluated_on_ddti_says_its_figures_are_in_sample():
    """The shipped model was trained on every labelled DDTI row: evaluate must not present its AUC there as
    a held-out figure (it printed 'the model does not record the CSV it was trained on' and an AUC of 0.95)."""
    from edge_thyroid.evaluation import BundleScorer

    with BundleScorer(DEMO_BUNDLE) as scorer:
        assert scorer.training_rows == TrainingRows(sha256_file(DDTI_CSV), every_row=True)
    spec, why = decide_split(DDTI_CSV, SplitSpec(None), [scorer.training_rows])
    assert spec.split is Split.ALL and "in-sample" in why


def test_the_label_note_follows_the_data(tmp_path):
    crops = synthetic_csv(tmp_path)
    rows = list(csv.DictReader(open(crops)))
    tirads = write_csv(tmp_path / "tirads.csv", [{**r, "tirads": "4a"} for r in rows])
    report, _ = evaluate_model(DEMO_BUNDLE, tirads, SplitSpec(Split.ALL), resamples=50)
    assert report.label_note == LABEL_NOTE and f"note: {LABEL_NOTE}" in report.lines()
    pathology = write_csv(tmp_path / "pathology.csv", [{**r, "label_source": "pathology"} for r in rows])
    report, _ = evaluate_model(DEMO_BUNDLE, pathology, SplitSpec(Split.ALL), resamples=50)
    assert "pathology" in report.label_note and "TI-RADS" not in "\n".join(report.lines())
    report, _ = evaluate_model(DEMO_BUNDLE, crops, SplitSpec(Split.ALL), resamples=50, label_source="tirads")
    assert report.label_note == LABEL_NOTE


def test_evaluate_command_prints_the_rows_used(tmp_path):
    from click.testing import CliRunner

    from edge_thyroid.cli import cli

    crops = synthetic_csv(tmp_path)
    result = CliRunner().invoke(cli, ["evaluate", str(DEMO_BUNDLE), "--data", str(crops), "--resamples", "50"])
    assert result.exit_code == 0, result.output
    assert "rows: 16 of 16 labelled rows: this CSV (sha256" in result.stdout


@needs_data
def test_ddti_full_frames_with_roi_match_the_crops(tmp_path):
    """Real crops placed in larger frames: the roi column reproduces the crops' AUC (goal: within 0.01)."""
    rows = [r for r in csv.DictReader(open(DDTI_CSV)) if r["label"]][:40]
    crops_csv = write_csv(tmp_path / "crops.csv", [{**r, "image": str(DDTI_CSV.parent / r["image"]),
                                                    "mask": ""} for r in rows])
    frames = full_frames(crops_csv, tmp_path / "frames")
    if len({r["label"] for r in rows}) < 2:
        pytest.skip("the first labelled DDTI rows are of one class")
    # Boxes as given: the crops sit in synthetic speckle, which a grown box would add (test_box_context.py).
    bundle = demo_copy_with_box_context(tmp_path / "bundle", 1.0)
    cropped, a = evaluate_model(bundle, crops_csv, SplitSpec(Split.ALL), resamples=50)
    boxed, b = evaluate_model(bundle, frames, SplitSpec(Split.ALL), resamples=50)
    assert abs(boxed.auc - cropped.auc) <= 0.01
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)


@needs_torch
def test_export_records_the_training_csv_and_evaluate_uses_it(random_model, tmp_path):
    from click.testing import CliRunner

    from edge_thyroid.cli import cli
    from edge_thyroid.export.checkpoint import CheckpointInfo, save_checkpoint

    crops = synthetic_csv(tmp_path / "data", n_cases=12)
    split = {"data": str(crops), "sha256": sha256_file(crops), "folds": 4, "fold": 0, "seed": 0}
    checkpoint = tmp_path / "trained.pt"
    save_checkpoint(checkpoint, random_model, CheckpointInfo(image_size=32, training={"split": split}))
    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(bundle), "--image-size", "32"])
    assert result.exit_code == 0, result.output
    recorded = json.loads((bundle / "manifest.json").read_text())["provenance"]["training_data"]
    assert recorded == split
    for model in (bundle, checkpoint):        # the bundle's manifest and the checkpoint both say so
        report, _ = evaluate_model(model, crops, SplitSpec(None), resamples=50)
        assert report.n < 24 and "is the one the model was trained on" in report.rows

    every = {"data": str(crops), "sha256": sha256_file(crops), "every_row": True}   # an all-data model, unstamped
    save_checkpoint(checkpoint, random_model, CheckpointInfo(image_size=32, training={"split": every}))
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(tmp_path / "all"), "--image-size", "32"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "all" / "manifest.json").read_text())["provenance"]["training_data"] == every
    for model in (tmp_path / "all", checkpoint):
        report, _ = evaluate_model(model, crops, SplitSpec(None), resamples=50)
        assert report.n == 24 and "in-sample" in report.rows


def test_classify_takes_a_box_per_image_from_a_list(tmp_path):
    from click.testing import CliRunner

    from edge_thyroid.cli import cli

    crops = synthetic_csv(tmp_path / "crops", n_cases=2)
    frames = full_frames(crops, tmp_path / "frames")
    runner = CliRunner()
    bundle = demo_copy_with_box_context(tmp_path / "bundle", 1.0)   # the box as given: exactly the pasted crop

    def scores(args: list[str]) -> list[float]:
        result = runner.invoke(cli, ["classify", str(bundle), *args, "--json"])
        assert result.exit_code == 0, result.output
        return [json.loads(line)["p_malignant"] for line in result.stdout.splitlines()]

    by_crop = scores([str(crops.parent / r["image"]) for r in csv.DictReader(open(crops))])
    by_box = scores(["--list", str(frames)])
    np.testing.assert_allclose(by_box, by_crop, atol=1e-6)
    first = next(csv.DictReader(open(frames)))
    assert scores([str(frames.parent / first["image"]), "--roi", first["roi"]]) == pytest.approx(by_box[:1], abs=1e-6)
    result = runner.invoke(cli, ["classify", str(DEMO_BUNDLE)])
    assert result.exit_code != 0 and "give IMAGES or --list CSV" in result.output
    bad = write_csv(tmp_path / "bad.csv", [{"image": first["image"], "roi": "0,0,5000,10"}])
    (tmp_path / first["image"]).write_bytes((frames.parent / first["image"]).read_bytes())
    result = runner.invoke(cli, ["classify", str(DEMO_BUNDLE), "--list", str(bad)])
    assert result.exit_code != 0 and "outside the" in str(result.exception)
