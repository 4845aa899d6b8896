"""The control channel: the workstation UI tells a running stream where the nodule is.

``stream --control ADDR`` listens on a Unix socket path or ``tcp://127.0.0.1:PORT`` (loopback only:
the channel changes what is classified, so it never listens on a network). A client sends JSON
lines; each gets one JSON line back::

    {"roi": [x, y, w, h]}        -> {"ok": true, "change": {"roi": [x, y, w, h]}}
    {"roi": null}                -> {"ok": true, "change": {"roi": null}}     (back to no box)
    {"layout": "dual"}           -> a preset, or {"layout": {"panes": [...], "nodule": [...]}}
    anything else                -> {"ok": false, "error": "<what was wrong; what was expected>"}

An accepted change is queued and stamped; before each frame the stream takes the changes accepted
before that frame was captured, so a change applies from the next frame, and logs it. A rejected message, a half line, a flood or a client that disconnects
changes nothing. The server holds no lock the stream waits on: ``take`` only swaps a list.

Lifecycle as for sources and backends: construct (cheap, parses the address), ``open`` (binds and
starts the thread), ``take`` each frame, ``close`` (idempotent; removes the socket file).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import InputError
from .frames import Roi
from .layout import PRESETS, Layout, parse_layout, parse_roi

MAX_LINE_BYTES = 64 * 1024   # a layout is a few hundred bytes; a longer line is refused and the client dropped
MAX_CLIENTS = 8
MAX_PENDING = 256            # changes not yet taken by the stream (it takes them every frame)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class ControlChange:
    """One accepted change: a nodule box (``roi``; None = clear it) or a new layout."""

    kind: str                      # "roi" or "layout"
    roi: Roi | None = None
    layout: Layout | None = None
    accepted_at: float = 0.0       # time.monotonic() when accepted: it applies to frames captured later

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "roi":
            return {"roi": list(self.roi) if self.roi else None}
        assert self.layout is not None
        return {"layout": self.layout.to_dict()}


def parse_address(address: str) -> tuple[str, Any]:
    """("unix", path) or ("tcp", (host, port)); a TCP host other than loopback is refused."""
    if not isinstance(address, str) or not address.strip():
        raise InputError(f"control address {address!r} is empty; expected a socket path or tcp://127.0.0.1:PORT")
    if address.startswith("tcp://"):
        rest = address[len("tcp://"):]
        host, sep, port_text = rest.rpartition(":")
        host = host.strip("[]")
        if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise InputError(f"control address {address!r} has no valid port; expected tcp://127.0.0.1:PORT")
        if host not in LOOPBACK:
            raise InputError(f"control address {address!r} is not loopback; the control channel listens only on "
                             "127.0.0.1, ::1 or localhost (or a Unix socket path)")
        return "tcp", ("127.0.0.1" if host == "localhost" else host, int(port_text))
    if "://" in address:
        raise InputError(f"control address {address!r}: unknown scheme; expected a socket path or tcp://127.0.0.1:PORT")
    return "unix", Path(address)


def parse_message(line: bytes) -> ControlChange:
    """One JSON line -> a change, or InputError saying what was wrong and what was expected."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("message is not UTF-8; expected one JSON object per line") from None
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"message is not valid JSON ({str(exc)[:80]}); expected one JSON object per line") from None
    if not isinstance(message, dict) or len(message) != 1 or next(iter(message)) not in ("roi", "layout"):
        keys = sorted(message)[:5] if isinstance(message, dict) else type(message).__name__
        raise InputError(f"message has {keys!r}"[:160] + '; expected exactly one of {"roi": [x, y, w, h] or null} '
                         'or {"layout": PRESET or {panes, nodule}}')
    key, value = next(iter(message.items()))
    if key == "roi":
        return ControlChange("roi", roi=None if value is None else parse_roi(_no_text(value, "roi"), "roi"))
    if isinstance(value, str):
        if value not in PRESETS:
            raise InputError(f"layout preset {value[:40]!r} is unknown; expected one of {sorted(PRESETS)} or a "
                             "layout mapping (files are not read over the control channel)")
        return ControlChange("layout", layout=PRESETS[value])
    return ControlChange("layout", layout=parse_layout(value, origin="layout"))


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _no_text(value: Any, where: str) -> Any:
    if isinstance(value, str):   # parse_roi takes "x,y,w,h" from files; over the wire only a list
        raise InputError(f"{where}: expected [x, y, w, h] (a JSON list), got a string")
    return value


