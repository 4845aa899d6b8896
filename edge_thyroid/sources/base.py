"""One lifecycle for every capture source: construct (cheap) -> open -> read* -> close.

``read()`` returns a :class:`Captured` (frame uint8 HxWx3 BGR, capture timestamp, index, decode time)
or None at the end of the stream, and raises :class:`SourceError` when the source fails. Timestamps
are ``time.monotonic()`` seconds: the moment the frame became available (a live frame: when it was
grabbed; a paced replay: its scheduled arrival, or the moment reading began if decoding runs late),
so capture-to-result latency includes decoding and any wait behind a busy model.
"""

from __future__ import annotations

import abc
import math
import threading
import time
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from ..frames import as_frame
from ..errors import InputError
from ..layout import Layout


class SourceError(InputError):
    """A source cannot be opened, read or decoded; the message names it and what was expected."""


class Captured(NamedTuple):
    frame: np.ndarray   # uint8 HxWx3 BGR (as delivered when ``problem`` is set)
    timestamp: float    # time.monotonic() when the frame became available
    index: int          # frames this source has produced before this one
    decode_ms: float = 0.0
    problem: str | None = None  # why this frame is not an image; the stream goes on (it abstains on it)
    media_ts: float | None = None  # seconds into the recording (file and DICOM sources); None for live sources


@dataclass(frozen=True)
class SourceOptions:
    realtime: bool = True                    # replay files at their frame rate (False: as fast as possible)
    fps: float | None = None                 # requested device rate / override of a file's rate
    size: tuple[int, int] | None = None      # requested device resolution / synthetic screen size (w, h)
    fourcc: str | None = None                # requested device pixel format, e.g. MJPG, YUYV
    loop: bool = False                       # replay a file, folder or DICOM again at its end
    open_timeout_s: float = 5.0              # network/device open
    read_timeout_s: float = 5.0              # network read: a stalled stream fails after this
    layout: Layout | None = None             # what a synthetic source draws

    def __post_init__(self) -> None:
        if self.fps is not None and not (math.isfinite(self.fps) and 0 < self.fps <= 1000):
            raise InputError(f"frame rate {self.fps} is not in (0, 1000] frames per second")
        if self.fourcc is not None and len(self.fourcc) != 4:
            raise InputError(f"FOURCC {self.fourcc!r} is not 4 characters; expected e.g. MJPG or YUYV")
        if self.size is not None and not all(1 <= v <= 16384 for v in self.size):
            raise InputError(f"capture size {self.size[0]}x{self.size[1]} is outside 1..16384 pixels")


class Pacer:
    """Replays a schedule in real time: the frame due ``offset`` seconds into the stream is waited for
    (interruptibly) and stamped with its due time, or with now when decoding has fallen behind."""

    def __init__(self, interrupt: threading.Event) -> None:
        self.interrupt = interrupt
        self.start: float | None = None

    def wait(self, offset: float | None) -> float:
        """``offset`` None: no pacing (as fast as possible). Returns the frame's arrival time."""
        now = time.monotonic()
        if offset is None:
            return now
        if self.start is None:
            self.start = now - offset
        due = self.start + offset
        if due > now:
            self.interrupt.wait(due - now)
            # a stop() wakes the wait early: the frame arrived now, not at its due time (a stamp in
            # the future made capture-to-result latency negative)
            return min(due, time.monotonic())
        return now


class Source(abc.ABC):
    """Base class. Subclasses implement ``_open``, ``_read`` (-> frame or None) and ``_close``."""

    kind: ClassVar[str]            # what it reads, in words and records: "device", "file", "dicom", ...
    live: ClassVar[bool] = False   # live sources are reopened with back-off when they fail

    def __init__(self, target: str, options: SourceOptions | None = None) -> None:
        self.target = target
        self.options = options or SourceOptions()
        self.interrupt = threading.Event()   # set by stop(): wakes a paced wait
        self.index = 0                       # frames produced so far (kept across reopen)
        self.notes: list[str] = []           # things the user should know (skipped files, adjusted settings)
        self._opened = False

    # -- the lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        if not self._opened:
            self._open()
            self._opened = True

    def read(self) -> Captured | None:
        if not self._opened:
            raise SourceError(f"{self.describe()} is not open; call open() first")
        item = self._read()
        if item is None:
            return None
        frame, timestamp, decode_ms = item
        problem = None
        try:
            frame = as_frame(frame)
        except InputError as exc:
            # One bad frame is not a broken source: report it with the frame, do not end or reopen.
            problem = f"{self.describe()} gave a frame that is not an image: {exc}"
        captured = Captured(frame, timestamp, self.index, decode_ms, problem, self.media_time())
        self.index += 1
        return captured

    def media_time(self) -> float | None:
        """Where the frame just read sits in its recording (seconds), for sources that replay one; a live
        source has no media time."""
        return None

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._close()

    def stop(self) -> None:
        """Wake a paced wait (called from another thread); the source stays usable until close()."""
        self.interrupt.set()

    def __enter__(self) -> "Source":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what subclasses provide ---------------------------------------------------------------
    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _read(self) -> tuple[np.ndarray, float, float] | None:
        """(frame, capture timestamp, decode milliseconds), or None at the end of the stream."""

    @abc.abstractmethod
    def _close(self) -> None: ...

    @property
    def fps(self) -> float | None:
        """Nominal frame rate, when known."""
        return self.options.fps

    @property
    def layout_hint(self) -> Layout | None:
        """A layout the source itself describes (DICOM ultrasound regions), if any."""
        return None

    def describe(self) -> str:
        return f"{self.kind} source {self.target}"


def timed(read) -> tuple[object, float]:
    """Run ``read()``; return its value and how long it took in milliseconds."""
    start = time.monotonic()
    value = read()
    return value, (time.monotonic() - start) * 1000.0
