"""The live view's HTTP server (standard library only): the page, an MJPEG stream, the state as JSON,
and the nodule box from the page when the stream has a control channel.

Endpoints:

* ``GET /`` the page (``edge_thyroid/view/static/index.html``, everything inline: no CDN, no build step);
* ``GET /stream.mjpg`` ``multipart/x-mixed-replace`` JPEGs, at most ``fps`` a second, each part with
  ``Content-Length`` and ``X-Frame`` (the stream's frame index) headers; a client always gets the newest
  frame, so a slow one sees fewer frames rather than older ones;
* ``GET /frame.jpg`` the newest JPEG once;
* ``GET /state.json[?since=T]`` the latest frame record, p and smoothed p since wall-clock time ``T``
  (default: the last minute), abstain reasons, decisions, source gaps, viewers;
* ``POST /roi`` ``{"roi": [x, y, w, h]}`` (frame pixels) or ``{"roi": null}``: handed to ``on_roi``;
  404 when the stream has no control channel.

Loopback by default. Each connection has its own thread with a socket timeout, so a browser that never
reads is dropped after ``write_timeout_s`` and one that disconnects ends only its own thread.
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import InputError
from ..frames import Roi
from .state import ViewState

RoiCallback = Callable[[Roi | None], None]

DEFAULT_HOST = "127.0.0.1"
BOUNDARY = "edge-thyroid-frame"
MAX_BODY = 4096


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); a bare port listens on loopback only."""
    spec = text.strip()
    host, _, port_text = spec.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or DEFAULT_HOST
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535 or not host or "[" in host or "]" in host:
        raise InputError(f"view address {text!r} is not [HOST:]PORT; expected e.g. 8765 (loopback), "
                         f"127.0.0.1:8765 or 0.0.0.0:8765 (every interface), port 0-65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def page_html() -> bytes:
    """The page shipped in the package (package data, read through importlib.resources)."""
    return resources.files("edge_thyroid.view").joinpath("static", "index.html").read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = True            # a stuck client thread never keeps the process alive
    allow_reuse_address = True

    view: "ViewServer"


class ViewServer:
    """Serves a :class:`ViewState` over HTTP on its own thread. Use as a context manager, or
    ``start()`` / ``stop()``. ``port`` 0 takes a free port (see ``url``)."""

    def __init__(self, state: ViewState, host: str = DEFAULT_HOST, port: int = 0, *, fps: float = 10.0,
                 on_roi: RoiCallback | None = None, write_timeout_s: float = 10.0) -> None:
        if not fps > 0:
            raise InputError(f"view frame rate {fps} must be > 0 frames a second")
        self.state = state
        self.host, self.port = host, port
        self.fps = fps
        self.on_roi = on_roi
        self.write_timeout_s = write_timeout_s
        self.page = page_html()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "::") else host
        return f"http://{shown}:{self.port}/"

    def start(self) -> "ViewServer":
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_class = type("ViewHTTPServer", (_Server,), {"address_family": family})
        try:
            self._server = server_class((self.host, self.port), _Handler)
        except OSError as exc:
            raise InputError(f"the view cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; expected a "
                             f"free port on a local address, e.g. --view 8766 or --view 127.0.0.1:0") from None
        self._server.view = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="view-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, wake every waiting stream, cut connections still open, join the thread."""
        self.state.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._connections_lock:
            open_now = list(self._connections)
        for connection in open_now:
            try:
                connection.shutdown(socket.SHUT_RDWR)   # unblocks a write to a client that stopped reading
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._server = self._thread = None

    def __enter__(self) -> "ViewServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _track(self, connection: socket.socket, add: bool) -> None:
        with self._connections_lock:
            (self._connections.add if add else self._connections.discard)(connection)


