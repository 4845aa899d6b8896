"""Sources read through OpenCV's VideoCapture: capture devices, video files and network streams."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from .base import Pacer, Source, SourceError, timed



def _fourcc_text(value: float) -> str:
    code = int(value)
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)) if code > 0 else "?"


class OpenCVSource(Source):
    """Shared VideoCapture handling; subclasses say what to open and how frames are timed."""

    api_preference = cv2.CAP_ANY

    def __init__(self, target: str, options=None) -> None:
        super().__init__(target, options)
        self.capture: cv2.VideoCapture | None = None
        self.stated_fps: float | None = None   # what the device/file says, read once at open

    def _target(self) -> str | int:
        return self.target

    def _params(self) -> list[int]:
        return []

    def _open(self) -> None:
        params = self._params()
        capture = cv2.VideoCapture(self._target(), self.api_preference, params) if params else \
            cv2.VideoCapture(self._target(), self.api_preference)
        if not capture.isOpened():
            capture.release()
            raise SourceError(self._open_failure())
        self.capture = capture
        self._configure(capture)
        value = capture.get(cv2.CAP_PROP_FPS)
        self.stated_fps = float(value) if math.isfinite(value) and 0 < value <= 1000 else None

    def _open_failure(self) -> str:
        return f"cannot open {self.describe()}"

    def _configure(self, capture: cv2.VideoCapture) -> None:
        """Settings applied right after opening (devices)."""

    def _grab(self) -> tuple[np.ndarray | None, float, float]:
        """grab() marks the arrival of a frame; retrieve() decodes it. Returns (frame, arrival, decode ms)."""
        assert self.capture is not None
        if not self.capture.grab():
            return None, time.monotonic(), 0.0
        arrival = time.monotonic()
        (ok, frame), decode_ms = timed(self.capture.retrieve)
        return (frame if ok else None), arrival, decode_ms

    def _close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None

    def _failure(self) -> str:
        return f"{self.describe()} stopped delivering frames"

    def _read(self) -> tuple[np.ndarray, float, float] | None:
        """Live sources: a frame that does not come is a failure (the pipeline reopens the source)."""
        frame, arrival, decode_ms = self._grab()
        if frame is None:
            raise SourceError(self._failure())
        return frame, arrival, decode_ms

    @property
    def fps(self) -> float | None:
        return self.options.fps or self.stated_fps


class DeviceSource(OpenCVSource):
    """A capture card or camera: ``0`` or ``/dev/video0``; resolution, frame rate and FOURCC are requested
    (the device may choose others: what it chose is noted)."""

    kind = "device"
    live = True
    api_preference = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY

    def _target(self) -> str | int:
        return int(self.target) if self.target.isdigit() else self.target

    def _open_failure(self) -> str:
        hint = "" if self.target.isdigit() or Path(self.target).exists() else " (no such device)"
        return (f"cannot open capture device {self.target}{hint}; expected a connected camera or capture card, "
                "e.g. --source 0 or --source /dev/video0")

    def _configure(self, capture: cv2.VideoCapture) -> None:
        opts = self.options
        if opts.fourcc:
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*opts.fourcc))
        if opts.size:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, opts.size[0])
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, opts.size[1])
        if opts.fps:
            capture.set(cv2.CAP_PROP_FPS, opts.fps)
        got = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
               capture.get(cv2.CAP_PROP_FPS), _fourcc_text(capture.get(cv2.CAP_PROP_FOURCC)))
        asked = (opts.size, opts.fps, opts.fourcc)
        if any(asked):
            self.notes.append(f"device {self.target} asked for size={opts.size} fps={opts.fps} fourcc={opts.fourcc}; "
                              f"it gives {got[0]}x{got[1]} at {got[2]:g} fps, {got[3]}")

    def _failure(self) -> str:
        return f"{self.describe()} stopped delivering frames (unplugged or busy?)"


class NetworkSource(OpenCVSource):
    """A network stream FFmpeg can open (rtsp://, tcp://, udp://, ...). Frames are read as they arrive; a
    stall longer than the read timeout or a closed connection is a failure (the pipeline reconnects)."""

    kind = "network"
    live = True
    api_preference = cv2.CAP_FFMPEG

    def _params(self) -> list[int]:
        return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.options.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.options.read_timeout_s * 1000)]

    def _open_failure(self) -> str:
        return (f"cannot open network stream {self.target} within {self.options.open_timeout_s:g} s; expected a "
                "reachable rtsp://, tcp://, udp://, rtmp://, srt:// or http(s):// video stream")

    def _failure(self) -> str:
        return f"{self.describe()} ended or stalled for more than {self.options.read_timeout_s:g} s"


class VideoFileSource(OpenCVSource):
    """A video file, replayed at its native frame rate (or as fast as possible); ``loop`` starts it again."""

    kind = "file"
    api_preference = cv2.CAP_FFMPEG

    def _open(self) -> None:
        path = Path(self.target)
        if not path.is_file():
            raise SourceError(f"video file {path} does not exist; expected a readable video (mp4, avi, mkv, ...)")
        super()._open()
        self.frame_count = int(max(0.0, self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0))
        fps = self.fps
        if self.options.realtime and fps is None:
            self._close()
            raise SourceError(f"video file {path} does not state its frame rate; pass --fps or --as-fast-as-possible")
        self.period = 1.0 / fps if (self.options.realtime and fps) else None
        self.pacer = Pacer(self.interrupt)
        self.position = 0  # frames read in the current pass over the file

    def _open_failure(self) -> str:
        return f"cannot decode video file {self.target}; expected a video OpenCV's FFmpeg backend can read"

    def media_time(self) -> float | None:
        # The file's own rate, not a --fps override: the media time is where the frame is in the file.
        rate = self.capture.get(cv2.CAP_PROP_FPS) if self.capture is not None else 0.0
        return (self.position - 1) / rate if rate and rate > 0 and self.position > 0 else None

    def _read(self) -> tuple[np.ndarray, float, float] | None:
        arrival = self.pacer.wait(None if self.period is None else self.index * self.period)
        start = time.monotonic()
        ok, frame = self.capture.read()
        if not ok and self.options.loop and self.position > 0:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self.position = 0
            ok, frame = self.capture.read()
        if not ok:
            if self.frame_count and 0 < self.position < self.frame_count - 1:
                self.notes.append(f"video file {self.target} ended at frame {self.position} of the "
                                  f"{self.frame_count} its header states (truncated?)")
            return None
        self.position += 1
        return frame, arrival, (time.monotonic() - start) * 1000.0
