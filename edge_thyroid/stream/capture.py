"""The capture loop: reads the source on its own thread into the latest-frame slot, and reopens a
live source that fails (exponential back-off), reporting each outage as a :class:`GapRecord`."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import EdgeThyroidError
from ..sources import Source, SourceError
from .records import GapRecord
from .slot import LatestFrameSlot


@dataclass(frozen=True)
class ReconnectPolicy:
    attempts: int = 8          # reopen tries before the source counts as lost
    first_delay_s: float = 0.25
    max_delay_s: float = 4.0


class CaptureLoop:
    """``run`` (on the capture thread) reads until the source ends, ``max_frames``, a stop or a lost
    source; it always closes the slot and the source. ``error`` holds why it ended, if it failed."""

    def __init__(self, source: Source, slot: LatestFrameSlot, stop_event: threading.Event,
                 policy: ReconnectPolicy, *, max_frames: int | None = None,
                 note_stop: Callable[[str], None] = lambda reason: None) -> None:
        self.source = source
        self.slot = slot
        self.stop_event = stop_event
        self.policy = policy
        self.max_frames = max_frames
        self.note_stop = note_stop
        self.gaps: queue.SimpleQueue[GapRecord] = queue.SimpleQueue()
        self.captured = 0
        self.error: EdgeThyroidError | None = None
        self._backoff = policy.first_delay_s
        self._attempts_without_frame = 0

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                if self.max_frames is not None and self.captured >= self.max_frames:
                    self.note_stop(f"--max-frames {self.max_frames}")
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
                    if self.captured == 0 and not self.stop_event.is_set():
                        self.error = SourceError(self._no_frame_message())
                    return
                self.captured += 1
                self._attempts_without_frame = 0  # frames flow again: the next failure starts a fresh back-off
                self._backoff = self.policy.first_delay_s
                self.slot.put(item, self.stop_event)
        except Exception as exc:  # an unexpected capture failure ends the stream with its message
            self.error = SourceError(f"capture from {self.source.describe()} failed: {type(exc).__name__}: {exc}")
        finally:
            self.slot.close()
            try:
                self.source.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken device must not hide the real error
                self.source.notes.append(f"closing the source failed: {exc}")

    def _no_frame_message(self) -> str:
        why = f" ({self.source.notes[0]})" if self.source.notes else ""
        return (f"{self.source.describe()} yielded no frame{why}; expected a source with at least one decodable "
                "image")

    def _reconnect(self, failure: SourceError) -> bool:
        """Reopen with exponential back-off. The back-off and the attempt budget carry over between
        failures until a frame is delivered again: a device that reopens but never delivers is
        declared lost after ``attempts`` reopens, not retried at the first delay forever."""
        policy = self.policy
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
        self.gaps.put(GapRecord(start_ts=start, end_ts=end, attempts=attempts, resumed=resumed, reason=str(failure),
                                last_error=last if not resumed else None, frames_before=self.captured,
                                wall_time=time.time()))
        if not resumed and not self.stop_event.is_set():
            self.error = SourceError(f"{self.source.describe()} was lost and did not come back after "
                                     f"{self._attempts_without_frame} reopen attempts (the last {end - start:.1f} s): "
                                     f"{last}")
        return resumed
