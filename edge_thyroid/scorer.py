"""The scorer interface: p(malignant) per labelled row, from a bundle (evaluation.BundleScorer) or a training
checkpoint (export/scoring.CheckpointScorer). Its own module so the checkpoint scorer, which evaluation opens
lazily, can share it without an import cycle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .dataset import Sample
    from .familiarity import Familiarity


class Scorer:
    """p(malignant) per sample; a context manager that releases what it opened."""

    kind: str = ""
    threshold: float = 0.5
    name: str = ""
    trained_on: str | None = None   # sha256 of the CSV the model was trained on, when it records one

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
