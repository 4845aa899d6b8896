"""Writing a bundle's familiarity reference (:mod:`edge_thyroid.familiarity`) from its training crops.

The features come from the bundle's own model through the engine (its backend, its precision, its
nodule-box context and mirror-image average), so the reference measures what the workstation will
compute. The reference goes into the bundle folder as ``familiarity.npz``; the manifest records it with
its sha256, and the old signature, which no longer matches the manifest, is removed (sign again).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle, load_bundle, sha256_file, write_manifest
from .dataset import Sample, read_samples, split_by_case
from .errors import BundleError, InputError
from .evaluation import row_predictions
from .familiarity import DEFAULT_NEIGHBOURS, DEFAULT_QUANTILE, NOTE, FamiliarityReference
from .signing import SIGNATURE

FILE = "familiarity.npz"


def training_rows(csv_path: str | Path, *, folds: int | None = None, fold: int = 0,
                  seed: int = 0) -> list[Sample]:
    """The rows a model was trained on: every row (``folds`` None), or the training side of the case-level
    split, labelled rows as evaluation splits them plus the unlabelled rows of cases outside its
    validation side (the recipe trains its mask heads on those)."""
    try:
        rows = read_samples(csv_path, labelled_only=False)
        if folds is None:
            return rows
        labelled = [s for s in rows if s.labelled]
        train, val = split_by_case(labelled, folds=folds, fold=fold, seed=seed)
    except (ValueError, FileNotFoundError) as exc:
        raise InputError(str(exc)) from None
    held_out = {s.case_id for s in val}
    return train + [s for s in rows if not s.labelled and s.case_id not in held_out]


def pooled_features(engine: Any, samples: Sequence[Sample], *, progress: bool = False) -> np.ndarray:
    """[N, C] pooled features of each row's pane (as scoring makes it: ``evaluation.row_predictions``)
    from the engine's model; the rows' modality must be the reference's."""
    predictions = row_predictions(engine, samples, progress=progress, desc="features")
    return np.stack([prediction.panes[0].pooled for prediction in predictions]).astype(np.float64)


def require_folder(path: str | Path) -> Path:
    """``path`` as a Path, when it is a bundle folder: a reference is written into one, never into a zip."""
    if not Path(path).is_dir():
        raise BundleError(f"{path} is not a bundle folder; a familiarity reference is written into a "
                          "folder (unzip the bundle first)")
    return Path(path)


def attach_reference(bundle: Bundle, reference: FamiliarityReference, details: dict[str, Any]) -> bool:
    """Write ``reference`` into the folder of ``bundle`` (loaded, so its files and signature were checked)
    and record it in the manifest; returns True when a signature was removed (it signed the manifest
    before this change)."""
    root = require_folder(bundle.root)
    manifest = replace(bundle.manifest)   # the loaded bundle's own manifest stays as it was read
    if reference.modality not in manifest.modalities:
        raise InputError(f"the reference is of modality {reference.modality!r}; this bundle's are "
                         f"{list(manifest.modalities)}")
    staging = root / f".{FILE}.tmp"
    reference.save_bank(staging)
    staging.replace(root / FILE)
    manifest.familiarity = {"file": FILE, "modality": reference.modality, "neighbours": reference.neighbours,
                            "threshold": reference.threshold, **details, "note": NOTE}
    signature = root / SIGNATURE
    signed = signature.exists()
    if signed:  # it vouches for the old manifest; left in place it would make the bundle unloadable
        signature.unlink()
    write_manifest(root, manifest)
    load_bundle(root, ignore_signature=True)  # what was written reads back (hashes, fields); unsigned now
    return signed


def familiarize(bundle_path: str | Path, csv_path: str | Path, *, folds: int | None = None, fold: int = 0,
                seed: int = 0, neighbours: int = DEFAULT_NEIGHBOURS, quantile: float = DEFAULT_QUANTILE,
                threads: int | None = None, progress: bool = False) -> tuple[FamiliarityReference, dict[str, Any], bool]:
    """Score the training rows with the bundle, build the reference, write it: (reference, what the
    manifest records, whether a signature was removed)."""
    from .engine import Engine

    require_folder(bundle_path)   # before minutes of feature extraction, not after
    samples = training_rows(csv_path, folds=folds, fold=fold, seed=seed)
    modalities = {s.modality for s in samples}
    with Engine(bundle_path, threads=threads) as engine:
        modality = next(iter(modalities)) if len(modalities) == 1 else None
        if modality is None or modality not in engine.modalities:
            raise InputError(f"{csv_path} has rows of modalities {sorted(modalities)}; expected one modality the "
                             f"bundle reads ({list(engine.modalities)})")
        cases = {s.case_id for s in samples}
        if len(cases) < 2:
            raise InputError(f"{csv_path} holds {len(samples)} rows of {len(cases)} case; the threshold leaves each "
                             "case out, so at least two cases are needed")
        features = pooled_features(engine, samples, progress=progress)
        bundle = engine.bundle
    reference = FamiliarityReference.build(modality, features, [s.case_id for s in samples],
                                           neighbours=neighbours, quantile=quantile)
    details = {"quantile": quantile, "crops": len(samples), "cases": len(cases),
               "data": {"csv": os.path.basename(str(csv_path)), "sha256": sha256_file(csv_path),
                        "rows": "all" if folds is None else f"training side of case split fold {fold}/{folds}, seed {seed}"}}
    signed = attach_reference(bundle, reference, details)
    return reference, details, signed
