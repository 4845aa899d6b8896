"""Labelled image lists (CSV of image, label, case_id, modality[, mask, roi, label_source]) and
case-level splits.

Shared by training (export/) and evaluation (runtime, no torch). Splits are by case, never by crop:
crops of one patient always land on the same side.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .frames import Pane, check_roi, widen_box

if TYPE_CHECKING:
    from .calipers import StillFurniture

LABELS = {"benign": 0, "malignant": 1, "0": 0, "1": 1}
# A roi of "calipers": the nodule box comes from the measurement calipers on the image (edge_thyroid.calipers).
CALIPERS = "calipers"


class Split(str, Enum):
    """Which rows of a labelled CSV: one side of the case-level split, or all of them."""

    TRAIN = "train"
    VAL = "val"
    ALL = "all"


@dataclass(frozen=True)
class Sample:
    image: Path
    label: int | None
    case_id: str
    modality: str = "bmode"
    mask: Path | None = None
    # the nodule box in the image (None: the whole image; CALIPERS: the box the image's calipers give)
    roi: tuple[int, int, int, int] | str | None = None
    label_source: str | None = None                # what the label is: "tirads", "pathology", ... (None: unknown)

    @property
    def labelled(self) -> bool:
        return self.label is not None

    def pane(self, frame: np.ndarray, context: float = 1.0, furniture: StillFurniture | None = None) -> Pane:
        """The pane the model sees for this row: its ``roi`` (checked to lie in the image) grown ``context``
        times within the image (the bundle's ``box_context``), or the whole image. ``furniture``: the screen
        furniture of the run's stills (:func:`still_furniture`), for a roi of calipers."""
        height, width = frame.shape[:2]
        if self.roi is None:
            return Pane(self.modality, (0, 0, width, height))
        roi = caliper_finding(frame, self.image, furniture).box if self.roi == CALIPERS else self.roi
        check_roi(roi, width, height, f"{self.image.name}: roi")
        return Pane(self.modality, widen_box(roi, context, (0, 0, width, height)))


def read_samples(csv_path: str | Path, *, labelled_only: bool = True) -> list[Sample]:
    """Read a sample list; relative paths resolve against the CSV's folder.

    Raises ValueError naming the row and column when a row is malformed.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"data CSV not found: {csv_path}")
    root = csv_path.parent
    samples: list[Sample] = []
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        required = {"image", "label", "case_id"}
        missing = required - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}; expected at least {sorted(required)}")
        # DDTI-style lists carry the TI-RADS category the label was binarised from
        tirads_column = "tirads" in (reader.fieldnames or ())
        for row_number, row in enumerate(reader, start=2):
            raw_label = (row.get("label") or "").strip().lower()
            if raw_label and raw_label not in LABELS:
                raise ValueError(f"{csv_path}:{row_number}: label {raw_label!r} is not one of benign/malignant/0/1")
            label = LABELS[raw_label] if raw_label else None
            if labelled_only and label is None:
                continue
            mask = (row.get("mask") or "").strip()
            samples.append(Sample(
                image=root / row["image"],
                label=label,
                case_id=str(row["case_id"]).strip(),
                modality=(row.get("modality") or "bmode").strip() or "bmode",
                mask=root / mask if mask else None,
                roi=_parse_roi(row.get("roi"), f"{csv_path}:{row_number}"),
                label_source=_label_source(row, tirads_column),
            ))
    if not samples:
        raise ValueError(f"{csv_path}: no {'labelled ' if labelled_only else ''}rows")
    return samples


def read_image_list(csv_path: str | Path) -> list[Sample]:
    """Images to classify, one a row: ``image`` and optional ``roi`` (x,y,w,h; empty: the whole image)
    and ``modality`` columns; relative paths resolve against the CSV's folder. No labels needed."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"image list not found: {csv_path}")
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        if "image" not in (reader.fieldnames or ()):
            raise ValueError(f"{csv_path}: no 'image' column; expected image[,roi][,modality]")
        samples = [Sample(image=csv_path.parent / row["image"], label=None, case_id="",
                          modality=(row.get("modality") or "bmode").strip() or "bmode",
                          roi=_parse_roi(row.get("roi"), f"{csv_path}:{row_number}"))
                   for row_number, row in enumerate(reader, start=2)]
    if not samples:
        raise ValueError(f"{csv_path}: no rows")
    return samples


def caliper_finding(frame: np.ndarray, image: Path, furniture: StillFurniture | None = None):
    """The caliper finding of a still image (edge_thyroid.calipers); InputError when it gives no box.

    A still has no live history to learn the screen's fixed furniture from (the stream has); the other
    screenshots of the run stand in for it (``furniture``, :func:`still_furniture`) when there are enough
    of its size, else the whole image is searched. Marks touching the image's edge are never calipers.
    """
    from .calipers import CaliperFinder
    from .errors import InputError

    finding = CaliperFinder().find(frame, None, furniture.mask(frame) if furniture is not None else None)
    if finding.box is None:
        raise InputError(f"image {image}: {len(finding.marks)} caliper mark(s) found; expected 2-4 '+' or 'x' marks "
                         "at the nodule's ends (or give the box as x,y,w,h)")
    return finding


def still_furniture(samples: Sequence[Sample]) -> StillFurniture | None:
    """The screen furniture learnt from the stills whose roi is calipers (None when there are none): every
    such image is read once more beforehand; one that cannot be read is left for its own turn to report."""
    from .calipers import StillFurniture
    from .errors import InputError
    from .frames import read_image

    images = [s.image for s in samples if s.roi == CALIPERS]
    if not images:
        return None
    furniture = StillFurniture()
    for image in images:
        try:
            furniture.add(read_image(image))
        except InputError:
            continue
    return furniture


def _parse_roi(text: str | None, where: str) -> tuple[int, int, int, int] | str | None:
    """The optional ``roi`` column: "x,y,w,h" in image pixels, "calipers" (the box the image's
    measurement calipers give), or empty for the whole image."""
    text = (text or "").strip()
    if not text:
        return None
    if text.lower() == CALIPERS:
        return CALIPERS
    try:
        x, y, w, h = (int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"{where}: roi {text[:40]!r} is not x,y,w,h (four integers) or 'calipers'; leave it empty "
                         "for the whole image") from None
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise ValueError(f"{where}: roi {text!r} is not a box; expected x, y >= 0 and w, h >= 1")
    return x, y, w, h


def _label_source(row: dict[str, str], tirads_column: bool) -> str | None:
    given = (row.get("label_source") or "").strip().lower()
    if given:
        return given
    return "tirads" if tirads_column else None


def case_folds(samples: Sequence[Sample], folds: int, seed: int = 0) -> list[int]:
    """Assign each sample a fold in [0, folds) by case, stratified by the case's majority label."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    case_labels: dict[str, list[int]] = {}
    for s in samples:
        case_labels.setdefault(s.case_id, []).append(-1 if s.label is None else s.label)
    rng = np.random.default_rng(seed)
    fold_of_case: dict[str, int] = {}
    for stratum in (-1, 0, 1):
        cases = sorted(c for c, ls in case_labels.items() if round(float(np.mean(ls))) == stratum
                       or (stratum == -1 and min(ls) == -1))
        cases = [c for c in cases if c not in fold_of_case]
        rng.shuffle(cases)
        offset = int(rng.integers(folds))
        for i, case in enumerate(cases):
            fold_of_case[case] = (i + offset) % folds
    return [fold_of_case[s.case_id] for s in samples]


def split_by_case(samples: Sequence[Sample], *, folds: int = 4, fold: int = 0,
                  seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """(train, validation): fold ``fold`` of ``folds`` case-level folds is the validation side."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}), got {fold}")
    assignment = case_folds(samples, folds, seed)
    train = [s for s, f in zip(samples, assignment) if f != fold]
    val = [s for s, f in zip(samples, assignment) if f == fold]
    return train, val
