"""The classify step: one captured frame -> a :class:`StreamResult`.

Per frame: resolve the layout for the frame's size, choose the nodule box the B-mode pane is
classified on (:mod:`.nodule`; none: abstain ``no_roi``), check each pane against the pane cache
(blank? unchanged?), run the backbone on the changed panes only, fuse with the head (``Engine.fuse``; reused
while nothing changed), and pass p(malignant) through the temporal filter. A frame that cannot be
classified is an abstention with its reason, never an exception.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..control import ControlChange
from ..engine import Prediction, panes_to_run, place_maps
from ..errors import InputError, ServerUnavailableError
from ..frames import Pane, Roi, widen_box
from ..head import FusionHead, sigmoid
from ..inputs import size_problem
from ..layout import Layout, Modality, preset
from ..prevalence import Prevalence
from ..sources import Captured
from ..temporal import Reason, TemporalFilter
from .cache import PaneCache
from .nodule import CONTROL, BoxChoice, NoduleBox
from .records import ControlRecord, GapRecord, PaneRecord, StreamResult


class EngineLike(Protocol):
    """What the stream needs of :class:`edge_thyroid.engine.Engine` (tests pass slow fakes)."""

    head: FusionHead
    threshold: float
    box_context: float      # a nodule box is grown this many times (within its pane) before the model sees it
    unread_modalities: frozenset[str]  # panes of these are checked but not run: the head ignores them

    @property
    def modalities(self) -> tuple[str, ...]: ...

    @property
    def trained_modalities(self) -> tuple[str, ...]: ...

    def identity(self) -> dict[str, Any]: ...

    def extract(self, frame: np.ndarray, rois: Sequence[Roi]) -> np.ndarray: ...

    def fuse(self, panes: Sequence[Pane], maps: Sequence[np.ndarray | None]) -> Prediction: ...


def choose_layout(engine: EngineLike, requested: Layout | None, hint: Layout | None) -> Layout:
    """The requested layout, else the source's own (DICOM regions), else the whole frame as B-mode."""
    layout = requested or hint or preset("full")
    unknown = [m for m in layout.modalities if m not in engine.modalities]
    if unknown:
        raise InputError(f"layout {layout.name!r} has pane(s) {unknown} the model does not know; the bundle's "
                         f"modalities are {list(engine.modalities)}")
    return layout


