"""How like the model's training crops a pane looks, in the model's own feature space.

A classifier scores whatever it is handed: a breast image, an inverted or blank pane, a scanner it
never met. Its p is then a number with nothing behind it. The bundle can carry a *familiarity
reference*: the pooled B-mode features of the crops the model was trained on (L2-normalised, float16).
A pane's **distance** is one minus the cosine similarity of its pooled features to their k-th nearest
training crop (k-nearest-neighbour out-of-distribution scoring on the penultimate features); above the
reference's **threshold** the pane is *unfamiliar*. The threshold is a quantile of the training crops'
own distances with every crop of the same case left out, so it stands for a crop of a patient the model
has not seen (a crop would otherwise find itself or its sibling crops at distance ~0).

It is a flag, not a decision: p and the decision stay as they are, and the record says how far the
pane is from what the model knows. The raw cosine is used, the features not centred: with their mean
removed, the shipped model's inverted, blank and noise copies of its crops fell among its own crops'
leave-case-out distances (14%, 45% and 0% flagged at k=5, against 100% each raw), because what sets
them apart is mostly the direction of the ReLU features' common part, which centring removes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError, InputError
from .manifest_fields import file_name

DEFAULT_NEIGHBOURS = 5
DEFAULT_QUANTILE = 0.95
ROWS_PER_BLOCK = 1024   # leave-case-out distances are computed this many rows at a time
NOTE = ("distance: 1 - cosine similarity of the pane's pooled features to their k-th nearest training crop; "
        "above threshold the pane is unlike every crop the model was trained on (a flag, p is unchanged)")


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float64); an all-zero row stays zero (cosine similarity 0 to everything)."""
    rows = np.atleast_2d(np.asarray(features, dtype=np.float64))
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def neighbour_distance(queries: np.ndarray, bank: np.ndarray, neighbours: int) -> np.ndarray:
    """1 - cosine similarity of each query row to its ``neighbours``-th most similar bank row ([Q])."""
    if not 1 <= neighbours <= len(bank):
        raise InputError(f"neighbours is {neighbours}; expected 1..{len(bank)} (the bank's rows)")
    similarity = normalise(queries) @ normalise(bank).T
    kth = np.partition(similarity, -neighbours, axis=1)[:, -neighbours]
    return 1.0 - kth


def leave_group_out_distance(features: np.ndarray, groups: Sequence[str], neighbours: int) -> np.ndarray:
    """Each row's :func:`neighbour_distance` to the rows of *other* groups (cases): what a crop of an
    unseen patient would measure, without a held-out set."""
    groups = np.asarray(groups)
    if len(groups) != len(features):
        raise InputError(f"{len(groups)} groups for {len(features)} feature rows; expected one group per row")
    others = len(groups) - np.bincount(np.unique(groups, return_inverse=True)[1]).max()
    if not 1 <= neighbours <= others:
        raise InputError(f"neighbours is {neighbours}; expected 1..{others} (rows outside the largest group)")
    bank = normalise(features)
    out = np.empty(len(bank))
    for start in range(0, len(bank), ROWS_PER_BLOCK):   # blocks: 50,000 crops need 400 MB, not 20 GB
        rows = slice(start, start + ROWS_PER_BLOCK)
        similarity = bank[rows] @ bank.T
        similarity[groups[rows, None] == groups[None, :]] = -np.inf
        out[rows] = 1.0 - np.partition(similarity, -neighbours, axis=1)[:, -neighbours]
    return out


def manifest_entry(entry: Mapping[str, Any], modalities: Sequence[str], source: str) -> dict[str, Any]:
    """The manifest's optional ``familiarity`` entry, checked: a file inside the bundle, one of its
    modalities, k >= 1 and a cosine distance threshold in [0, 2]. Empty: the bundle has no reference."""
    entry = dict(entry)
    if not entry:
        return entry
    entry["file"] = file_name(entry.get("file"), "familiarity.file")
    if entry.get("modality") not in modalities:
        raise BundleError(f"{source}: familiarity.modality is {entry.get('modality')!r}; expected one of {list(modalities)}")
    neighbours, threshold = entry.get("neighbours"), entry.get("threshold")
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise BundleError(f"{source}: familiarity.neighbours is {neighbours!r}; expected an integer >= 1")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 2.0:
        raise BundleError(f"{source}: familiarity.threshold is {threshold!r}; expected a cosine distance in [0, 2]")
    return entry


