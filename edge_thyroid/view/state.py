"""What the live view shows: the latest stream record, the last minute of p(malignant), the latest JPEG.

The stream writes, the HTTP handlers read. Every write replaces or appends under a short lock and
never waits for a reader: a browser that is slow, gone or never reading cannot hold the stream back.
Readers take the newest frame when they are ready for one; frames they had no time for are skipped,
never queued.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JpegFrame:
    seq: int            # 1, 2, ... in the order the view encoded them
    frame: int          # the stream's frame index it shows
    data: bytes
    width: int          # of the JPEG (it may be smaller than the captured frame)
    height: int


class ViewState:
    """One-slot holders for the latest record and the latest JPEG, plus a bounded p(malignant) history.

    ``history_s`` bounds the history by time (the chart shows the last minute); ``max_points`` bounds it
    by count as well, so a very fast stream cannot grow it without limit.
    """

    def __init__(self, history_s: float = 60.0, max_points: int = 20_000) -> None:
        self.history_s = history_s
        self._lock = threading.Lock()
        self._new_jpeg = threading.Condition(self._lock)
        self._record: dict[str, Any] | None = None
        self._history: deque[tuple[float, float | None, float | None, str, str | None]] = deque(maxlen=max_points)
        self._abstained: Counter[str] = Counter()
        self._decisions: Counter[str] = Counter()
        self._events: deque[dict[str, Any]] = deque(maxlen=20)
        self._header: dict[str, Any] | None = None
        self._summary: dict[str, Any] | None = None
        self._frame_size: tuple[int, int] | None = None
        self._jpeg: JpegFrame | None = None
        self._roi: list[int] | None = None
        self._clients = 0
        self._frames_sent = 0
        self._wanted_until = 0.0
        self.ended = False
        self.closed = False

    # -- writers (the stream side) -----------------------------------------------------------------
    def publish(self, record: dict[str, Any], frame_size: tuple[int, int] | None = None) -> None:
        """A processed frame's record (``StreamResult.record()``): becomes the latest, joins the history."""
        point = (float(record.get("wall_time", time.time())), record.get("p"), record.get("p_smoothed"),
                 str(record.get("decision")), record.get("reason"))
        with self._lock:
            self._record = record
            self._history.append(point)
            self._decisions[point[3]] += 1
            if point[4] is not None:
                self._abstained[point[4]] += 1
            if frame_size is not None:
                self._frame_size = frame_size
            self._trim(point[0])

    def event(self, record: dict[str, Any]) -> None:
        """A record that is not a frame: the header (what runs on what), the closing summary, or an event
        such as a source gap (the page lists the recent ones)."""
        with self._lock:
            if record.get("type") == "header":
                self._header = record
            elif record.get("type") == "summary":
                self._summary = record
            else:
                self._events.append(record)

    def publish_jpeg(self, frame: int, data: bytes, width: int, height: int) -> JpegFrame:
        with self._new_jpeg:
            seq = self._jpeg.seq + 1 if self._jpeg else 1
            self._jpeg = JpegFrame(seq, frame, data, width, height)
            self._new_jpeg.notify_all()
            return self._jpeg

    def end(self) -> None:
        """The stream ended: readers stop waiting for frames that will not come."""
        with self._new_jpeg:
            self.ended = True
            self._new_jpeg.notify_all()

    def close(self) -> None:
        """The view is shutting down: every waiting reader returns now."""
        with self._new_jpeg:
            self.ended = self.closed = True
            self._new_jpeg.notify_all()

    def set_roi(self, roi: list[int] | None) -> None:
        with self._lock:
            self._roi = roi

    def _trim(self, now: float) -> None:
        while self._history and self._history[0][0] < now - self.history_s:
            self._history.popleft()

    # -- readers (the HTTP side) -------------------------------------------------------------------
    def latest(self) -> tuple[dict[str, Any] | None, tuple[int, int] | None]:
        """The latest record and the captured frame's (width, height)."""
        with self._lock:
            return self._record, self._frame_size

    def next_jpeg(self, after_seq: int, timeout: float) -> JpegFrame | None:
        """The newest JPEG with a sequence number above ``after_seq``, waiting up to ``timeout`` seconds;
        None when none came (or the view is closing). Intermediate frames are skipped, never queued."""
        deadline = time.monotonic() + timeout
        with self._new_jpeg:
            while not self.closed and (self._jpeg is None or self._jpeg.seq <= after_seq):
                left = deadline - time.monotonic()
                if left <= 0 or self.ended:
                    return None
                self._new_jpeg.wait(left)
            return None if self.closed else self._jpeg

    def latest_jpeg(self) -> JpegFrame | None:
        with self._lock:
            return self._jpeg

    def snapshot(self, since: float | None = None) -> dict[str, Any]:
        """Everything ``/state.json`` returns: the latest record, the history points newer than ``since``
        (wall-clock seconds; None: the whole window), abstain and decision counts, recent events, the
        stream's header and (once it ended) its summary."""
        with self._lock:
            points = [list(p) for p in self._history if since is None or p[0] > since]
            return {"now": time.time(), "window_s": self.history_s, "latest": self._record,
                    "frame_size": list(self._frame_size) if self._frame_size else None,
                    "history": points, "abstained": dict(self._abstained), "decisions": dict(self._decisions),
                    "events": list(self._events), "header": self._header, "summary": self._summary,
                    "roi": self._roi, "ended": self.ended,
                    "viewers": self._clients, "frames_sent": self._frames_sent,
                    "jpeg_seq": self._jpeg.seq if self._jpeg else 0}

    # -- demand: the renderer encodes frames only while someone watches --------------------------------
    def client_joined(self) -> None:
        with self._lock:
            self._clients += 1

    def client_left(self) -> None:
        with self._lock:
            self._clients -= 1

    def frame_sent(self) -> None:
        with self._lock:
            self._frames_sent += 1

    def want_frame(self, for_s: float = 2.0) -> None:
        """A one-off reader (``/frame.jpg``) asks for fresh frames for a moment."""
        with self._lock:
            self._wanted_until = max(self._wanted_until, time.monotonic() + for_s)

    @property
    def watched(self) -> bool:
        with self._lock:
            return self._clients > 0 or time.monotonic() < self._wanted_until

    @property
    def viewers(self) -> int:
        with self._lock:
            return self._clients


__all__ = ["JpegFrame", "ViewState"]
