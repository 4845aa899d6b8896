"""A training checkpoint scored like ``edge-thyroid evaluate`` scores a bundle: p(malignant) per
labelled image, the torch model fed the engine's reference preprocessing. Build-time code (torch),
so the runtime's evaluation reaches it only when given a ``.pt`` file."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edge_thyroid.dataset import Sample, still_furniture
from edge_thyroid.errors import InputError
from edge_thyroid.frames import read_image
from edge_thyroid.scorer import Scorer, training_rows
from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference

from .checkpoint import load_checkpoint


class CheckpointScorer(Scorer):
    """The torch model of a training checkpoint, fed the engine's reference preprocessing. It carries no
    familiarity reference (a bundle can: familiarize), so ``score_rows`` gives None for it."""

    kind = "checkpoint"

    def __init__(self, path: str | Path, *, threads: int | None = None, batch_size: int = 32) -> None:
        if threads:
            torch.set_num_threads(threads)
        try:
            self.model, self.info, _ = load_checkpoint(path)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise InputError(f"{path}: not a loadable checkpoint ({exc})") from None
        self.spec = PreprocessSpec(image_size=self.info.image_size)
        self.threshold = float(self.info.threshold.get("value", 0.5))
        self.name = f"{path} [{self.info.backbone} checkpoint]"
        self.batch_size = batch_size
        # the CSV and split it was trained on (train records it; stamp_checkpoint the all-data model's CSV), so
        # evaluate knows which rows it saw
        self.training_rows = training_rows(self.info.training.get("split"), self.info.metrics.get("training"))

    def score(self, samples: Sequence[Sample], *, progress: bool = False) -> np.ndarray:
        modalities = self.model.modalities
        size = self.spec.image_size
        out = np.zeros(len(samples), dtype=np.float64)
        starts = range(0, len(samples), self.batch_size)
        furniture = still_furniture(samples)
        for start in tqdm(starts, desc="scoring", unit="batch", file=sys.stderr, disable=not progress):
            chunk = samples[start : start + self.batch_size]
            panes = np.zeros((len(chunk), len(modalities), 3, size, size), dtype=np.float32)
            present = np.zeros((len(chunk), len(modalities)), dtype=np.float32)
            for j, sample in enumerate(chunk):
                if sample.modality not in modalities:
                    raise InputError(f"{sample.image}: modality {sample.modality!r} is not one of the model's {modalities}")
                frame = read_image(sample.image)
                slot = modalities.index(sample.modality)
                panes[j, slot] = preprocess_reference(frame, [sample.pane(frame, furniture=furniture).roi], self.spec)[0]
                present[j, slot] = 1.0
            with torch.no_grad():
                logits = self.model(torch.from_numpy(panes), torch.from_numpy(present))
            out[start : start + len(chunk)] = torch.sigmoid(logits.double()).numpy()
        return out
