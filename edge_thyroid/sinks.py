"""Where stream results go: a JSONL file, a live console line, an overlay video, a window.

Each sink runs behind :class:`AsyncSink` (its own thread and bounded queue): a slow disk or a blocked
terminal never stalls inference; when a queue is full the record is dropped for that sink and
counted (the summary reports it). The JSONL sink writes one complete line per record, flushes each,
and fsyncs on close, so a stream stopped by Ctrl-C or SIGTERM leaves a file whose every line parses.
"""

from __future__ import annotations

import abc
import json
import math
import os
import queue
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import EdgeThyroidError
from .stream.stats import percentile

if TYPE_CHECKING:
    from .stream.records import ControlRecord, GapRecord, HeaderRecord, StreamResult, StreamSummary


class SinkError(EdgeThyroidError):
    """A sink cannot write (disk full, file unwritable, no display); what it wrote so far is intact."""


class Sink(abc.ABC):
    name: str = "sink"
    needs_frames: bool = False   # the stream keeps frames and feature maps for this sink

    def open(self) -> None:
        """Acquire resources; errors here stop the stream before it starts."""

    @abc.abstractmethod
    def write(self, result: "StreamResult") -> None: ...

    def event(self, record: "HeaderRecord | GapRecord | ControlRecord | StreamSummary") -> None:
        """A record that is not a frame: the header (first), a source gap, a control-channel change,
        the summary (last)."""

    def close(self) -> None:
        """Flush and release."""


# ---------------------------------------------------------------------------------------------


class JsonlSink(Sink):
    """One JSON object per line: a header, frame, gap and control records, and a summary (see
    docs/stream-records.schema.json). ``-`` writes to standard output."""

    name = "jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.handle: IO[Any] | None = None
        self.lines = 0
        self.size = 0   # bytes of complete lines in the file

    def open(self) -> None:
        if self.path == "-":
            self.handle = sys.stdout
            return
        target = Path(self.path)
        if target.is_dir():
            raise SinkError(f"--json-out {target} is a directory; expected a file path such as results.jsonl")
        try:
            # Unbuffered bytes: nothing is pending in a buffer when a write fails, so the file can be cut
            # back to its last complete line (a full disk would otherwise leave half a record).
            self.handle = open(target, "wb", buffering=0)
        except OSError as exc:
            raise SinkError(f"cannot write {target}: {exc.strerror or exc}; expected a writable file path") from None

    def _line(self, record: dict[str, Any]) -> None:
        assert self.handle is not None
        # One write per complete line, then flush: an interrupted stream never leaves half a record.
        text = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
        if self.handle is sys.stdout:
            self.handle.write(text)
            self.handle.flush()
        else:
            encoded = text.encode("utf-8")
            data = memoryview(encoded)
            try:
                while data:
                    data = data[self.handle.write(data):]
            except OSError:
                try:
                    os.ftruncate(self.handle.fileno(), self.size)
                    os.lseek(self.handle.fileno(), self.size, os.SEEK_SET)
                except OSError:
                    pass  # a device such as /dev/full cannot be truncated, and holds no partial line either
                raise
            self.size += len(encoded)
        self.lines += 1

    def write(self, result: "StreamResult") -> None:
        record = result.record()
        record["latency_ms"]["sink"] = round((time.monotonic() - result.result_time) * 1000.0, 3)
        self._line(record)

    def event(self, record: "HeaderRecord | GapRecord | ControlRecord | StreamSummary") -> None:
        self._line(record.record())

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle is None or handle is sys.stdout:
            if handle is not None:
                handle.flush()
            return
        try:
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            handle.close()


