"""The real-time streaming pipeline: capture thread -> latest-frame slot -> inference -> sinks.

* **Latest frame wins.** The capture thread reads the source at its own pace and leaves each frame in
  a one-frame slot; a frame the model had no time for is replaced by the next one and counted as
  dropped, so a slow model never builds a backlog (latency stays one inference, not a growing queue).
  ``lossless`` (as fast as possible) makes the capture wait for the model instead: nothing is dropped.
* **Pane cache.** Each pane's pixels are compared (subsampled, mean absolute difference) with the
  pixels its cached features came from; only changed panes go through the backbone
  (``Engine.extract`` on just those ROIs), unchanged ones reuse their feature maps. A frozen screen
  costs no inference at all; an SWE pane refreshing at 2 Hz is re-run twice a second.
* **Temporal logic** (:mod:`edge_thyroid.temporal`): smoothing, hysteresis, abstention with a reason.
* **Timing.** Every stage is timed on the monotonic clock, and capture-to-result latency runs from the
  frame's capture timestamp to the moment its result is handed to the sinks.
* **Faults.** A live source that fails is reopened with exponential back-off; the gap is reported to
  the sinks. A frame that cannot be classified is an abstention with a reason, never a crash.
  SIGINT/SIGTERM stop the stream after the current frame; sinks drain and close (JSONL fsynced).
"""

from __future__ import annotations

import math
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import cv2
import numpy as np

from .engine import PaneResult, Prediction
from .errors import EdgeThyroidError, InputError
from .frames import Roi
from .head import FusionHead, pool, sigmoid
from .layout import Layout, Modality, preset
from .sinks import AsyncSink, Sink
from .sources import Captured, Source, SourceError
from .temporal import Decision, Reason, TemporalConfig, TemporalFilter

STAGES = ("capture", "wait", "preprocess", "infer", "head", "temporal")


class EngineLike(Protocol):
    """What the pipeline needs of :class:`edge_thyroid.engine.Engine` (tests pass slow fakes)."""

    head: FusionHead
    threshold: float

    @property
    def modalities(self) -> tuple[str, ...]: ...

    def extract(self, frame: np.ndarray, rois: Sequence[Roi]) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------
# The one-frame slot


class LatestFrameSlot:
    """Holds at most one frame. ``put`` replaces an unconsumed frame (counted in ``dropped``), or in
    lossless mode waits until the consumer took it."""

    def __init__(self, lossless: bool = False) -> None:
        self.lossless = lossless
        self.dropped = 0
        self._item: Captured | None = None
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: Captured, stop: threading.Event | None = None) -> None:
        with self._cond:
            while self.lossless and self._item is not None and not self._closed and not (stop and stop.is_set()):
                self._cond.wait(0.05)
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify_all()

    def get(self, timeout: float) -> Captured | None:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        """Closed and nothing left to take."""
        with self._cond:
            return self._closed and self._item is None


# ---------------------------------------------------------------------------------------------
# Pane cache


@dataclass
class PaneCheck:
    roi: Roi
    signature: np.ndarray
    blank: bool
    unchanged: bool             # same pixels as when its cached maps were computed
    cached: np.ndarray | None   # feature maps [C, h, w] reusable for this pane (cache on), or None: run it


