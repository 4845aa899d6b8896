"""The classifier: a verified bundle + a backend + the NumPy fusion head.

``Engine.extract(frame, rois)`` runs the backbone (with fused preprocessing) on the panes that need
it; ``Engine.fuse(panes, maps)`` applies the head and returns a :class:`Prediction` with exact CAMs;
``Engine.classify(frame, panes)`` is both. The steps are separate so the stream can cache the
features of unchanged panes.

A bundle with a backbone per modality (late fusion) gets one backend per branch: ``extract`` sends
each pane to its modality's backbone, the panes of one branch in one batch, and the head fuses the
pooled features as for a shared backbone (its CAMs stay exact per modality).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .autoselect import AUTO, AutoChoice, select_backend
from . import __version__
from .backends import Backend, backend_class, backend_for_target
from .backends.base import EXECUTION_PRECISION
from .bundle import MANIFEST, Bundle, ModelEntry, load_bundle, sha256_file
from .errors import BackendError, BundleError, InputError
from .familiarity import Familiarity, FamiliarityReference
from .frames import Pane, Roi, as_frame, check_rois, pane_modalities, stack_maps
from .head import FusionHead, pool
from .kernels.graph_io import FRAME, ROIS

@dataclass
class PaneResult:
    modality: str
    roi: Roi
    feature_maps: np.ndarray  # [C, h, w]
    pooled: np.ndarray        # [C]
    ran: bool = True          # False: a pane the head does not read, not run; its maps and CAM are zeros


@dataclass
class Prediction:
    probability: float
    logit: float
    threshold: float
    contributions: dict[str, float]
    panes: list[PaneResult] = field(default_factory=list)
    head: FusionHead | None = field(default=None, repr=False)
    # How like the training crops the checked pane looks (None: the bundle has no reference, or its pane
    # was not given); a flag beside p, which it does not change.
    familiarity: Familiarity | None = None

    @property
    def malignant(self) -> bool:
        return self.probability >= self.threshold

    @property
    def decision(self) -> str:
        return "malignant" if self.malignant else "benign"

    def cam(self, modality: str) -> np.ndarray:
        """The exact class activation map of ``modality``'s pane at feature-map resolution."""
        for pane in self.panes:
            if pane.modality == modality:
                if not pane.ran:   # what the head computes from zero maps, without computing it
                    return np.zeros(pane.feature_maps.shape[-2:], dtype=np.float64)
                return self.head.cam(modality, pane.feature_maps)
        raise InputError(f"no {modality!r} pane in this prediction; panes are {[p.modality for p in self.panes]}")

    def to_dict(self) -> dict:
        return {
            "p_malignant": self.probability,
            "logit": self.logit,
            "decision": self.decision,
            "threshold": self.threshold,
            "modality_logits": self.contributions,
            "panes": [{"modality": p.modality, "roi": list(p.roi)} for p in self.panes],
            **({"familiarity": self.familiarity.to_dict()} if self.familiarity is not None else {}),
        }


def panes_to_run(modalities: Sequence[str], unread: Collection[str]) -> list[bool]:
    """Which panes go through the backbone: those of modalities the head reads (every pane when none
    would be left, so a prediction always has maps to size the rest by)."""
    run = [modality not in unread for modality in modalities]
    return run if any(run) else [True] * len(run)


def place_maps(run: Sequence[bool], maps: Iterable[np.ndarray]) -> list[np.ndarray | None]:
    """The maps of the panes that ran (in order) back in their panes' places; None where a pane did not run."""
    ran = iter(maps)
    return [next(ran) if runs else None for runs in run]


def fuse(head: FusionHead, panes: Sequence[Pane], maps: Sequence[np.ndarray | None],
         threshold: float = 0.5, unread: Collection[str] | None = None,
         familiarity: FamiliarityReference | None = None) -> Prediction:
    """Pool each pane's feature maps and apply the fusion head (for runners that have a head but no Engine).

    A None in ``maps`` is a pane of a modality the head does not read (``FusionHead.unread_modalities``,
    or ``unread`` when the caller has it already) that was not run: its maps are zeros, so its
    contribution (0) and its CAM (zeros) are exactly what running it would have given. ``familiarity``:
    the bundle's reference, checked on the pooled features of its modality's pane when that pane ran."""
    if any(m is None for m in maps) and unread is None:
        unread = head.unread_modalities()
    shape = next((np.shape(m) for m in maps if m is not None), None)
    results = []
    for pane, pane_maps in zip(panes, maps):
        if pane_maps is None:
            if pane.modality not in unread or shape is None:
                raise ValueError(f"the {pane.modality} pane was not run, but the head reads it "
                                 f"(unread: {sorted(unread)}) or no pane was run at all")
            channels = head.channels_of(head.modality_index(pane.modality))
            # Zeros pool to zeros: no pass over them (this and the CAM were ~0.1 ms of a 5 ms frame).
            results.append(PaneResult(pane.modality, pane.roi, np.zeros((channels, *shape[-2:]), np.float32),
                                      np.zeros(channels, np.float32), ran=False))
        else:
            results.append(PaneResult(pane.modality, pane.roi, pane_maps, pool(pane_maps)))
    out = head.predict({r.modality: r.pooled for r in results})
    checked = None
    if familiarity is not None:
        checked = next((familiarity.check(r.pooled) for r in results if r.modality == familiarity.modality and r.ran),
                       None)
    return Prediction(out.probability, out.logit, threshold, out.contributions, results, head, checked)