@dataclass(frozen=True)
class Familiarity:
    distance: float
    threshold: float

    @property
    def familiar(self) -> bool:
        return self.distance <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"distance": round(self.distance, 6), "threshold": round(self.threshold, 6), "familiar": self.familiar}


@dataclass(frozen=True)
class FamiliarityReference:
    """The training crops' normalised pooled features of one modality, k and the threshold."""

    modality: str
    bank: np.ndarray        # [N, C], unit rows
    neighbours: int
    threshold: float

    def __post_init__(self) -> None:
        if self.bank.ndim != 2 or len(self.bank) < self.neighbours or self.neighbours < 1:
            raise BundleError(f"familiarity reference has a bank of shape {self.bank.shape} for k={self.neighbours}; "
                              "expected [N, C] with N >= k >= 1")
        if not (np.all(np.isfinite(self.bank)) and np.isfinite(self.threshold) and 0.0 <= self.threshold <= 2.0):
            raise BundleError(f"familiarity reference holds non-finite features or threshold {self.threshold}; "
                              "expected finite features and a threshold in [0, 2]")

    @property
    def channels(self) -> int:
        return int(self.bank.shape[1])

    @classmethod
    def build(cls, modality: str, features: np.ndarray, groups: Sequence[str], *,
              neighbours: int = DEFAULT_NEIGHBOURS, quantile: float = DEFAULT_QUANTILE) -> "FamiliarityReference":
        """From the training crops' pooled features and their cases: the threshold is the ``quantile`` of
        their leave-case-out distances."""
        if not 0.0 < quantile <= 1.0:
            raise InputError(f"quantile is {quantile}; expected a share in (0, 1]")
        distances = leave_group_out_distance(features, groups, neighbours)
        bank = normalise(features).astype(np.float16).astype(np.float32)  # what a bundle will hold
        return cls(modality, bank, neighbours, float(np.quantile(distances, quantile)))

    def check(self, pooled: np.ndarray) -> Familiarity:
        """The pane's distance (its pooled features [C]) against the threshold: one [N, C] x [C] product."""
        vector = np.asarray(pooled, dtype=np.float64).reshape(-1)
        if vector.shape[0] != self.channels:
            raise InputError(f"{self.modality} features have {vector.shape[0]} channels; the familiarity "
                             f"reference has {self.channels}")
        similarity = self.bank @ normalise(vector)[0].astype(self.bank.dtype)
        kth = float(np.partition(similarity, -self.neighbours)[-self.neighbours])
        # float16 rows are unit only to ~1e-3: a pane identical to a training crop must not read as -0.0004
        return Familiarity(min(max(1.0 - kth, 0.0), 2.0), self.threshold)

    def save_bank(self, path: str | Path) -> None:
        """The bank alone (float16); modality, k and the threshold live in the signed manifest."""
        with open(path, "wb") as handle:
            np.savez(handle, bank=self.bank.astype(np.float16))

    @classmethod
    def load(cls, path: str | Path, modality: str, neighbours: int, threshold: float) -> "FamiliarityReference":
        try:
            with np.load(path, allow_pickle=False) as data:
                bank = data["bank"].astype(np.float32)
        except Exception as exc:  # corrupt npz: BadZipFile, KeyError, ValueError, ... from numpy/zipfile
            raise BundleError(f"familiarity reference {path} is unreadable ({type(exc).__name__}: {str(exc)[:120]}); "
                              "expected an .npz with bank [N, C]") from None
        return cls(modality, bank, neighbours, threshold)