class PaneCache:
    """Feature maps per pane ROI, reused while the pane's pixels stay the same.

    "The same" = mean absolute difference of a subsampled copy (every ``stride``-th pixel) against the
    pixels the cached maps came from, at most ``threshold`` grey levels: exact repeats (a freeze, an
    SWE pane between refreshes) and compression noise hit; live speckle (differences of 10+) misses.
    Comparing with the cached pane, not the previous frame, means slow drift still triggers a re-run.
    """

    def __init__(self, engine: EngineLike, threshold: float = 1.0, stride: int = 4, enabled: bool = True,
                 blank_std: float = 2.0) -> None:
        if not (math.isfinite(threshold) and threshold >= 0):
            raise InputError(f"change threshold {threshold} must be a finite number >= 0 grey levels")
        self.engine = engine
        self.threshold = threshold
        self.stride = max(1, int(stride))
        self.enabled = enabled
        self.blank_std = blank_std
        self.entries: dict[Roi, tuple[np.ndarray, np.ndarray]] = {}
        self.hits = 0
        self.misses = 0

    def signature(self, frame: np.ndarray, roi: Roi) -> np.ndarray:
        x, y, w, h = roi
        step = self.stride if min(w, h) >= 8 * self.stride else 1
        return np.ascontiguousarray(frame[y:y + h:step, x:x + w:step])

    def check(self, frame: np.ndarray, roi: Roi) -> PaneCheck:
        signature = self.signature(frame, roi)
        _, std = cv2.meanStdDev(signature)
        blank = float(std.max()) < self.blank_std
        unchanged = False
        entry = self.entries.get(roi)
        if entry is not None and entry[0].shape == signature.shape:
            difference = float(np.mean(cv2.mean(cv2.absdiff(entry[0], signature))[:3]))
            unchanged = difference <= self.threshold
        # With the cache off, change detection still runs (a frozen screen is still noticed).
        return PaneCheck(roi, signature, blank, unchanged, entry[1] if (unchanged and self.enabled) else None)

    def store(self, check: PaneCheck, maps: np.ndarray) -> None:
        self.entries[check.roi] = (check.signature, maps)

    def retain(self, rois: Sequence[Roi]) -> None:
        """Forget panes no longer on screen (a layout change): the cache stays bounded."""
        keep = set(rois)
        for roi in [r for r in self.entries if r not in keep]:
            del self.entries[roi]

    def run(self, frame: np.ndarray, checks: Sequence[PaneCheck]) -> list[np.ndarray]:
        """Maps for every check: cached ones reused, the others extracted in one batch and stored."""
        todo = [c for c in checks if c.cached is None]
        self.hits += len(checks) - len(todo)
        self.misses += len(todo)
        fresh = iter(self.engine.extract(frame, [c.roi for c in todo])) if todo else iter(())
        out = []
        for check in checks:
            if check.cached is None:
                maps = np.array(next(fresh), copy=True)  # own the memory, not a view of the batch
                self.store(check, maps)
                out.append(maps)
            else:
                out.append(check.cached)
        return out

    def extract(self, frame: np.ndarray, rois: Sequence[Roi]) -> np.ndarray:
        """``Engine.extract`` with the cache: maps [N, C, h, w] for ``rois``, re-running only changed panes."""
        rois = [tuple(int(v) for v in r) for r in np.asarray(rois).reshape(-1, 4).tolist()]
        self.retain(rois)
        return np.stack(self.run(frame, [self.check(frame, r) for r in rois]))


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class PaneOutput:
    modality: str
    roi: Roi
    cached: bool
    blank: bool
    logit: float | None = None   # this pane's contribution to the fused logit
    p: float | None = None       # p(malignant) from this pane alone: sigmoid(bias + contribution)

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "roi": list(self.roi), "cached": self.cached, "blank": self.blank,
                "logit": _round(self.logit), "p": _round(self.p)}


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


@dataclass
class StreamResult:
    frame: int
    capture_ts: float
    wall_time: float
    stages_ms: dict[str, float]
    total_ms: float
    panes: list[PaneOutput]
    p: float | None
    logit: float | None
    p_smoothed: float | None
    decision: Decision
    reason: Reason | None
    detail: str | None
    threshold: float
    processed: int
    dropped: int
    cache_hits: int
    gaps: int
    result_time: float
    image: np.ndarray | None = field(default=None, repr=False)
    prediction: Prediction | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        latency = {k: round(v, 3) for k, v in self.stages_ms.items()}
        latency["total"] = round(self.total_ms, 3)
        return {"type": "frame", "frame": self.frame, "capture_ts": round(self.capture_ts, 6),
                "wall_time": round(self.wall_time, 3), "latency_ms": latency,
                "panes": [p.to_dict() for p in self.panes], "p": _round(self.p), "logit": _round(self.logit),
                "p_smoothed": _round(self.p_smoothed), "decision": self.decision.value,
                "reason": self.reason.value if self.reason else None, "detail": self.detail,
                "threshold": self.threshold, "processed": self.processed, "dropped_so_far": self.dropped,
                "cache_hits": self.cache_hits, "gaps": self.gaps}


