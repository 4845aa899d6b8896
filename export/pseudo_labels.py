"""Soft pseudo-labels for the unlabelled crops: a teacher's p(malignant) as their training target.

DDTI holds 166 crops without a TI-RADS category (their cases are in no validation fold); the recipe uses
them only for the mask heads. Here the models of an earlier run score them and the mean of their
probabilities becomes each crop's soft label, so they teach the classifier too (self-distillation).

Only unlabelled crops are given one: on its own training crops a teacher's score is close to the label
it memorised, so it would add nothing there. The teachers of a cross-validation fold must be that fold's
models (trained without its held-out cases); ``fold_teachers`` finds them in a run folder, and
``nodule_training.teacher_probabilities`` scores the crops with them.
"""

from __future__ import annotations

from pathlib import Path


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
