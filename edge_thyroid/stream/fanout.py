"""Event fan-out: every frame result and source gap goes to every sink, each behind its own
:class:`AsyncSink` (thread + bounded queue), so one slow sink never stalls inference or the others."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..errors import EdgeThyroidError
from ..sinks import AsyncSink, Sink
from .records import ControlRecord, GapRecord, HeaderRecord, StreamResult, StreamSummary


class Fanout:
    def __init__(self, sinks: Sequence[Sink], *, record_queue: int, frame_queue: int) -> None:
        self.sinks = [AsyncSink(s, frame_queue if s.needs_frames else record_queue) for s in sinks]
        # Frames and feature maps are kept only when a sink draws them.
        self.keep_frames = any(s.needs_frames for s in self.sinks)
        self.bookend_wait_s = 5.0

    def open(self) -> None:
        """Open every sink; if one fails, close those already open and re-raise."""
        opened: list[AsyncSink] = []
        try:
            for sink in self.sinks:
                sink.open()
                opened.append(sink)
        except BaseException:
            for sink in opened:
                sink.close()
            raise

    def frame(self, result: StreamResult) -> None:
        # Sinks that draw get the frame; the others a copy without it, so a lagging JSONL queue holds a
        # few numbers per frame rather than megabytes of pixels.
        light = replace(result, image=None, prediction=None) if self.keep_frames else result
        for sink in self.sinks:
            sink.submit("frame", result if sink.needs_frames else light)

    def event(self, record: HeaderRecord | GapRecord | ControlRecord | StreamSummary) -> None:
        """A record that is not a frame: the header, a source gap, a control change, the summary. The
        header and the summary wait for room behind a slow sink (a file without them does not describe
        itself)."""
        wait_s = 0.0 if isinstance(record, (GapRecord, ControlRecord)) else self.bookend_wait_s
        for sink in self.sinks:
            sink.submit("event", record, wait_s)

    def failed(self) -> tuple[str, EdgeThyroidError] | None:
        """(name, error) of the first sink that failed, if any."""
        sink = next((s for s in self.sinks if s.error is not None), None)
        return (sink.name, sink.error) if sink is not None and sink.error is not None else None

    def close(self) -> None:
        """Drain and close every sink."""
        for sink in self.sinks:
            sink.close()

    def dropped(self) -> dict[str, int]:
        return {s.name: s.dropped for s in self.sinks}
