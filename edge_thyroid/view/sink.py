"""The live view as a stream sink: records go to the :class:`ViewState`, frames are drawn and encoded on
the view's own thread, at most ``fps`` a second and only while a browser watches.

``write`` (called once per processed frame) only stores: the record into the state's history and the
result into a one-slot holder. The render thread takes whatever result is newest when it is ready for
one; results it had no time for are replaced, never queued, so viewing cannot build a backlog.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import InputError
from ..sinks import Sink, SinkError
from .server import RoiCallback, ViewServer, is_loopback
from .state import ViewState

if TYPE_CHECKING:
    from ..stream.records import GapRecord, HeaderRecord, StreamResult, StreamSummary


class ViewSink(Sink):
    """Serves the live view at ``host:port`` for as long as the stream runs (it stops with the stream).

    ``announce`` receives the address once the server listens (the CLI prints it); ``on_roi`` receives
    the nodule box a user drags on the page (None: cleared) when the stream has a control channel.
    ``any_port``: when ``port`` is taken, listen on a free port instead of failing.
    Frames wider than ``max_width`` are scaled down before JPEG encoding (the page scales the box back).
    """

    name = "view"
    needs_frames = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, fps: float = 10.0,
                 on_roi: RoiCallback | None = None, announce: Callable[[str], None] | None = None,
                 max_width: int = 1280, quality: int = 80, any_port: bool = False) -> None:
        self.state = ViewState()
        self.any_port = any_port
        self.server = ViewServer(self.state, host, port, fps=fps, on_roi=on_roi)
        self.announce = announce
        self.max_width = max_width
        self.quality = quality
        self.rendered = 0
        self._latest: StreamResult | None = None
        self._latest_lock = threading.Lock()
        self._fresh = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def open(self) -> None:
        try:
            try:
                self.server.start()
            except InputError:
                if not self.any_port or self.server.port == 0:
                    raise
                self.server.port = 0   # the preferred port is taken: any free one will do
                self.server.start()
        except InputError as exc:
            raise SinkError(str(exc)) from None
        self._thread = threading.Thread(target=self._render_loop, name="view-render", daemon=True)
        self._thread.start()
        if self.announce is not None:
            note = "" if is_loopback(self.server.host) else " (reachable from the network, no password)"
            self.announce(f"live view: {self.url}{note}")

    def write(self, result: "StreamResult") -> None:
        frame_size = None if result.image is None else (int(result.image.shape[1]), int(result.image.shape[0]))
        self.state.publish(result.record(), frame_size)
        with self._latest_lock:
            self._latest = result
        self._fresh.set()

    def event(self, record: "HeaderRecord | GapRecord | StreamSummary") -> None:
        self.state.event(record.record())

    def close(self) -> None:
        self._stopping.set()
        self._fresh.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.state.end()
        self.server.stop()

    # -- the render thread --------------------------------------------------------------------------
    def _render_loop(self) -> None:
        period = 1.0 / self.server.fps
        while not self._stopping.is_set():
            if not self._fresh.wait(0.2) or self._stopping.is_set():
                continue
            if not self.state.watched:
                # Keep the flag: the newest result is drawn as soon as someone looks.
                self._stopping.wait(0.05)
                continue
            with self._latest_lock:
                result, self._latest = self._latest, None
                self._fresh.clear()
            if result is None or result.image is None:
                continue
            started = time.monotonic()
            try:
                self._render(result)
            except Exception as exc:  # noqa: BLE001 - a drawing bug must not take the stream down; say it once
                self.state.event({"type": "view_error", "reason": f"{type(exc).__name__}: {exc}"})
                return
            self._stopping.wait(max(0.0, started + period - time.monotonic()))

    def _render(self, result: "StreamResult") -> None:
        import cv2

        from ..sinks import _annotate

        canvas = _annotate(result, band=False)   # same pixels as the frame: a dragged box maps 1:1
        height, width = canvas.shape[:2]
        if width > self.max_width:
            height = round(height * self.max_width / width)
            width = self.max_width
            canvas = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise SinkError(f"could not encode frame {result.frame} as JPEG")
        self.state.publish_jpeg(result.frame, encoded.tobytes(), width, height)
        self.rendered += 1


__all__ = ["ViewSink"]
