"""The real-time stream: capture thread -> latest-frame slot -> classify step -> sinks.

:class:`Pipeline` wires the parts together and owns only the run loop, stopping and signals:
:mod:`.capture` (the capture thread and reconnect policy), :mod:`.slot` (latest frame wins),
:mod:`.classify` (pane cache, ``Engine.fuse``, temporal logic), :mod:`.stats` and :mod:`.fanout`.
Every stage is timed on the monotonic clock; capture-to-result latency runs from the frame's capture
timestamp to the moment its result is handed to the sinks. SIGINT/SIGTERM stop the stream after the
current frame; sinks drain and close (JSONL fsynced).
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from ..control import ControlChange, ControlServer
from ..errors import EdgeThyroidError, InputError
from ..inputs import BLANK_STD
from ..layout import Layout
from ..prevalence import Prevalence
from ..sinks import Sink
from ..sources import Captured, Source
from ..temporal import TemporalConfig, TemporalFilter
from .cache import PaneCache
from .capture import CaptureLoop, ReconnectPolicy
from .classify import EngineLike, FrameClassifier, choose_layout
from .fanout import Fanout
from .nodule import NoduleBox
from .records import HeaderRecord, StreamResult, StreamSummary
from .slot import LatestFrameSlot
from .stats import StreamStats


@dataclass(frozen=True)
class PipelineConfig:
    layout: Layout | None = None       # None: the source's own (DICOM regions) or the whole frame
    lossless: bool = False             # as fast as possible: capture waits for the model, nothing dropped
    max_frames: int | None = None      # stop after this many captured frames
    cache: bool = True
    change_threshold: float = 1.0      # grey levels of mean |difference| that still count as unchanged
    blank_std: float = BLANK_STD       # a pane whose pixel std is below this is blank
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    sink_queue: int = 10_000           # JSONL/console records queued per sink before dropping
    frame_sink_queue: int = 8          # overlay/window frames queued before dropping (they are large)
    handle_signals: bool = True        # SIGINT/SIGTERM stop cleanly (main thread only)
    whole_pane: bool = False           # without a nodule box, classify the whole B-mode pane (else: no_roi)
    calipers: bool = True              # on a frozen B-mode pane, take the box from measurement calipers
    control: str | None = None         # control channel address: a Unix socket path or tcp://127.0.0.1:PORT
    abstain_unfamiliar: bool = False   # abstain on a frame whose B-mode pane the bundle's reference finds unfamiliar
    prevalence: Prevalence | None = None   # show p and the threshold at a site's share of malignant nodules


class Pipeline:
    """Runs ``source`` through ``engine`` into ``sinks`` until the source ends, ``max_frames`` or a stop."""

    def __init__(self, engine: EngineLike, source: Source, sinks: Sequence[Sink] = (),
                 config: PipelineConfig | None = None) -> None:
        self.engine = engine
        self.source = source
        self.config = config or PipelineConfig()
        self.fanout = Fanout(sinks, record_queue=self.config.sink_queue, frame_queue=self.config.frame_sink_queue)
        self.cache = PaneCache(engine, self.config.change_threshold, enabled=self.config.cache,
                               blank_std=self.config.blank_std)
        self.temporal = TemporalFilter(engine.threshold, self.config.temporal)
        self.slot = LatestFrameSlot(self.config.lossless)
        self.stop_event = threading.Event()
        self.stopped_by: str | None = None
        self.error: EdgeThyroidError | None = None
        self.capture = CaptureLoop(source, self.slot, self.stop_event, self.config.reconnect,
                                   max_frames=self.config.max_frames, note_stop=self._note_stop)
        self.stats = StreamStats()
        self.layout: Layout | None = None
        self.classifier: FrameClassifier | None = None
        # Constructed now (a bad address fails before the source opens), listening only in run().
        self.control = ControlServer(self.config.control, check=self._check_change) if self.config.control else None

    def _check_change(self, change: ControlChange) -> None:
        if self.classifier is not None:
            self.classifier.check(change)

    @property
    def last_result(self) -> StreamResult | None:
        """The last processed frame's result (what a report of the stream describes)."""
        return self.stats.last

    # -- control ---------------------------------------------------------------------------------
    def stop(self, reason: str = "stop request") -> None:
        """Thread-safe: finish the current frame, then drain the sinks and return."""
        self._note_stop(reason)
        self.stop_event.set()
        self.source.stop()

    def _note_stop(self, reason: str) -> None:
        if self.stopped_by is None:
            self.stopped_by = reason

    def _forward_gaps(self, classifier: FrameClassifier | None = None) -> None:
        if classifier is not None:
            for gap in classifier.gaps:
                self.stats.gaps.append(gap)
                self.fanout.event(gap)
            classifier.gaps.clear()
        while True:
            try:
                gap = self.capture.gaps.get_nowait()
            except queue.Empty:
                return
            self.stats.gaps.append(gap)
            self.fanout.event(gap)

    def _apply_control(self, classifier: FrameClassifier, item: Captured) -> None:
        """Changes accepted before this frame was captured apply from it on, each logged."""
        if self.control is None:
            return
        for change in self.control.take(item.timestamp):
            self.fanout.event(classifier.apply(change, item.index))

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> StreamSummary:
        """Open the sinks, stream until the end, return the summary. The source must be open."""
        self.layout = choose_layout(self.engine, self.config.layout, self.source.layout_hint)
        classifier = FrameClassifier(self.engine, self.layout, self.cache, self.temporal,
                                     media_fps=self.source.fps or 30.0, lossless=self.config.lossless,
                                     keep_frames=self.fanout.keep_frames, abstain_unfamiliar=self.config.abstain_unfamiliar,
                                     prevalence=self.config.prevalence,
                                     nodule=NoduleBox(whole_pane=self.config.whole_pane, calipers=self.config.calipers))
        self.classifier = classifier
        self.fanout.open()
        self.fanout.event(self._header())
        if self.control is not None:
            try:
                self.control.open()
            except BaseException:
                self.fanout.close()
                raise
        previous = self._install_signals()
        capture = threading.Thread(target=self.capture.run, name="capture", daemon=True)
        start = time.monotonic()
        capture.start()
        try:
            while not self.stop_event.is_set():
                self._forward_gaps()
                failed = self.fanout.failed()
                if failed is not None:
                    self.error = failed[1]
                    self.stopped_by = f"{failed[0]} sink error"
                    break
                item = self.slot.get(timeout=0.1)
                if item is None:
                    if self.slot.finished:
                        break
                    continue
                if self.stats.processed == 0 and not self._first_frame_fits(classifier, item):
                    break
                self._apply_control(classifier, item)
                result = classifier.classify(item)
                self._forward_gaps(classifier)
                self.stats.processed += 1
                result.processed, result.dropped = self.stats.processed, self.slot.dropped
                result.cache_hits, result.gaps = self.cache.hits, len(self.stats.gaps)
                self.stats.add(result)
                self.fanout.frame(result)
        finally:
            self.stop_event.set()
            self.source.stop()
            capture.join(timeout=self.source.options.read_timeout_s + 1.0)
            classifier.end_outage(resumed=False)
            self._forward_gaps(classifier)
            if self.control is not None:
                self.control.close()
            self.error = self.error or self.capture.error
            seconds = time.monotonic() - start
            # The last record, written also when a signal or an error ended the stream.
            self.fanout.event(self._summary(seconds))
            self.fanout.close()
            self._restore_signals(previous)
        if self.error is None and (failed := self.fanout.failed()) is not None:
            self.error = failed[1]
            self.stopped_by = self.stopped_by or f"{failed[0]} sink error"
        return self._summary(seconds)

    def _first_frame_fits(self, classifier: FrameClassifier, item: Captured) -> bool:
        """A layout that does not fit the first frame would abstain on every frame: stop at once instead."""
        try:
            classifier.check_fits(item)
        except InputError as exc:
            self.error = InputError(f"the layout does not fit the first frame of {self.source.describe()}: {exc}")
            self.stopped_by = "layout invalid for the first frame"
            return False
        return True

    def _header(self) -> HeaderRecord:
        assert self.layout is not None
        temporal = {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self.config.temporal).items()}
        return HeaderRecord(
            started_utc=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            engine=self.engine.identity(), layout=self.layout.to_dict(),
            source={"kind": self.source.kind, "description": self.source.describe(), "fps": self.source.fps},
            threshold=self.config.prevalence.p(self.engine.threshold) if self.config.prevalence else self.engine.threshold,
            temporal=temporal, probability=self.config.prevalence.to_dict() if self.config.prevalence else None)

    def _summary(self, seconds: float) -> StreamSummary:
        stopped = self.stopped_by or ("source error" if self.error else "end of source")
        return self.stats.summary(
            source=self.source.describe(), layout=self.layout.name if self.layout else "-",
            frames=self.capture.captured, dropped=self.slot.dropped, cache_hits=self.cache.hits,
            cache_misses=self.cache.misses, seconds=seconds, stopped_by=stopped, sink_dropped=self.fanout.dropped(),
            notes=list(dict.fromkeys(self.source.notes)), error=str(self.error) if self.error else None)

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