def _check_roi(value: Any, frame_size: tuple[int, int] | None) -> Roi | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise InputError(f"roi {value!r} is not 4 integers; expected [x, y, w, h] in frame pixels, or null")
    x, y, w, h = value
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise InputError(f"roi {value} needs x, y >= 0 and w, h > 0")
    if frame_size is not None and (x + w > frame_size[0] or y + h > frame_size[1]):
        raise InputError(f"roi {value} reaches outside the {frame_size[0]}x{frame_size[1]} frame")
    return (x, y, w, h)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "edge-thyroid-view"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.view.write_timeout_s)
        self.server.view._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass   # the client went away mid-response: nothing left to flush
        finally:
            self.server.view._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per request would bury the stream's own status line."""

    # -- responses -----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload, allow_nan=False).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # -- routes ---------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        view = self.server.view
        url = urlsplit(self.path)
        try:
            if url.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, view.page, "text/html; charset=utf-8")
            elif url.path == "/state.json":
                self._state(parse_qs(url.query))
            elif url.path == "/stream.mjpg":
                self._mjpeg()
            elif url.path == "/frame.jpg":
                self._frame()
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no {url.path}; the view serves /, /stream.mjpg, /frame.jpg, "
                                                  f"/state.json and POST /roi")
        except OSError:   # reset, broken pipe, write timeout
            self.close_connection = True   # the browser left or stopped reading: end this connection only

    def _state(self, query: dict[str, list[str]]) -> None:
        since = None
        if "since" in query:
            try:
                since = float(query["since"][0])
            except ValueError:
                return self._error(HTTPStatus.BAD_REQUEST, f"since={query['since'][0]!r} is not a number; "
                                                           f"expected wall-clock seconds")
        snapshot = self.server.view.state.snapshot(since)
        snapshot["control"] = self.server.view.on_roi is not None
        snapshot["fps"] = self.server.view.fps
        self._json(HTTPStatus.OK, snapshot)

    def _frame(self) -> None:
        state = self.server.view.state
        state.want_frame()
        latest = state.latest_jpeg()
        jpeg = state.next_jpeg(latest.seq if latest else 0, timeout=1.0) or latest
        if jpeg is None:
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet; the stream has not produced one")
        self._send(HTTPStatus.OK, jpeg.data, "image/jpeg", {"X-Frame": str(jpeg.frame)})

    def _mjpeg(self) -> None:
        view = self.server.view
        state = view.state
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        period = 1.0 / view.fps
        seq = 0
        state.client_joined()
        try:
            while not state.closed:
                jpeg = state.next_jpeg(seq, timeout=0.5)
                if jpeg is None:
                    if state.ended or self._client_gone():
                        return
                    continue
                seq, sent = jpeg.seq, time.monotonic()
                head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg.data)}\r\n"
                        f"X-Frame: {jpeg.frame}\r\n\r\n").encode()
                self.wfile.write(head + jpeg.data + b"\r\n")
                self.wfile.flush()
                state.frame_sent()
                # The cap holds per client even if frames are encoded faster than it.
                time.sleep(max(0.0, sent + period - time.monotonic()))
        finally:
            state.client_left()

    def _client_gone(self) -> bool:
        """While no frame comes, notice a browser that closed the connection (it stops counting as a viewer,
        so the view stops encoding for it)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def do_POST(self) -> None:  # noqa: N802
        view = self.server.view
        if urlsplit(self.path).path != "/roi":
            return self._error(HTTPStatus.NOT_FOUND, f"no POST {self.path}; the view takes POST /roi")
        if view.on_roi is None:
            return self._error(HTTPStatus.NOT_FOUND, "this stream has no control channel; the nodule box cannot be "
                                                     "set from the view")
        # The box changes what is classified: like the control channel, only this machine may set it, even
        # when the view itself is served to the network for looking.
        if not is_loopback(self.client_address[0]):
            return self._error(HTTPStatus.FORBIDDEN, "the nodule box can be set only from this machine (loopback); "
                                                     "this view is for looking from elsewhere")
        # A page on another site can make the browser POST here; a JSON content type forces a CORS preflight
        # (which this server never grants) and the Origin, when sent, must be this server.
        if self.headers.get_content_type() != "application/json":
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "POST /roi expects Content-Type: application/json")
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host"):
            return self._error(HTTPStatus.FORBIDDEN, f"POST /roi from origin {origin!r} refused; only the view's "
                                                     f"own page may set the box")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(HTTPStatus.LENGTH_REQUIRED, "POST /roi needs a Content-Length")
        if not 0 < length <= MAX_BODY:
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"POST /roi body of {length} bytes; expected 1-{MAX_BODY} bytes of JSON")
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict) or "roi" not in body:
                raise InputError('the body is not {"roi": [x, y, w, h]} or {"roi": null}')
            roi = _check_roi(body["roi"], view.state.latest()[1])
        except (ValueError, InputError) as exc:
            return self._error(HTTPStatus.BAD_REQUEST, f"POST /roi: {exc}")
        try:
            view.on_roi(roi)
        except Exception as exc:  # noqa: BLE001 - the control channel's refusal goes back to the page
            return self._error(HTTPStatus.CONFLICT, f"the stream refused the box: {exc}")
        view.state.set_roi(list(roi) if roi else None)
        self._json(HTTPStatus.OK, {"roi": list(roi) if roi else None})


__all__ = ["ViewServer", "is_loopback", "page_html", "parse_address"]