class ControlServer:
    """Accepts JSON-line clients on a loopback address and queues the changes they send.

    ``check``: called with each parsed change before it is queued (the stream checks a box against the
    current B-mode pane); an InputError it raises becomes the client's error reply.
    """

    def __init__(self, address: str, check: Callable[[ControlChange], None] | None = None) -> None:
        self.address = address
        self.kind, self.target = parse_address(address)
        self.check = check
        self.port: int | None = None
        self.rejected = 0
        self._pending: list[ControlChange] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._buffers: dict[socket.socket, bytearray] = {}

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> "ControlServer":
        if self._listener is not None:
            return self
        listener = self._bind()
        listener.listen(MAX_CLIENTS)
        listener.setblocking(False)
        self._listener = listener
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="edge-thyroid-control", daemon=True)
        self._thread.start()
        return self

    def _bind(self) -> socket.socket:
        if self.kind == "tcp":
            host, port = self.target
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((host, port))
            except OSError as exc:
                listener.close()
                raise InputError(f"control address {self.address}: cannot listen ({exc.strerror or exc}); "
                                 "expected a free loopback port") from None
            self.port = listener.getsockname()[1]
            return listener
        path: Path = self.target
        self._remove_stale_socket(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            os.chmod(path, 0o600)   # the workstation UI runs as the same user; nobody else may steer
        except OSError as exc:
            listener.close()
            raise InputError(f"control socket {path}: cannot listen ({exc.strerror or exc}); expected a writable "
                             "path in an existing folder") from None
        return listener

    def _remove_stale_socket(self, path: Path) -> None:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise InputError(f"control socket {path} exists and is not a socket; expected a free path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()   # left by a stream that died: nobody listens on it
            return
        finally:
            probe.close()
        raise InputError(f"control socket {path} is in use by another process; expected a free path")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        for client in list(self._buffers):
            self._drop(client)
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.kind == "unix":
                try:
                    self.target.unlink()
                except OSError:
                    pass

    def __enter__(self) -> "ControlServer":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the stream's side ------------------------------------------------------------------

    def take(self, captured_at: float | None = None) -> list[ControlChange]:
        """The changes accepted since the last call, oldest first; with ``captured_at`` (a frame's
        capture time) only those accepted before it: a change applies from the next frame captured."""
        with self._lock:
            if captured_at is None:
                changes, self._pending = self._pending, []
            else:
                changes = [c for c in self._pending if c.accepted_at <= captured_at]
                self._pending = self._pending[len(changes):]
        return changes

    def submit(self, message: dict[str, Any]) -> ControlChange:
        """A change from inside the process (the live view's box tool), parsed, checked and queued exactly
        like a line from a client; raises InputError when it is refused."""
        try:
            return self._take_message(json.dumps(message).encode())
        except InputError:
            self.rejected += 1
            raise

    def _take_message(self, line: bytes) -> ControlChange:
        """Parse, check and queue one message (raises InputError naming why it is refused)."""
        change = replace(parse_message(line), accepted_at=time.monotonic())
        if self.check is not None:
            self.check(change)
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                raise InputError(f"{MAX_PENDING} changes already wait for the next frame; expected fewer messages "
                                 "per frame")
            self._pending.append(change)
        return change

    # -- the server thread ------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._selector is not None
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._read(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        assert self._listener is not None and self._selector is not None
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        if len(self._buffers) >= MAX_CLIENTS:
            self._send(client, {"ok": False, "error": f"too many control clients; at most {MAX_CLIENTS} at once"})
            client.close()
            return
        client.setblocking(False)
        self._buffers[client] = bytearray()
        self._selector.register(client, selectors.EVENT_READ)

    def _read(self, client: socket.socket) -> None:
        try:
            data = client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:   # the client went away: whatever it half-sent is dropped, nothing changes
            self._drop(client)
            return
        buffer = self._buffers[client]
        buffer.extend(data)
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(buffer[:end]).strip()
            del buffer[:end + 1]
            if line:
                self._handle(client, line)
        if len(buffer) > MAX_LINE_BYTES:
            self.rejected += 1
            self._send(client, {"ok": False, "error": f"line longer than {MAX_LINE_BYTES} bytes; expected one "
                                                      "short JSON object per line"})
            self._drop(client)

    def _handle(self, client: socket.socket, line: bytes) -> None:
        if len(line) > MAX_LINE_BYTES:
            self.rejected += 1
            self._send(client, {"ok": False, "error": f"line longer than {MAX_LINE_BYTES} bytes"})
            return
        try:
            change = self._take_message(line)
        except InputError as exc:
            self.rejected += 1
            self._send(client, {"ok": False, "error": str(exc)})
            return
        except Exception as exc:  # noqa: BLE001 - one odd message must not stop the channel's thread
            self.rejected += 1
            self._send(client, {"ok": False, "error": f"message refused ({type(exc).__name__}: {str(exc)[:120]}); "
                                                      "expected {\"roi\": ...} or {\"layout\": ...}"})
            return
        self._send(client, {"ok": True, "change": change.to_dict()})

    def _send(self, client: socket.socket, reply: dict[str, Any]) -> None:
        try:
            client.setblocking(True)
            client.settimeout(0.5)   # a client that never reads must not stall the channel
            client.sendall((json.dumps(reply, allow_nan=False) + "\n").encode())
        except OSError:
            pass
        finally:
            try:
                client.setblocking(False)
            except OSError:
                pass

    def _drop(self, client: socket.socket) -> None:
        self._buffers.pop(client, None)
        if self._selector is not None:
            try:
                self._selector.unregister(client)
            except (KeyError, ValueError):
                pass
        client.close()