FAMILIARITY_HEADER = ("modality", "neighbours", "threshold", "crops")   # what a stream's header says of it


def load_familiarity(bundle: Bundle, head: FusionHead) -> FamiliarityReference | None:
    """The bundle's familiarity reference (None when it has none), checked against the head's width."""
    entry = bundle.manifest.familiarity
    if not entry:
        return None
    reference = FamiliarityReference.load(bundle.path(entry["file"]), entry["modality"], entry["neighbours"],
                                          float(entry["threshold"]))
    width = head.channels_of(head.modality_index(reference.modality))
    if reference.channels != width:
        raise BundleError(f"familiarity reference {entry['file']} holds {reference.channels}-channel features; "
                          f"the model's {reference.modality} features have {width}")
    return reference


class Engine:
    """Loads a bundle once; classifies frames. Use as a context manager or call close()."""

    def __init__(self, bundle: Bundle | str | Path, *, backend: str | None = None, model: str | None = None,
                 threads: int | None = None, retune: bool = False, every_pane: bool = False,
                 **backend_options) -> None:
        """``backend`` None: the one that runs the chosen model's target (ONNX Runtime for ONNX models);
        ``"auto"``: the fastest gated configuration on this machine (:mod:`edge_thyroid.autoselect`; the
        decision and its figures are kept in ``auto_choice``, ``retune`` measures them again).
        ``every_pane``: run panes of modalities the head does not read too (by default they are skipped:
        their answer is known, see ``unread_modalities``), e.g. to time every pane."""
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        manifest = self.bundle.manifest
        self.model_key, entry = self.bundle.model_entry(model)
        self.threads = threads
        self.auto_choice: AutoChoice | None = None
        if backend == AUTO:
            self.auto_choice = select_backend(self.bundle, type(self), model=self.model_key, threads=threads, retune=retune,
                                              execution_precision=backend_options.pop(EXECUTION_PRECISION, None))
            backend = self.auto_choice.backend
            if self.auto_choice.execution_precision is not None:
                backend_options[EXECUTION_PRECISION] = self.auto_choice.execution_precision
        target = entry.target.value
        backend_type = backend_class(backend or backend_for_target(target))
        if target not in backend_type.targets:
            raise BackendError(f"the {backend_type.name} backend cannot run model {self.model_key!r} ({entry.describe}, "
                               f"target {target}); expected a model of target {list(backend_type.targets)}, or "
                               f"--backend {backend_for_target(target)} for this one")
        self.head = FusionHead.load(self.bundle.path(manifest.head_file), manifest.modalities)
        self.threshold = manifest.threshold.value
        self.familiarity = load_familiarity(self.bundle, self.head)
        # A B-mode-only model's SMI and SWE panes would cost two of three backbone passes for a
        # contribution that is exactly 0: they are not run.
        self.unread_modalities: frozenset[str] = frozenset() if every_pane else frozenset(self.head.unread_modalities())
        # modality -> its backbone's backend; empty for a bundle whose modalities share one backbone.
        self.branches: dict[str, Backend] = {}
        if entry.branches and not backend_type.runs_branches:
            raise BackendError(f"the {backend_type.name} backend cannot run a bundle with a backbone per modality "
                               f"({entry.describe}); use --backend onnxruntime or openvino")
        try:
            for modality, branch in (entry.branches or {None: entry}).items():
                backend_ = self._load_backend(backend_type, branch, threads, backend_options)
                if modality is None:
                    self.backend = backend_
                else:
                    self.branches[modality] = backend_
        except BaseException:
            self.close()
            raise
        if self.branches:  # what reports name (runtime, providers): every branch runs on the same one
            self.backend = next(iter(self.branches.values()))

    def _load_backend(self, backend_type: type[Backend], entry: ModelEntry, threads: int | None,
                      options: dict[str, Any]) -> Backend:
        backend = backend_type.from_bundle(self.bundle, entry, threads=threads, **options)
        backend.load()
        # A model with another signature would pass the hash check and fail only at the first frame.
        inputs = set(backend.input_names)
        if inputs and inputs != {FRAME, ROIS}:
            backend.close()
            raise BundleError(f"model {entry.file} takes inputs {sorted(inputs)}; expected {sorted((FRAME, ROIS))} "
                              "(uint8 frame + int64 ROIs)")
        return backend

    @property
    def branched(self) -> bool:
        """True when each modality has its own backbone (the pane cache then keys by branch)."""
        return bool(self.branches)

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.bundle.manifest.modalities

    @property
    def box_context(self) -> float:
        """How many times a nodule box is grown (within its pane) before this model sees it (1: as given)."""
        return self.bundle.manifest.box_context

    @property
    def trained_modalities(self) -> tuple[str, ...]:
        """The modalities the model learned (empty: not recorded, so every modality counts as trained)."""
        return self.bundle.manifest.trained_modalities

    def identity(self) -> dict[str, Any]:
        """What a record needs to say which model ran: engine version, bundle (path and manifest sha256),
        model key and precision, backend and threads, and with --backend auto the choice and its figures."""
        entry = self.bundle.model_entry(self.model_key)[1]
        return {"version": __version__,
                "bundle": {"path": str(self.bundle.root), "manifest_sha256": sha256_file(self.bundle.path(MANIFEST))},
                "model": {"key": self.model_key, "precision": entry.precision.value,
                          "trained_modalities": list(self.trained_modalities), "box_context": self.box_context,
                          "test_time_flip": self.bundle.manifest.test_time_flip,
                          "panes_not_run": sorted(self.unread_modalities),
                          "familiarity": ({k: self.bundle.manifest.familiarity.get(k) for k in FAMILIARITY_HEADER}
                                          if self.familiarity is not None else None)},
                "backend": self.backend.name, "threads": self.threads,
                "backend_auto": self.auto_choice.to_dict() if self.auto_choice is not None else None}

    def extract(self, frame: np.ndarray, rois: Sequence[Roi],
                modalities: Sequence[str] | None = None) -> np.ndarray | list[np.ndarray]:
        """Feature maps [N, C, h, w] of the given panes (frame validated, ROIs checked).

        With a backbone per modality, pane i goes to the backbone of ``modalities[i]`` (default: the
        bundle's modalities in order), one batch per branch; the maps come back in pane order, as a
        list when the branches' maps differ in shape."""
        frame = as_frame(frame)
        roi_array = check_rois(rois, frame.shape[0], frame.shape[1])
        if len(roi_array) == 0:
            raise InputError("no panes given; expected 1 to 3 ROIs")
        if not self.branches:
            return self.backend.infer({FRAME: frame, ROIS: roi_array})["feature_maps"]
        names = pane_modalities(len(roi_array), modalities, self.modalities)
        out: list[np.ndarray | None] = [None] * len(names)
        for modality in dict.fromkeys(names):
            if modality not in self.branches:
                raise InputError(f"unknown modality {modality!r}; this model has backbones for {list(self.branches)}")
            index = [i for i, name in enumerate(names) if name == modality]
            maps = self.branches[modality].infer({FRAME: frame, ROIS: roi_array[index]})["feature_maps"]
            for i, pane_maps in zip(index, maps):
                out[i] = pane_maps
        return stack_maps(out)  # type: ignore[arg-type]

    def classify(self, frame: np.ndarray, panes: Sequence[Pane]) -> Prediction:
        if not panes:
            raise InputError("no panes given; expected at least one (modality, ROI)")
        seen = set()
        for pane in panes:
            self.head.modality_index(pane.modality)
            if pane.modality in seen:
                raise InputError(f"modality {pane.modality!r} is given twice; expected one pane per modality")
            seen.add(pane.modality)
        run = panes_to_run([p.modality for p in panes], self.unread_modalities)
        chosen = [p for p, runs in zip(panes, run) if runs]
        return self.fuse(panes, place_maps(run, self.extract(frame, [p.roi for p in chosen],
                                                             [p.modality for p in chosen])))

    def fuse(self, panes: Sequence[Pane], maps: Sequence[np.ndarray | None]) -> Prediction:
        """The head over the panes' feature maps [C, h, w] (one per pane, in order; None for a pane of an
        unread modality that was not run): p(malignant), per-modality logits and exact CAMs. Every
        caller fuses here: classify, the stream, the bench."""
        return fuse(self.head, panes, maps, self.threshold, self.unread_modalities, self.familiarity)

    def close(self) -> None:
        for backend in {id(b): b for b in [*self.branches.values(), getattr(self, "backend", None)] if b}.values():
            backend.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
