"""The live view's server in-process on a free loopback port: the page, the MJPEG stream, the state as
JSON, the nodule-box hook; slow, never-reading and disconnecting browsers; the sink inside a stream."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time

import cv2
import numpy as np
import pytest

from edge_thyroid.errors import InputError
from edge_thyroid.view import ViewServer, ViewSink, ViewState, parse_address
from edge_thyroid.view import server as server_module
from edge_thyroid.view.server import BOUNDARY, page_html

from .test_pipeline import FakeEngine, run

TIMEOUT = 10.0


def jpeg(value: int, size: tuple[int, int] = (64, 48)) -> bytes:
    image = np.full((size[1], size[0], 3), value, np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def record(frame: int, t: float, p: float | None = 0.3, decision: str = "benign", reason: str | None = None) -> dict:
    return {"type": "frame", "frame": frame, "wall_time": t, "p": p, "p_smoothed": p, "decision": decision,
            "reason": reason, "detail": None, "threshold": 0.5, "latency_ms": {"infer": 3.0, "total": 5.0},
            "panes": [{"modality": "bmode", "roi": [10, 10, 100, 80]}], "processed": frame + 1,
            "dropped_so_far": 0, "cache_hits": 0, "gaps": 0}


@pytest.fixture
def served():
    """A state and its server on a free loopback port, with a hook that records the boxes it gets."""
    boxes: list = []
    state = ViewState()
    with ViewServer(state, "127.0.0.1", 0, fps=50.0, on_roi=boxes.append, write_timeout_s=2.0) as server:
        yield state, server, boxes


def get(server: ViewServer, path: str) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def post(server: ViewServer, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        connection.request("POST", "/roi", body, {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


class MjpegReader:
    """Reads /stream.mjpg part by part (headers and JPEG bytes), like the page does."""

    def __init__(self, server: ViewServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        self.sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert f"boundary={BOUNDARY}".encode() in head

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the stream")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def part(self) -> tuple[int, bytes]:
        head = self._until(b"\r\n\r\n").decode()
        length = int(re.search(r"Content-Length: (\d+)", head).group(1))
        while len(self.buffer) < length + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the stream mid-frame")
            self.buffer += chunk
        data, self.buffer = self.buffer[:length], self.buffer[length + 2:]
        return int(re.search(r"X-Frame: (\d+)", head).group(1)), data

    def close(self) -> None:
        self.sock.close()


def wait_for(condition, timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


# ---------------------------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize("text, expected", [
    ("8765", ("127.0.0.1", 8765)), ("0", ("127.0.0.1", 0)), ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("localhost:9000", ("localhost", 9000)), ("[::1]:8080", ("::1", 8080)), (":8080", ("127.0.0.1", 8080))])
def test_a_bare_port_is_loopback_and_another_host_only_when_given(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "host:", "70000", "1.2.3.4:-1", "[::1:80", "8765 8766"])
def test_a_bad_address_says_what_was_expected(text):
    with pytest.raises(InputError, match=r"is not \[HOST:\]PORT; expected e.g. 8765"):
        parse_address(text)


def test_a_busy_port_is_one_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(InputError, match=r"cannot listen on 127.0.0.1:\d+: .*expected a free port"):
            ViewServer(ViewState(), "127.0.0.1", taken.getsockname()[1]).start()


# ---------------------------------------------------------------------------------------------
# Endpoints


def test_the_page_is_shipped_whole_with_nothing_from_the_network(served):
    _, server, _ = served
    status, headers, body = get(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert body == page_html()
    text = body.decode()
    for needed in ('id="frame"', 'id="chart"', "/stream.mjpg", "/state.json", "/roi"):
        assert needed in text
    # No CDN, no external script, style or font: the page works on a box without internet.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text


def test_unknown_paths_are_404_with_the_list_of_endpoints(served):
    _, server, _ = served
    status, _, body = get(server, "/nope")
    assert status == 404 and "/state.json" in json.loads(body)["error"]


def test_state_json_has_the_latest_record_and_the_last_minute(served):
    state, server, _ = served
    now = time.time()
    state.publish(record(0, now - 90), (640, 480))             # older than the minute: trimmed
    for i in range(1, 6):
        state.publish(record(i, now - 6 + i, p=0.1 * i, decision="abstain" if i == 3 else "benign",
                             reason="frozen" if i == 3 else None), (640, 480))
    state.event({"type": "header", "source": {"description": "demo clip"}, "backend": "onnxruntime"})
    state.event({"type": "gap", "reason": "device unplugged", "duration_s": 1.5})
    status, _, body = get(server, "/state.json")
    snapshot = json.loads(body)
    assert status == 200
    assert snapshot["latest"]["frame"] == 5 and snapshot["frame_size"] == [640, 480]
    assert [round(p[1], 3) for p in snapshot["history"]] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert snapshot["abstained"] == {"frozen": 1}
    assert [e["type"] for e in snapshot["events"]] == ["gap"] and snapshot["events"][0]["reason"] == "device unplugged"
    assert snapshot["header"]["source"]["description"] == "demo clip" and snapshot["summary"] is None
    assert snapshot["control"] is True and snapshot["ended"] is False
    # Only what is newer than ?since= travels on the next poll.
    newer = json.loads(get(server, f"/state.json?since={snapshot['history'][2][0]}")[2])
    assert [p[1] for p in newer["history"]] == [p[1] for p in snapshot["history"][3:]]
    status, _, body = get(server, "/state.json?since=yesterday")
    assert status == 400 and "not a number" in json.loads(body)["error"]


def test_frame_jpg_before_any_frame_is_503_then_the_newest(served):
    state, server, _ = served
    assert get(server, "/frame.jpg")[0] == 503
    state.publish_jpeg(7, jpeg(10), 64, 48)
    state.publish_jpeg(8, jpeg(200), 64, 48)
    status, headers, body = get(server, "/frame.jpg")
    assert status == 200 and headers["X-Frame"] == "8"
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).mean() > 150


def test_mjpeg_parts_carry_the_newest_frame_and_skip_what_a_reader_missed():
    state = ViewState()
    # 2 fps: after a frame the client's turn comes again in 0.5 s, time enough to publish three more.
    with ViewServer(state, "127.0.0.1", 0, fps=2.0) as server:
        reader = MjpegReader(server)
        try:
            assert wait_for(lambda: state.viewers == 1)
            state.publish_jpeg(1, jpeg(50), 64, 48)
            frame, data = reader.part()
            assert frame == 1 and data == state.latest_jpeg().data
            # Three frames while the client waits for its turn: it gets the last one, not a backlog.
            for i in (2, 3, 4):
                state.publish_jpeg(i, jpeg(50 + i), 64, 48)
            assert reader.part()[0] == 4
        finally:
            reader.close()
        assert wait_for(lambda: state.viewers == 0)


def test_mjpeg_rate_is_capped_per_client():
    state = ViewState()
    with ViewServer(state, "127.0.0.1", 0, fps=5.0) as server:
        reader = MjpegReader(server)
        stop = threading.Event()

        def publish_fast() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                state.publish_jpeg(i, jpeg(i % 255), 64, 48)
                time.sleep(0.005)

        producer = threading.Thread(target=publish_fast)
        producer.start()
        try:
            received, start = 0, time.monotonic()
            while time.monotonic() - start < 1.5:
                reader.part()
                received += 1
        finally:
            stop.set()
            producer.join()
            reader.close()
    # ~300 frames were published; at 5 fps at most ~8 arrive within 1.5 s (+1 already waiting).
    assert 2 <= received <= 10


# ---------------------------------------------------------------------------------------------
# Browsers that misbehave cost the producer nothing


def test_two_readers_a_never_reader_and_a_mid_frame_disconnect_do_not_hold_the_producer(served):
    state, server, _ = served
    big = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()   # ~300 KB, fills buffers
    never = socket.create_connection(("127.0.0.1", server.port))
    never.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    never.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")      # and never reads a byte
    quitter = socket.create_connection(("127.0.0.1", server.port))
    quitter.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    readers = [MjpegReader(server), MjpegReader(server)]
    try:
        assert wait_for(lambda: state.viewers == 4)
        published = 0
        for i in range(1, 61):
            state.publish_jpeg(i, data, 640, 480)
            published += 1
            if i == 5:
                quitter.recv(1000)          # part of a frame, then gone
                quitter.close()
            for reader in readers:          # the two good readers keep up
                frame, body = reader.part()
                assert body == data and frame <= i
        assert published == 60
        # The quitter's thread noticed and left; the never-reader is still blocked in its own thread only.
        assert wait_for(lambda: state.viewers <= 3)
    finally:
        for reader in readers:
            reader.close()
        never.close()


def test_stop_returns_with_a_never_reading_client_connected():
    state = ViewState()
    server = ViewServer(state, "127.0.0.1", 0, fps=50.0, write_timeout_s=30.0).start()
    never = socket.create_connection(("127.0.0.1", server.port))
    never.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    never.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_for(lambda: state.viewers == 1)
    payload = np.random.default_rng(1).integers(0, 255, 400_000, np.uint8).tobytes()
    for i in range(5):
        state.publish_jpeg(i, payload, 1, 1)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 6.0           # not the 30 s write timeout
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1.0).close()
    never.close()


# ---------------------------------------------------------------------------------------------
# The nodule box from the page


def test_roi_post_hands_the_box_to_the_hook_and_clears_it(served):
    state, server, boxes = served
    state.publish(record(0, time.time()), (640, 480))
    assert post(server, b'{"roi": [10, 20, 100, 80]}') == (200, {"roi": [10, 20, 100, 80]})
    assert post(server, b'{"roi": null}') == (200, {"roi": None})
    assert boxes == [(10, 20, 100, 80), None]
    assert json.loads(get(server, "/state.json")[2])["roi"] is None


@pytest.mark.parametrize("body, status, message", [
    (b'{"roi": [1, 2, 3]}', 400, "not 4 integers"),
    (b'{"roi": [1, 2, 3.5, 4]}', 400, "not 4 integers"),
    (b'{"roi": [true, 2, 3, 4]}', 400, "not 4 integers"),
    (b'{"roi": [-1, 2, 3, 4]}', 400, "x, y >= 0"),
    (b'{"roi": [600, 400, 100, 100]}', 400, "outside the 640x480 frame"),
    (b'{"box": [1, 2, 3, 4]}', 400, 'not {"roi"'),
    (b'[1, 2, 3, 4]', 400, 'not {"roi"'),
    (b'{"roi": ', 400, "POST /roi"),
    (b"x" * 5000, 413, "expected 1-4096 bytes"),
])
def test_a_bad_box_is_refused_with_the_reason_and_changes_nothing(served, body, status, message):
    state, server, boxes = served
    state.publish(record(0, time.time()), (640, 480))
    answer = post(server, body)
    assert answer[0] == status and message in answer[1]["error"]
    assert boxes == []


def test_roi_from_another_site_or_as_a_form_is_refused(served):
    _, server, boxes = served
    body = b'{"roi": [1, 2, 3, 4]}'
    assert post(server, body, {"Origin": "http://evil.example"})[0] == 403
    assert post(server, body, {"Content-Type": "text/plain"})[0] == 415
    assert post(server, body, {"Origin": f"http://127.0.0.1:{server.port}"})[0] == 200
    assert boxes == [(1, 2, 3, 4)]


def test_roi_from_another_machine_is_refused(served, monkeypatch):
    # Tests speak only loopback: the server is told its loopback client is another machine.
    _, server, boxes = served
    monkeypatch.setattr(server_module, "is_loopback", lambda host: False)
    status, answer = post(server, b'{"roi": [1, 2, 3, 4]}')
    assert status == 403 and "only from this machine" in answer["error"]
    assert boxes == []


def test_without_a_control_channel_the_box_cannot_be_set():
    with ViewServer(ViewState(), "127.0.0.1", 0) as server:
        status, answer = post(server, b'{"roi": null}')
        assert status == 404 and "no control channel" in answer["error"]
        assert json.loads(get(server, "/state.json")[2])["control"] is False


def test_a_hook_that_refuses_the_box_says_why(served):
    def refuse(roi):
        raise ValueError("the box is outside the B-mode pane")

    with ViewServer(ViewState(), "127.0.0.1", 0, on_roi=refuse) as server:
        status, answer = post(server, b'{"roi": [1, 2, 3, 4]}')
        assert status == 409 and "outside the B-mode pane" in answer["error"]


# ---------------------------------------------------------------------------------------------
# The sink inside a stream


def test_the_view_sink_serves_a_running_stream_and_loses_nothing():
    """A stream with the view and a reading client: every frame processed, none dropped for the view,
    JPEGs of the annotated frame arrive, and the server is gone when the stream ends."""
    announced: list[str] = []
    sink = ViewSink("127.0.0.1", 0, fps=20.0, announce=announced.append)
    seen: list[tuple[int, bytes]] = []
    stop = threading.Event()

    def watch() -> None:
        if not wait_for(lambda: announced != []):
            return   # the main thread's assertions report it
        reader = MjpegReader(sink.server)
        try:
            while not stop.is_set() and len(seen) < 3:
                seen.append(reader.part())
        except (EOFError, OSError):
            pass
        finally:
            reader.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    # ~2.5 s of synthetic screen at 30 fps, realtime, so the watcher connects while frames flow.
    summary = run(FakeEngine(), "synthetic:dual?size=384x216&fps=30&frames=75", sink, layout=None)
    stop.set()
    watcher.join(TIMEOUT)
    assert announced and announced[0].startswith("live view: http://127.0.0.1:")
    assert summary.error is None and summary.processed >= 1
    assert summary.sink_dropped["view"] == 0
    assert len(seen) >= 1
    image = cv2.imdecode(np.frombuffer(seen[-1][1], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (216, 384) and image.std() > 5
    snapshot = sink.state.snapshot()
    assert snapshot["latest"]["processed"] == summary.processed and len(snapshot["history"]) == summary.processed
    assert snapshot["ended"]
    # The stream's first and last records reach the view as what they are, not as events.
    assert snapshot["header"]["type"] == "header" and snapshot["summary"]["processed"] == summary.processed
    assert snapshot["events"] == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sink.server.port), timeout=1.0).close()
