"""Pane cache: each pane's feature maps, reused while its pixels stay the same.

Each pane's pixels are compared (subsampled, mean absolute difference) with the pixels its cached
features came from; only changed panes go through the backbone (``extract`` on just those ROIs),
unchanged ones reuse their feature maps. A frozen screen costs no inference at all; an SWE pane
refreshing at 2 Hz is re-run twice a second.

With a backbone per modality the cache keys each entry by (branch, ROI): maps from one branch are
never served for a pane of another, and the changed panes are extracted with their modalities, so
the engine batches them per branch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from ..errors import InputError
from ..frames import Roi, pane_modalities, stack_maps
from ..inputs import BLANK_STD


class Extractor(Protocol):
    """What the cache needs of the engine: feature maps [N, C, h, w] of the given panes (a branched
    engine also takes the panes' modalities)."""

    def extract(self, frame: np.ndarray, rois: Sequence[Roi]) -> np.ndarray: ...


@dataclass
class PaneCheck:
    roi: Roi
    signature: np.ndarray
    blank: bool
    unchanged: bool             # same pixels as when its cached maps were computed
    cached: np.ndarray | None   # feature maps [C, h, w] reusable for this pane (cache on), or None: run it
    branch: str | None = None   # the modality whose backbone computes it (None: one shared backbone)

    @property
    def key(self) -> tuple[str | None, Roi]:
        return self.branch, self.roi


class PaneCache:
    """Feature maps per pane ROI, reused while the pane's pixels stay the same.

    "The same" = mean absolute difference of a subsampled copy (every ``stride``-th pixel) against the
    pixels the cached maps came from, at most ``threshold`` grey levels: exact repeats (a freeze, an
    SWE pane between refreshes) and compression noise hit; live speckle (differences of 10+) misses.
    Comparing with the cached pane, not the previous frame, means slow drift still triggers a re-run.
    """

    def __init__(self, engine: Extractor, threshold: float = 1.0, stride: int = 4, enabled: bool = True,
                 blank_std: float = BLANK_STD) -> None:
        if not (math.isfinite(threshold) and threshold >= 0):
            raise InputError(f"change threshold {threshold} must be a finite number >= 0 grey levels")
        self.engine = engine
        self.threshold = threshold
        self.stride = max(1, int(stride))
        self.enabled = enabled
        self.blank_std = blank_std
        self.entries: dict[tuple[str | None, Roi], tuple[np.ndarray, np.ndarray]] = {}
        self.hits = 0
        self.misses = 0

    def signature(self, frame: np.ndarray, roi: Roi) -> np.ndarray:
        x, y, w, h = roi
        step = self.stride if min(w, h) >= 8 * self.stride else 1
        return np.ascontiguousarray(frame[y:y + h:step, x:x + w:step])

    def check(self, frame: np.ndarray, roi: Roi, branch: str | None = None) -> PaneCheck:
        """``branch``: the pane's modality when the engine has a backbone per modality, else None."""
        signature = self.signature(frame, roi)
        _, std = cv2.meanStdDev(signature)
        blank = float(std.max()) < self.blank_std
        unchanged = False
        entry = self.entries.get((branch, roi))
        if entry is not None and entry[0].shape == signature.shape:
            difference = float(np.mean(cv2.mean(cv2.absdiff(entry[0], signature))[:3]))
            unchanged = difference <= self.threshold
        # With the cache off, change detection still runs (a frozen screen is still noticed).
        return PaneCheck(roi, signature, blank, unchanged, entry[1] if (unchanged and self.enabled) else None, branch)

    def store(self, check: PaneCheck, maps: np.ndarray) -> None:
        self.entries[check.key] = (check.signature, maps)

    def retain(self, rois: Sequence[Roi], branches: Sequence[str | None] | None = None) -> None:
        """Forget panes no longer on screen (a layout change): the cache stays bounded."""
        keep = set(zip(branches if branches is not None else [None] * len(rois), rois))
        for key in [k for k in self.entries if k not in keep]:
            del self.entries[key]

    def run(self, frame: np.ndarray, checks: Sequence[PaneCheck]) -> list[np.ndarray]:
        """Maps for every check: cached ones reused, the others extracted in one batch and stored."""
        todo = [c for c in checks if c.cached is None]
        self.hits += len(checks) - len(todo)
        self.misses += len(todo)
        fresh = iter(self._extract(frame, todo)) if todo else iter(())
        out = []
        for check in checks:
            if check.cached is None:
                maps = np.array(next(fresh), copy=True)  # own the memory, not a view of the batch
                self.store(check, maps)
                out.append(maps)
            else:
                out.append(check.cached)
        return out

    def _extract(self, frame: np.ndarray, todo: Sequence[PaneCheck]) -> Sequence[np.ndarray]:
        rois = [c.roi for c in todo]
        if all(c.branch is None for c in todo):
            return self.engine.extract(frame, rois)
        return self.engine.extract(frame, rois, [c.branch for c in todo])  # type: ignore[call-arg]

    def extract(self, frame: np.ndarray, rois: Sequence[Roi],
                modalities: Sequence[str] | None = None) -> np.ndarray | list[np.ndarray]:
        """``Engine.extract`` with the cache: maps [N, C, h, w] for ``rois``, re-running only changed panes.
        A branched engine's panes go to ``modalities`` (default, as the engine: its modalities in order),
        and maps of branches that differ in shape come back as a list."""
        rois = [tuple(int(v) for v in r) for r in np.asarray(rois).reshape(-1, 4).tolist()]
        branches: list[str | None] = [None] * len(rois)
        if getattr(self.engine, "branched", False):
            # One per pane, checked: zip() below would silently drop the panes without a modality.
            branches = list(pane_modalities(len(rois), modalities, self.engine.modalities))  # type: ignore[attr-defined]
        self.retain(rois, branches)
        maps = self.run(frame, [self.check(frame, r, b) for r, b in zip(rois, branches)])
        return stack_maps(maps)