class ConsoleSink(Sink):
    """A live status line on stderr: frame, input and processed fps, drops, latency p50/p99, p, decision.
    On a terminal it rewrites one line; otherwise it prints a line every ``interval`` seconds."""

    name = "console"

    def __init__(self, stream: IO[str] | None = None, interval: float | None = None, window: int = 300) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.25 if self.tty else 1.0)
        self.latencies: deque[float] = deque(maxlen=window)
        self.times: deque[tuple[float, int]] = deque(maxlen=window)
        self.last_print = 0.0
        self.printed = False

    def line(self, result: "StreamResult") -> str:
        now = time.monotonic()
        self.latencies.append(result.total_ms)
        self.times.append((now, result.frame))
        fps_in = fps_done = 0.0
        if len(self.times) > 1 and self.times[-1][0] > self.times[0][0]:
            span = self.times[-1][0] - self.times[0][0]
            fps_in = (self.times[-1][1] - self.times[0][1]) / span
            fps_done = (len(self.times) - 1) / span
        p50, p99 = percentile(self.latencies, 50), percentile(self.latencies, 99)
        p = "  -  " if result.p is None else f"{result.p:.3f}"
        smooth = "  -  " if result.p_smoothed is None else f"{result.p_smoothed:.3f}"
        decision = result.decision.value + (f" ({result.reason.value})" if result.reason else "")
        return (f"frame {result.frame:6d} | in {fps_in:5.1f} fps, done {fps_done:5.1f}/s | dropped {result.dropped} | "
                f"latency p50 {p50:6.1f} ms p99 {p99:6.1f} ms | p {p} smoothed {smooth} -> {decision}")

    def write(self, result: "StreamResult") -> None:
        text = self.line(result)
        now = time.monotonic()
        if now - self.last_print < self.interval:
            return
        self.last_print = now
        self.stream.write(("\r" + text + "\x1b[K") if self.tty else text + "\n")
        self.stream.flush()
        self.printed = True

    def event(self, record: "HeaderRecord | GapRecord | ControlRecord | StreamSummary") -> None:
        if record.record()["type"] not in ("gap", "control"):
            return  # the command prints the summary itself; the header is for files
        text = record.text()
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.printed:
            self.stream.write("\n")
            self.stream.flush()


def _annotate(result: "StreamResult", band: bool = True) -> Any:
    """The frame with CAM heatmaps (when a prediction exists), the nodule box and its source, and the
    smoothed decision in large letters on a band added below the screen (``band``; the live view shows
    the decision on its page and maps a dragged box on the frame's own pixels, so it takes none)."""
    from .visualize import draw_nodule_box, overlay_prediction, with_decision_band

    canvas = (overlay_prediction(result.image, result.prediction, label=False) if result.prediction is not None
              else result.image.copy())
    if result.roi is not None:
        draw_nodule_box(canvas, result.roi, result.roi_source, result.calipers)
    if not band:
        return canvas
    if result.reason is not None:
        label = f"ABSTAIN: {result.reason.value}"
        color = (0, 200, 255)
    else:
        label = f"{result.decision.value.upper()}  p={result.p_smoothed:.2f}"
        color = (60, 60, 255) if result.decision.value == "malignant" else (60, 220, 60)
        if result.familiarity is not None and not result.familiarity.familiar:
            label += "  (unfamiliar image)"
    return with_decision_band(canvas, label, color)


VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


class OverlayVideoSink(Sink):
    """An annotated video of the processed frames (cv2.VideoWriter; .mp4/.mov/.mkv: MPEG-4, .avi: MJPEG)."""

    name = "overlay"
    needs_frames = True

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = fps if fps and math.isfinite(fps) and fps > 0 else 30.0
        self.writer: Any = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def open(self) -> None:
        if self.path.suffix.lower() not in VIDEO_CODECS:
            raise SinkError(f"--overlay {self.path}: unknown video type {self.path.suffix or '(none)'}; expected one "
                            f"of {sorted(VIDEO_CODECS)}")
        if not self.path.parent.is_dir():
            raise SinkError(f"--overlay {self.path}: folder {self.path.parent} does not exist")
        if not os.access(self.path.parent, os.W_OK):
            raise SinkError(f"cannot write {self.path}: folder {self.path.parent} is not writable")

    def write(self, result: "StreamResult") -> None:
        import cv2

        canvas = _annotate(result)
        if self.writer is None:
            self.size = (canvas.shape[1], canvas.shape[0])
            codec = VIDEO_CODECS[self.path.suffix.lower()]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*codec), self.fps, self.size)
            if not self.writer.isOpened():
                self.writer = None
                raise SinkError(f"cannot write video {self.path} with codec {codec}; expected a writable path")
        if (canvas.shape[1], canvas.shape[0]) != self.size:
            canvas = cv2.resize(canvas, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(canvas)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


def display_available() -> tuple[bool, str]:
    """(True, '') when cv2.imshow can open a window here, else (False, why not)."""
    import cv2

    info = cv2.getBuildInformation()
    gui = info[info.find("GUI:"):].splitlines()[0] if "GUI:" in info else "GUI: unknown"
    if "NONE" in gui.upper():
        return False, ("this OpenCV build has no GUI (opencv-python-headless); install opencv-python "
                       "instead to use --show, or write the overlay with --overlay out.mp4")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY/WAYLAND_DISPLAY unset); write the overlay with --overlay out.mp4"
    return True, ""