class LatencyHistogram:
    """Bounded-memory latency distribution: log-spaced bins 0.01 ms .. 1000 s, ~0.9% wide, so an
    hours-long stream keeps a fixed footprint. Percentiles are bin midpoints (geometric)."""

    LOW, HIGH, BINS = 1e-2, 1e6, 2000

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS + 2, dtype=np.int64)   # + underflow and overflow bins
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0
        self._log_low = math.log(self.LOW)
        self._scale = self.BINS / (math.log(self.HIGH) - self._log_low)

    def add(self, value_ms: float) -> None:
        if not math.isfinite(value_ms):
            return
        if value_ms <= self.LOW:
            index = 0
        else:
            index = min(self.BINS + 1, 1 + int((math.log(value_ms) - self._log_low) * self._scale))
        self.counts[index] += 1
        self.count += 1
        self.total += value_ms
        self.maximum = max(self.maximum, value_ms)

    def percentile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        rank = q / 100.0 * (self.count - 1)
        index = int(np.searchsorted(np.cumsum(self.counts), rank, side="right"))
        if index == 0:
            return self.LOW
        if index > self.BINS:
            return self.maximum
        return min(self.maximum, math.exp(self._log_low + (index - 0.5) / self._scale))

    def summary(self) -> dict[str, float | int | None]:
        return {"count": self.count, "mean": _round(self.total / self.count if self.count else None, 3),
                **{f"p{q:g}": _round(self.percentile(q), 3) for q in (50, 90, 99)},
                "max": _round(self.maximum if self.count else None, 3)}


@dataclass
class StreamSummary:
    source: str
    layout: str
    frames: int = 0                 # captured
    processed: int = 0
    dropped: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    abstained: dict[str, int] = field(default_factory=dict)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: dict[str, Any] = field(default_factory=dict)     # capture-to-result
    stages_ms: dict[str, Any] = field(default_factory=dict)      # per stage
    seconds: float = 0.0
    stopped_by: str = "end of source"
    sink_dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def cache_hit_rate(self) -> float | None:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else None

    def to_dict(self) -> dict[str, Any]:
        record = dict(self.__dict__)
        record["cache_hit_rate"] = _round(self.cache_hit_rate, 4)
        record["capture_fps"] = _round(self.frames / self.seconds if self.seconds else None, 2)
        record["processed_fps"] = _round(self.processed / self.seconds if self.seconds else None, 2)
        return {"type": "summary", **record}

    def text(self) -> str:
        lat = self.latency_ms
        rate = self.cache_hit_rate
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        lines = [f"stream {self.source} ({self.layout} layout): stopped by {self.stopped_by} after {self.seconds:.1f} s",
                 f"  frames {self.frames}, processed {self.processed}, dropped {self.dropped}, pane cache hits "
                 f"{self.cache_hits}/{self.cache_hits + self.cache_misses}"
                 + (f" ({100 * rate:.0f}%)" if rate is not None else ""),
                 f"  capture-to-result latency p50 {fmt(lat.get('p50'))} ms, p90 {fmt(lat.get('p90'))} ms, "
                 f"p99 {fmt(lat.get('p99'))} ms, max {fmt(lat.get('max'))} ms",
                 "  stage p50 (ms): " + ", ".join(f"{k} {fmt(v.get('p50'))}" for k, v in self.stages_ms.items()),
                 "  decisions: " + (", ".join(f"{k} {v}" for k, v in sorted(self.decisions.items())) or "none")
                 + ("; abstained: " + ", ".join(f"{k} {v}" for k, v in sorted(self.abstained.items()))
                    if self.abstained else "")]
        if self.last:
            p, smoothed = self.last.get("p"), self.last.get("p_smoothed")
            lines.append(f"  last frame {self.last.get('frame')}: p {'-' if p is None else f'{p:.3f}'}, smoothed "
                         f"{'-' if smoothed is None else f'{smoothed:.3f}'} -> {self.last.get('decision')}")
        for gap in self.gaps:
            lines.append(f"  gap: {gap['duration_s']:.1f} s, {gap['attempts']} reopen attempts, "
                         f"{'resumed' if gap['resumed'] else 'not resumed'}: {gap['reason']}")
        if any(self.sink_dropped.values()):
            lines.append("  sink records dropped (sink too slow): "
                         + ", ".join(f"{k} {v}" for k, v in self.sink_dropped.items() if v))
        lines += [f"  note: {n}" for n in self.notes]
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass(frozen=True)
class ReconnectPolicy:
    attempts: int = 8          # reopen tries before the source counts as lost
    first_delay_s: float = 0.25
    max_delay_s: float = 4.0


