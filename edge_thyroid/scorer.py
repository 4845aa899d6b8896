"""The scorer interface: p(malignant) per labelled row, from a bundle (evaluation.BundleScorer) or a training
checkpoint (export/scoring.CheckpointScorer). Its own module so the checkpoint scorer, which evaluation opens
lazily, can share it without an import cycle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .dataset import Sample
    from .familiarity import Familiarity


@dataclass(frozen=True)
class TrainingRows:
    """Which rows of which CSV a model was trained on, as its record says: one side of a case-level split
    (``folds``, ``fold``: the held-out fold, ``seed``), or every labelled row (``every_row``: nothing of that
    CSV is unseen). ``sha256`` None: the model does not say."""

    sha256: str | None = None
    every_row: bool = False
    folds: int | None = None
    fold: int | None = None
    seed: int | None = None


def training_rows(split: Mapping[str, Any] | None, all_data: Mapping[str, Any] | None) -> TrainingRows:
    """From a model's records: ``split``, the split it was trained on (bundle provenance.training_data,
    checkpoint training.split: data, sha256, folds, fold, seed, or ``every_row`` true for a model trained on
    every row); ``all_data``, what stamp_checkpoint writes into the model trained on every row
    (metrics.training: data_csv_sha256)."""
    def whole(value: Any) -> int | None:   # a record is free-form JSON: a non-integer is "not recorded"
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    if split and split.get("sha256") and split.get("every_row") is True:
        return TrainingRows(str(split["sha256"]), every_row=True)
    if split and split.get("sha256"):
        return TrainingRows(str(split["sha256"]), False, *(whole(split.get(k)) for k in ("folds", "fold", "seed")))
    if all_data and all_data.get("data_csv_sha256"):
        return TrainingRows(str(all_data["data_csv_sha256"]), every_row=True)
    return TrainingRows()


class Scorer:
    """p(malignant) per sample; a context manager that releases what it opened."""

    kind: str = ""
    threshold: float = 0.5
    name: str = ""
    training_rows: TrainingRows = TrainingRows()   # which rows of which CSV the model has seen, if it says

    def score(self, samples: Sequence[Sample], *, progress: bool = False) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} does not score")

    def score_rows(self, samples: Sequence[Sample], *,
                   progress: bool = False) -> tuple[np.ndarray, list[Familiarity] | None]:
        """p per row and each row against the model's familiarity reference (None: the model has none)."""
        return self.score(samples, progress=progress), None

    def close(self) -> None:
        pass

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