class WindowSink(Sink):
    """A live window (cv2.imshow) with the annotated frame; closing it or pressing q stops nothing but
    the window (the stream goes on; Ctrl-C stops it)."""

    name = "window"
    needs_frames = True

    def __init__(self, title: str = "edge-thyroid") -> None:
        self.title = title
        self.closed = False

    def open(self) -> None:
        ok, why = display_available()
        if not ok:
            raise SinkError(f"--show: {why}")

    def write(self, result: "StreamResult") -> None:
        import cv2

        if self.closed:
            return
        cv2.imshow(self.title, _annotate(result))
        if cv2.waitKey(1) & 0xFF == ord("q"):
            self.closed = True
            cv2.destroyWindow(self.title)

    def close(self) -> None:
        if not self.closed:
            import cv2

            cv2.destroyAllWindows()


# ---------------------------------------------------------------------------------------------


class AsyncSink:
    """Runs a sink on its own thread behind a bounded queue. ``submit`` never blocks: a full queue
    drops the item (counted). An error in the sink stops it and is kept in ``error``."""

    def __init__(self, sink: Sink, maxsize: int) -> None:
        self.sink = sink
        self.name = sink.name
        self.queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=maxsize)
        self.dropped = 0
        self.error: EdgeThyroidError | None = None
        self.thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)

    @property
    def needs_frames(self) -> bool:
        return self.sink.needs_frames

    def open(self) -> None:
        self.sink.open()
        self.thread.start()

    def submit(self, kind: str, item: Any, wait_s: float = 0.0) -> None:
        """Queue ``item``; when the queue is full, wait up to ``wait_s`` seconds (0: drop it at once)."""
        if self.error is not None:
            return
        try:
            self.queue.put((kind, item), timeout=wait_s) if wait_s > 0 else self.queue.put_nowait((kind, item))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            entry = self.queue.get()
            if entry is None:
                return
            if self.error is not None:
                continue  # keep draining so close() never waits on a dead sink
            kind, item = entry
            try:
                if kind == "frame":
                    self.sink.write(item)
                else:
                    self.sink.event(item)
            except EdgeThyroidError as exc:
                self.error = exc
            except OSError as exc:
                self.error = SinkError(f"{self.name} sink failed: {exc.strerror or exc}"
                                       + (f" ({getattr(self.sink, 'path', '')})" if hasattr(self.sink, "path") else ""))
            except Exception as exc:  # a sink bug must not kill the stream silently: report it
                self.error = SinkError(f"{self.name} sink failed: {type(exc).__name__}: {exc}")

    def close(self, timeout: float = 30.0) -> None:
        """Drain what is queued (up to ``timeout`` seconds), then close the sink."""
        if self.thread.is_alive():
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self.queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    if time.monotonic() > deadline or not self.thread.is_alive():
                        break
            self.thread.join(max(0.0, deadline - time.monotonic()))
            if self.thread.is_alive():
                # Closing under a write in progress could cut a line in half: leave the file as it is.
                self.error = self.error or SinkError(f"{self.name} sink did not drain within {timeout:g} s; "
                                                     f"{self.queue.qsize()} records were not written")
                return
        try:
            self.sink.close()
        except OSError as exc:
            if self.error is None:
                self.error = SinkError(f"{self.name} sink could not close: {exc.strerror or exc}")


__all__ = ["AsyncSink", "ConsoleSink", "JsonlSink", "OverlayVideoSink", "Sink", "SinkError",
           "WindowSink", "display_available"]