class FrameClassifier:
    """Classifies frames of one stream; keeps what carries over between frames (the resolved layout,
    the nodule box, the last fused prediction, when the screen last changed)."""

    def __init__(self, engine: EngineLike, layout: Layout, cache: PaneCache, temporal: TemporalFilter, *,
                 media_fps: float, lossless: bool, keep_frames: bool, nodule: NoduleBox | None = None,
                 abstain_unfamiliar: bool = False, prevalence: Prevalence | None = None) -> None:
        self.engine = engine
        self.layout = layout
        self.cache = cache
        self.temporal = temporal
        self.media_fps = media_fps
        self.lossless = lossless
        self.keep_frames = keep_frames
        self.abstain_unfamiliar = abstain_unfamiliar
        # Applied to what the result shows, after the temporal filter decided on the model's own p.
        self.prevalence = prevalence
        self.nodule = nodule or NoduleBox()
        self.last_change_ts: float | None = None
        self.last_fused: Prediction | None = None
        self._resolved: tuple[tuple[int, int], Layout] | None = None
        # A modality the model never learned has no p of its own; empty: not recorded, all count as trained.
        self.trained = set(engine.trained_modalities or engine.modalities)
        self.gaps: list[GapRecord] = []          # server outages that ended, for the caller to forward
        self._outage: dict | None = None         # open while a remote backend does not answer
        self._classified = 0
        # A backbone per modality: cached maps belong to a branch (engines without the attribute share one).
        self._branched = bool(getattr(engine, "branched", False))

    def _branch(self, modality: str) -> str | None:
        return modality if self._branched else None

    def _layout_for(self, width: int, height: int) -> Layout:
        if self._resolved is None or self._resolved[0] != (width, height):
            resolved = self.layout.resolve(width, height)
            for pane in resolved.engine_panes():
                too_small = size_problem(pane.roi[2], pane.roi[3])
                if too_small:
                    raise InputError(f"layout {resolved.name!r}: the {pane.modality} pane {list(pane.roi)} of the "
                                     f"{width}x{height} frame: {too_small}")
            self._resolved = ((width, height), resolved)
            engine_panes = self._resolved[1].engine_panes()
            self.cache.retain([p.roi for p in engine_panes], [self._branch(p.modality) for p in engine_panes])
            self.last_fused = None
        return self._resolved[1]

    def check_fits(self, item: Captured) -> None:
        """An InputError when the layout does not fit this frame (a frame with a problem is left to classify)."""
        if item.problem is None:
            self._layout_for(item.frame.shape[1], item.frame.shape[0])
    # -- control-channel changes -------------------------------------------------------------------

    def check(self, change: ControlChange) -> None:
        """Refuse, while the client waits for its reply, a change that does not fit the current screen."""
        resolved = self._resolved
        if change.kind == "layout":
            assert change.layout is not None
            choose_layout(self.engine, change.layout, None)
            if resolved is not None:
                change.layout.resolve(*resolved[0])
        elif change.roi is not None and resolved is not None:
            _check_box(change.roi, resolved[1])

    def apply(self, change: ControlChange, frame: int) -> ControlRecord:
        """Apply a change from the next frame on; one that no longer fits is refused, nothing changes."""
        try:
            self.check(change)
            if change.kind == "layout":
                assert change.layout is not None
                self.layout, self._resolved = change.layout, None
                self.nodule.reset()
            else:
                self.nodule.set_operator(change.roi, CONTROL)
        except InputError as exc:
            return ControlRecord(frame, change.to_dict(), False, str(exc), time.time())
        return ControlRecord(frame, change.to_dict(), True, None, time.time())

    def _fused(self, panes: Sequence[Pane], maps: Sequence[np.ndarray], changed: bool) -> Prediction:
        """The head's answer for these panes, recomputed only when a pane changed or the set of panes did."""
        last = self.last_fused
        if changed or last is None or [p.modality for p in last.panes] != [p.modality for p in panes]:
            self.last_fused = self.engine.fuse(panes, maps)
        return self.last_fused

    def classify(self, item: Captured) -> StreamResult:
        """The frame's result; the stream's counters (processed, dropped, cache hits, gaps) are left at 0
        for the caller to stamp."""
        picked = time.monotonic()
        stages = {"capture": item.decode_ms,
                  "wait": max(0.0, (picked - item.timestamp) * 1000.0 - item.decode_ms)}
        frame = item.frame
        mark = picked
        panes: list[PaneRecord] = []
        prediction = None
        p = logit = None
        familiarity = None
        choice = BoxChoice(None, None)   # what the records say of the box when the frame fails early
        model_roi: Roi | None = None
        asked_backend = False  # some pane went to the backend (not all from the pane cache)

        def lap(stage: str) -> None:
            nonlocal mark
            now = time.monotonic()
            stages[stage] = (now - mark) * 1000.0
            mark = now

        try:
            if item.problem is not None:
                raise InputError(item.problem)
            layout = self._layout_for(frame.shape[1], frame.shape[0])
            bmode = layout.pane(Modality.BMODE)
            if bmode is not None:   # without one, no box: the other panes are classified as they are
                choice = self.nodule.choose(frame, bmode.roi, layout.nodule)
                if choice.roi is not None:   # the model sees the box with the tissue around it its bundle asks for
                    model_roi = widen_box(choice.roi, self.engine.box_context, bmode.roi)
            engine_panes = [Pane(p.modality.value, model_roi if p is bmode and model_roi else p.roi)
                            for p in layout.panes]
            branches = [self._branch(pane.modality) for pane in engine_panes]
            self.cache.retain([pane.roi for pane in engine_panes], branches)   # a moving box must not grow the cache
            checks = [self.cache.check(frame, pane.roi, branch) for pane, branch in zip(engine_panes, branches)]
            panes = [PaneRecord(p.modality.value, p.roi, c.cached is not None, c.blank,
                                trained=p.modality.value in self.trained) for p, c in zip(layout.panes, checks)]
            lap("preprocess")
            live = [(pane, check) for pane, check in zip(engine_panes, checks) if not check.blank]
            bmode_blank = any(p.blank for p in panes if p.modality == Modality.BMODE.value)
            if not live or bmode_blank:
                verdict = self.temporal.abstain(Reason.BLANK, "the B-mode pane is blank" if bmode_blank
                                                else "every pane is blank")
                self.last_change_ts = None
            elif bmode is not None and choice.roi is None:
                # No nodule box: no answer about a whole pane (the model was trained on nodule crops).
                for pane_record in panes:
                    pane_record.cached = False
                if choice.lost:
                    verdict = self.temporal.abstain(Reason.ROI_LOST, "the operator's box could not be followed: "
                                                    "the view changed too much; send a new box or place calipers")
                else:
                    verdict = self.temporal.abstain(Reason.NO_ROI, "no nodule box: give one in the layout, over the "
                                                    "control channel or with calipers (or stream --whole-pane)")
            else:
                # Panes the head does not read are checked (blank, changed) but never run: their maps are
                # known to contribute exactly nothing (Engine.unread_modalities).
                run = panes_to_run([pane.modality for pane, _ in live], self.engine.unread_modalities)
                checks = [c for (_, c), runs in zip(live, run) if runs]
                asked_backend = any(c.cached is None for c in checks)
                maps = place_maps(run, self.cache.run(frame, checks))
                changed = not all(c.unchanged for _, c in live)
                lap("infer")
                fused = self._fused([pane for pane, _ in live], maps, changed)
                p, logit, familiarity = fused.probability, fused.logit, fused.familiarity
                for pane_record in panes:
                    if pane_record.modality in fused.contributions:
                        pane_record.logit = fused.contributions[pane_record.modality]
                        pane_record.p = sigmoid(self.engine.head.bias + pane_record.logit)
                if self.keep_frames:
                    prediction = fused
                lap("head")
                # Temporal logic runs on stream time: the capture clock live, the frame's place in the
                # recording when replaying as fast as possible (wall time would compress a 2 s freeze).
                now = item.index / self.media_fps if self.lossless else item.timestamp
                if changed or self.last_change_ts is None:
                    self.last_change_ts = now
                if self.abstain_unfamiliar and familiarity is not None and not familiarity.familiar:
                    # p stays in the record for the audit; no decision is shown on it
                    verdict = self.temporal.abstain(Reason.UNFAMILIAR, (
                        f"the B-mode pane is unlike the model's training crops (distance {familiarity.distance:.4f} "
                        f"> {familiarity.threshold:.4f})"))
                else:
                    verdict = self.temporal.update(now, p, frozen_for_s=now - self.last_change_ts)
        except InputError as exc:
            # A frame of another size, a non-finite output, ...: abstain with the reason, keep streaming.
            verdict = self.temporal.abstain(Reason.INVALID, str(exc))
            p = logit = prediction = familiarity = None
        except ServerUnavailableError as exc:
            # A remote backend retries on its own schedule; each frame meanwhile is an abstention.
            verdict = self.temporal.abstain(Reason.SERVER_UNAVAILABLE, str(exc))
            p = logit = prediction = familiarity = None
            self._note_outage(str(exc))
        else:
            if asked_backend:  # frames served from the pane cache say nothing about the server
                self.end_outage(resumed=True)
        self._classified += 1
        lap("temporal")
        for stage in ("preprocess", "infer", "head"):
            stages.setdefault(stage, 0.0)
        done = time.monotonic()
        threshold, p_smoothed = self.engine.threshold, verdict.p_smoothed
        if self.prevalence is not None:
            shown = self.prevalence
            p, logit, p_smoothed, threshold = shown.p(p), shown.logit(logit), shown.p(p_smoothed), shown.p(threshold)
            for pane_record in panes:
                pane_record.p = shown.p(pane_record.p)
        return StreamResult(
            frame=item.index, capture_ts=item.timestamp, wall_time=time.time(), stages_ms=stages,
            total_ms=(done - item.timestamp) * 1000.0, panes=panes, p=p, logit=logit,
            p_smoothed=p_smoothed, decision=verdict.decision, reason=verdict.reason, detail=verdict.detail,
            threshold=threshold, processed=0, dropped=0, cache_hits=0, gaps=0, result_time=done,
            roi=choice.roi, roi_source=choice.source, model_roi=model_roi, frozen=choice.frozen,
            calipers=[m.to_dict() for m in choice.marks], media_ts=item.media_ts, familiarity=familiarity,
            image=frame if self.keep_frames else None, prediction=prediction,
            prevalence=self.prevalence.site if self.prevalence is not None else None)

    def _note_outage(self, error: str) -> None:
        if self._outage is None:
            self._outage = {"start": time.monotonic(), "reason": error, "frames": 0, "before": self._classified}
        self._outage["frames"] += 1
        self._outage["last_error"] = error

    def end_outage(self, *, resumed: bool) -> None:
        """Close an open server outage as a gap record in :attr:`gaps` (at the end of a stream: not resumed)."""
        outage, self._outage = self._outage, None
        if outage is not None:
            self.gaps.append(GapRecord(start_ts=outage["start"], end_ts=time.monotonic(), attempts=outage["frames"],
                                       resumed=resumed, reason=outage["reason"],
                                       last_error=None if resumed else outage["last_error"],
                                       frames_before=outage["before"], wall_time=time.time(), kind="server"))


def _check_box(roi: Roi, layout: Layout) -> None:
    bmode = layout.pane(Modality.BMODE)
    if bmode is None:
        raise InputError(f"roi {list(roi)}: layout {layout.name!r} has no bmode pane; a nodule box lies in one")
    x, y, w, h = bmode.roi
    if not (roi[0] >= x and roi[1] >= y and roi[0] + roi[2] <= x + w and roi[1] + roi[3] <= y + h):
        raise InputError(f"roi {list(roi)} is not inside the bmode pane {[x, y, w, h]}; expected a box on the "
                         "B-mode image, in frame pixels")
