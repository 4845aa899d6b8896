"""benchmarks/context_reliance.py: which crop lends its surroundings to which, the swapped inputs, the
donor pull, and the command on a small run folder (fold models of random weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks import context_reliance

from .conftest import needs_torch, ultrasound_like


def test_donors_are_a_fixed_derangement():
    for count in (2, 3, 17, 91):
        donors = context_reliance.donor_order(count)
        assert sorted(donors.tolist()) == list(range(count))          # every crop lends once
        assert not np.any(donors == np.arange(count))                 # never to itself
        assert np.array_equal(donors, context_reliance.donor_order(count))
    assert not np.array_equal(context_reliance.donor_order(91, seed=0), context_reliance.donor_order(91, seed=1))
    with pytest.raises(ValueError, match="got 1 crop"):
        context_reliance.donor_order(1)


def test_donor_pull_is_the_difference_of_mean_changes_by_donor_label():
    dp = np.array([0.3, 0.1, -0.2, 0.0])
    assert context_reliance.donor_pull(dp, np.array([1, 1, 0, 0])) == pytest.approx(0.2 - (-0.1), abs=1e-12)
    assert context_reliance.donor_pull(dp, np.array([1, 1, 1, 1])) is None


@needs_torch
def test_swapped_crops_are_fixed_and_leave_unplaceable_crops_as_they_are():
    from .test_augment import disc_mask

    images = [ultrasound_like(96, 96, seed=s) for s in range(3)]
    masks = [disc_mask(96, 96, 48, 48, 18, 14), np.zeros((96, 96), bool), disc_mask(96, 96, 40, 50, 16, 12)]
    donors = np.array([2, 0, 0])
    out, done = context_reliance.swapped_crops(images, masks, donors)
    assert done.tolist() == [True, False, True]
    assert out[1] is images[1] and not np.array_equal(out[0], images[0])
    again, _ = context_reliance.swapped_crops(images, masks, donors)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))


@needs_torch
def test_the_command_scores_every_fold_and_refuses_a_run_without_flip_results(tmp_path, random_model):
    from edge_thyroid.export.checkpoint import CheckpointInfo, save_checkpoint
    from dataclasses import replace

    from edge_thyroid.export.datapack import PACK_FORMAT, save_pack

    from .test_mixup import tiny_pack

    pack_path = tmp_path / "pack.npz"
    save_pack(replace(tiny_pack(count=22, unlabelled=2), meta={"format": PACK_FORMAT}), pack_path)
    run = tmp_path / "run"
    for fold in range(2):
        (run / f"fold{fold}_seed0").mkdir(parents=True)
        save_checkpoint(run / f"fold{fold}_seed0" / "final.pt", random_model, CheckpointInfo(image_size=64))
    out = tmp_path / "reliance.json"
    args = ["--data", str(pack_path), "--run", str(run), "--folds", "2", "--threads", "1", "--json", str(out)]
    result = CliRunner().invoke(context_reliance.main, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert [row["fold"] for row in record["per_fold"]] == [0, 1]
    assert sum(row["crops"] for row in record["per_fold"]) == 20
    assert all(row["swapped"] == row["crops"] and row["median_abs_dp"] >= 0 for row in record["per_fold"])
    assert record["summary"]["auc_as_is"]["folds"] == [round(r["auc_as_is"], 4) for r in record["per_fold"]]
    again = CliRunner().invoke(context_reliance.main, args[:-1] + [str(tmp_path / "again.json")])
    assert again.exit_code == 0
    assert json.loads((tmp_path / "again.json").read_text())["per_fold"] == record["per_fold"]   # fixed inputs
    flipped = CliRunner().invoke(context_reliance.main, args + ["--test-time-flip"])
    assert flipped.exit_code == 1 and "result_test_time_flip.json is missing" in flipped.output
    assert "Traceback" not in flipped.output