@dataclass(frozen=True)
class PipelineConfig:
    layout: Layout | None = None       # None: the source's own (DICOM regions) or the whole frame
    lossless: bool = False             # as fast as possible: capture waits for the model, nothing dropped
    max_frames: int | None = None      # stop after this many captured frames
    cache: bool = True
    change_threshold: float = 1.0      # grey levels of mean |difference| that still count as unchanged
    blank_std: float = 2.0             # a pane whose pixel std is below this is blank
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    sink_queue: int = 10_000           # JSONL/console records queued per sink before dropping
    frame_sink_queue: int = 8          # overlay/window frames queued before dropping (they are large)
    handle_signals: bool = True        # SIGINT/SIGTERM stop cleanly (main thread only)


class Pipeline:
    """Runs ``source`` through ``engine`` into ``sinks`` until the source ends, ``max_frames`` or a stop."""

    def __init__(self, engine: EngineLike, source: Source, sinks: Sequence[Sink] = (),
                 config: PipelineConfig | None = None) -> None:
        self.engine = engine
        self.source = source
        self.config = config or PipelineConfig()
        self.sinks = [AsyncSink(s, self.config.frame_sink_queue if s.needs_frames else self.config.sink_queue)
                      for s in sinks]
        self.keep_frames = any(s.needs_frames for s in self.sinks)
        self.cache = PaneCache(engine, self.config.change_threshold, enabled=self.config.cache,
                               blank_std=self.config.blank_std)
        self.temporal = TemporalFilter(engine.threshold, self.config.temporal)
        self.slot = LatestFrameSlot(self.config.lossless)
        self.events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.stop_event = threading.Event()
        self.stopped_by: str | None = None
        self.error: EdgeThyroidError | None = None
        self.captured = 0
        self.processed = 0
        self.gaps: list[dict[str, Any]] = []
        self.latency = LatencyHistogram()
        self.stage_latency = {stage: LatencyHistogram() for stage in STAGES}
        self.decisions: Counter[str] = Counter()
        self.abstained: Counter[str] = Counter()
        self.last_change_ts: float | None = None
        self.media_fps = 30.0
        self._backoff = self.config.reconnect.first_delay_s
        self._attempts_without_frame = 0
        self.last_head: tuple[tuple[str, ...], Any] | None = None
        self.layout: Layout | None = None
        self._resolved: tuple[tuple[int, int], Layout] | None = None
        self._last: StreamResult | None = None

    # -- control ---------------------------------------------------------------------------------
    def stop(self, reason: str = "stop request") -> None:
        """Thread-safe: finish the current frame, then drain the sinks and return."""
        if self.stopped_by is None:
            self.stopped_by = reason
        self.stop_event.set()
        self.source.stop()

    def _choose_layout(self) -> Layout:
        layout = self.config.layout or self.source.layout_hint or preset("full")
        unknown = [m for m in layout.modalities if m not in self.engine.modalities]
        if unknown:
            raise InputError(f"layout {layout.name!r} has pane(s) {unknown} the model does not know; the bundle's "
                             f"modalities are {list(self.engine.modalities)}")
        return layout

    # -- capture thread --------------------------------------------------------------------------
    def _capture(self) -> None:
        try:
            while not self.stop_event.is_set():
                if self.config.max_frames is not None and self.captured >= self.config.max_frames:
                    self.stopped_by = self.stopped_by or f"--max-frames {self.config.max_frames}"
                    return
                try:
                    item = self.source.read()
                except SourceError as exc:
                    if not self.source.live:
                        self.error = exc
                        return
                    if not self._reconnect(exc):
                        return
                    continue
                if item is None:
                    return
                self.captured += 1
                self._attempts_without_frame = 0  # frames flow again: the next failure starts a fresh back-off
                self._backoff = self.config.reconnect.first_delay_s
                self.slot.put(item, self.stop_event)
        except Exception as exc:  # an unexpected capture failure ends the stream with its message
            self.error = SourceError(f"capture from {self.source.describe()} failed: {type(exc).__name__}: {exc}")
        finally:
            self.slot.close()
            try:
                self.source.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken device must not hide the real error
                self.source.notes.append(f"closing the source failed: {exc}")

    def _reconnect(self, failure: SourceError) -> bool:
        """Reopen with exponential back-off. The back-off and the attempt budget carry over between
        failures until a frame is delivered again: a device that reopens but never delivers is
        declared lost after ``attempts`` reopens, not retried at the first delay forever."""
        policy = self.config.reconnect
        start = time.monotonic()
        attempts, last = 0, str(failure)
        delay = self._backoff
        self.source.close()
        resumed = False
        while not self.stop_event.is_set() and self._attempts_without_frame < policy.attempts:
            if self.stop_event.wait(delay):
                break
            attempts += 1
            self._attempts_without_frame += 1
            try:
                self.source.open()
                resumed = True
                break
            except SourceError as exc:
                last = str(exc)
                delay = min(delay * 2, policy.max_delay_s)
        self._backoff = min(delay * 2, policy.max_delay_s) if resumed else delay
        end = time.monotonic()
        gap = {"type": "gap", "start_ts": round(start, 6), "end_ts": round(end, 6),
               "duration_s": round(end - start, 3), "attempts": attempts, "resumed": resumed,
               "reason": str(failure), "last_error": last if not resumed else None,
               "frames_before": self.captured, "wall_time": round(time.time(), 3)}
        self.events.put(gap)
        if not resumed and not self.stop_event.is_set():
            self.error = SourceError(f"{self.source.describe()} was lost and did not come back after "
                                     f"{self._attempts_without_frame} reopen attempts (the last {end - start:.1f} s): "
                                     f"{last}")
        return resumed

    # -- one frame -------------------------------------------------------------------------------
    def _layout_for(self, width: int, height: int) -> Layout:
        if self._resolved is None or self._resolved[0] != (width, height):
            assert self.layout is not None
            self._resolved = ((width, height), self.layout.resolve(width, height))
            self.cache.retain([p.roi for p in self._resolved[1].engine_panes()])
            self.last_head = None
        return self._resolved[1]

    def process(self, item: Captured) -> StreamResult:
        picked = time.monotonic()
        stages = {"capture": item.decode_ms,
                  "wait": max(0.0, (picked - item.timestamp) * 1000.0 - item.decode_ms)}
        frame = item.frame
        mark = picked
        panes: list[PaneOutput] = []
        prediction = None
        p = logit = None

        def lap(stage: str) -> None:
            nonlocal mark
            now = time.monotonic()
            stages[stage] = (now - mark) * 1000.0
            mark = now

        try:
            if item.problem is not None:
                raise InputError(item.problem)
            layout = self._layout_for(frame.shape[1], frame.shape[0])
            engine_panes = layout.engine_panes()
            checks = [self.cache.check(frame, pane.roi) for pane in engine_panes]
            panes = [PaneOutput(pane.modality, pane.roi, c.cached is not None, c.blank)
                     for pane, c in zip(engine_panes, checks)]
            lap("preprocess")
            live = [(pane, check) for pane, check in zip(engine_panes, checks) if not check.blank]
            bmode_blank = any(p.blank for p in panes if p.modality == Modality.BMODE.value)
            if not live or bmode_blank:
                verdict = self.temporal.abstain(Reason.BLANK, "the B-mode pane is blank" if bmode_blank
                                                else "every pane is blank")
                self.last_change_ts = None
            else:
                maps = self.cache.run(frame, [c for _, c in live])
                changed = not all(c.unchanged for _, c in live)
                lap("infer")
                modalities = tuple(pane.modality for pane, _ in live)
                if changed or self.last_head is None or self.last_head[0] != modalities:
                    pooled = {pane.modality: pool(m) for (pane, _), m in zip(live, maps)}
                    self.last_head = (modalities, self.engine.head.predict(pooled))
                out = self.last_head[1]
                p, logit = out.probability, out.logit
                for pane_out in panes:
                    if pane_out.modality in out.contributions:
                        pane_out.logit = out.contributions[pane_out.modality]
                        pane_out.p = sigmoid(self.engine.head.bias + pane_out.logit)
                if self.keep_frames:
                    prediction = Prediction(p, logit, self.engine.threshold, dict(out.contributions),
                                            [PaneResult(pane.modality, pane.roi, m, pool(m))
                                             for (pane, _), m in zip(live, maps)], self.engine.head)
                lap("head")
                # Temporal logic runs on stream time: the capture clock live, the frame's place in the
                # recording when replaying as fast as possible (wall time would compress a 2 s freeze).
                now = item.index / self.media_fps if self.config.lossless else item.timestamp
                if changed or self.last_change_ts is None:
                    self.last_change_ts = now
                verdict = self.temporal.update(now, p, frozen_for_s=now - self.last_change_ts)
        except InputError as exc:
            # A frame of another size, a non-finite output, ...: abstain with the reason, keep streaming.
            verdict = self.temporal.abstain(Reason.INVALID, str(exc))
            p = logit = prediction = None
        lap("temporal")
        for stage in ("preprocess", "infer", "head"):
            stages.setdefault(stage, 0.0)
        done = time.monotonic()
        total = (done - item.timestamp) * 1000.0
        self.processed += 1
        return StreamResult(
            frame=item.index, capture_ts=item.timestamp, wall_time=time.time(), stages_ms=stages, total_ms=total,
            panes=panes, p=p, logit=logit, p_smoothed=verdict.p_smoothed, decision=verdict.decision,
            reason=verdict.reason, detail=verdict.detail, threshold=self.engine.threshold, processed=self.processed,
            dropped=self.slot.dropped, cache_hits=self.cache.hits, gaps=len(self.gaps), result_time=done,
            image=frame if self.keep_frames else None, prediction=prediction)

    def _account(self, result: StreamResult) -> None:
        self.latency.add(result.total_ms)
        for stage, value in result.stages_ms.items():
            self.stage_latency[stage].add(value)
        self.decisions[result.decision.value] += 1
        if result.reason is not None:
            self.abstained[result.reason.value] += 1
        self._last = result

    def _forward_events(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self.gaps.append(event)
            for sink in self.sinks:
                sink.submit("event", event)

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> StreamSummary:
        """Open the sinks, stream until the end, return the summary. The source must be open."""
        self.layout = self._choose_layout()
        self.media_fps = self.source.fps or 30.0
        opened: list[AsyncSink] = []
        try:
            for sink in self.sinks:
                sink.open()
                opened.append(sink)
        except BaseException:
            for sink in opened:
                sink.close()
            raise
        previous = self._install_signals()
        capture = threading.Thread(target=self._capture, name="capture", daemon=True)
        start = time.monotonic()
        capture.start()
        try:
            while not self.stop_event.is_set():
                self._forward_events()
                failed = next((s for s in self.sinks if s.error is not None), None)
                if failed is not None:
                    self.error = failed.error
                    self.stopped_by = f"{failed.name} sink error"
                    break
                item = self.slot.get(timeout=0.1)
                if item is None:
                    if self.slot.finished:
                        break
                    continue
                result = self.process(item)
                self._account(result)
                # Sinks that draw get the frame; the others a copy without it, so a lagging JSONL queue
                # holds a few numbers per frame rather than megabytes of pixels.
                light = replace(result, image=None, prediction=None) if self.keep_frames else result
                for sink in self.sinks:
                    sink.submit("frame", result if sink.needs_frames else light)
        finally:
            self.stop_event.set()
            self.source.stop()
            capture.join(timeout=self.source.options.read_timeout_s + 1.0)
            self._forward_events()
            for sink in self.sinks:
                sink.close()
            self._restore_signals(previous)
        if self.error is None:
            failed = next((s for s in self.sinks if s.error is not None), None)
            if failed is not None:
                self.error = failed.error
                self.stopped_by = self.stopped_by or f"{failed.name} sink error"
        return self._summary(time.monotonic() - start)

    def _summary(self, seconds: float) -> StreamSummary:
        last = {}
        if self._last is not None:
            last = {"frame": self._last.frame, "p": self._last.p, "p_smoothed": self._last.p_smoothed,
                    "decision": self._last.decision.value}
        stopped = self.stopped_by or ("source error" if self.error else "end of source")
        return StreamSummary(
            source=self.source.describe(), layout=self.layout.name if self.layout else "-", frames=self.captured,
            processed=self.processed, dropped=self.slot.dropped, cache_hits=self.cache.hits,
            cache_misses=self.cache.misses, decisions=dict(self.decisions), abstained=dict(self.abstained),
            gaps=list(self.gaps), latency_ms=self.latency.summary(),
            stages_ms={k: v.summary() for k, v in self.stage_latency.items()}, seconds=seconds, stopped_by=stopped,
            sink_dropped={s.name: s.dropped for s in self.sinks}, notes=list(dict.fromkeys(self.source.notes)),
            last=last, error=str(self.error) if self.error else None)

    # -- signals ---------------------------------------------------------------------------------
    def _install_signals(self) -> dict[int, Any]:
        if not self.config.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum: int, frame: object) -> None:
            if self.stop_event.is_set():  # a second signal: the user means it
                raise KeyboardInterrupt(f"signal {signum}")
            self.stop(signal.Signals(signum).name)

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
