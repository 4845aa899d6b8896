"""A fold model of the nodule recipe records the split it held out, so `edge-thyroid evaluate` on its CSV
scores that fold's validation side (and not fold 0's, part of which it trained on)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge_thyroid.scorer import TrainingRows

from .conftest import needs_torch
from .test_mixup import tiny_pack


def test_the_split_record_names_one_csv_or_nothing():
    from edge_thyroid.export.nodule_training import split_record

    pack = replace(tiny_pack(), meta={"csv": "labels.csv", "csv_sha256": "ab" * 32})
    assert split_record(pack, 4, 2) == {"data": "labels.csv", "sha256": "ab" * 32, "folds": 4, "fold": 2, "seed": 0}
    assert split_record(replace(pack, meta={"csv_sha256": "ab" * 32 + "+" + "cd" * 32}), 4, 2) is None
    assert split_record(replace(pack, meta={}), 4, 2) is None


def test_the_every_row_record_names_one_csv_or_nothing():
    from edge_thyroid.export.nodule_training import every_row_record

    pack = replace(tiny_pack(), meta={"csv": "labels.csv", "csv_sha256": "ab" * 32})
    assert every_row_record(pack) == {"data": "labels.csv", "sha256": "ab" * 32, "every_row": True}
    assert every_row_record(replace(pack, meta={"csv_sha256": "ab" * 32 + "+" + "cd" * 32})) is None
    assert every_row_record(replace(pack, meta={})) is None


@needs_torch
def test_a_fold_checkpoint_tells_the_scorer_which_fold_it_held_out(tmp_path):
    from edge_thyroid.export.nodule_training import NoduleRecipe, every_row_record, fit_nodule, split_record
    from edge_thyroid.export.scoring import CheckpointScorer

    pack = replace(tiny_pack(), meta={"csv": "labels.csv", "csv_sha256": "ab" * 32})
    recipe = NoduleRecipe(image_size=64, epochs=1, warmup_epochs=0.5)
    fit_nodule(recipe, pack, np.arange(len(pack)), tmp_path / "fold1", threads=1, log=lambda msg: None,
               split=split_record(pack, 4, 1))
    fit_nodule(recipe, pack, np.arange(len(pack)), tmp_path / "all", threads=1, log=lambda msg: None,
               split=every_row_record(pack))
    fit_nodule(recipe, pack, np.arange(len(pack)), tmp_path / "unrecorded", threads=1, log=lambda msg: None)
    with CheckpointScorer(tmp_path / "fold1" / "final.pt") as scorer:
        assert scorer.training_rows == TrainingRows("ab" * 32, False, 4, 1, 0)
    # the all-data model straight out of training, before stamp_checkpoint: evaluate on its CSV is in-sample
    with CheckpointScorer(tmp_path / "all" / "final.pt") as scorer:
        assert scorer.training_rows == TrainingRows("ab" * 32, every_row=True)
    with CheckpointScorer(tmp_path / "unrecorded" / "final.pt") as scorer:   # no record: evaluate says so
        assert scorer.training_rows == TrainingRows()
