"""The one-frame slot between the capture thread and the classify step: latest frame wins.

The capture thread leaves each frame here; a frame the model had no time for is replaced by the next
one and counted as dropped, so a slow model never builds a backlog (latency stays one inference, not
a growing queue). ``lossless`` (as fast as possible) makes the capture wait for the model instead.
"""

from __future__ import annotations

import threading

from ..sources import Captured


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
