"""Soft pseudo-labels for the unlabelled crops: a teacher's p(malignant) as their training target.

DDTI holds 166 crops without a TI-RADS category (their cases are in no validation fold); the recipe uses
them only for the mask heads. Here the models of an earlier run score them and the mean of their
probabilities becomes each crop's soft label, so they teach the classifier too (self-distillation).

Only unlabelled crops are given one: on its own training crops a teacher's score is close to the label
it memorised, so it would add nothing there. The teachers of a cross-validation fold must be that fold's
models (trained without its held-out cases); ``fold_teachers`` finds them in a run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .datapack import DataPack


def fold_teachers(run: str | Path, fold: int | str) -> list[str]:
    """The final checkpoints of one fold of a cross-validation run (every seed), or of its all-data model
    (``fold="all"``: OUT/all/final.pt, as benchmarks/cross_validate.py --also-all writes it)."""
    run = Path(run)
    found = ([run / "all" / "final.pt"] if fold == "all" else sorted(run.glob(f"fold{fold}_seed*/final.pt")))
    found = [path for path in found if path.is_file()]
    if not found:
        where = run / ("all" if fold == "all" else f"fold{fold}_seed*") / "final.pt"
        raise FileNotFoundError(f"no teacher checkpoint at {where}; expected a finished cross-validation run "
                                "(benchmarks/cross_validate.py --out RUN) with that fold trained")
    return [str(path) for path in found]


def teacher_probabilities(teachers: Sequence[str | Path], pack: DataPack, index: np.ndarray,
                          test_time_flip: bool = True) -> np.ndarray:
    """A pack-long float32 array: at ``index`` the mean over ``teachers`` of p(malignant) on each stock crop
    (with ``test_time_flip``, each teacher's mirror-image average, as its bundle scores), NaN elsewhere."""
    from .checkpoint import load_checkpoint
    from .nodule_training import score

    if not teachers:
        raise ValueError("pseudo-labels need at least one teacher checkpoint; got none")
    index = np.asarray(index, dtype=np.int64)
    images = [pack.images[i] for i in index]
    total = np.zeros(len(index), np.float64)
    for path in teachers:
        model, info, _ = load_checkpoint(path)
        p, _ = score(model, images, [None] * len(images), info.image_size, test_time_flip=test_time_flip)
        total += p
    soft = np.full(len(pack), np.nan, np.float32)
    soft[index] = (total / len(teachers)).astype(np.float32)
    return soft
