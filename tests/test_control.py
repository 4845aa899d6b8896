"""The control channel: JSON lines over a loopback socket, bad and hostile messages, disconnects."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_thyroid.control import MAX_LINE_BYTES, ControlChange, ControlServer, parse_address, parse_message
from edge_thyroid.errors import InputError


class Client:
    """A workstation UI: sends lines, reads one reply line per message."""

    def __init__(self, server: ControlServer) -> None:
        if server.kind == "tcp":
            self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(5)
            self.sock.connect(str(server.target))
        self.file = self.sock.makefile("rb")

    def send(self, payload: bytes | dict) -> dict:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.sock.sendall(data + b"\n")
        return json.loads(self.file.readline())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def wait_for(server: ControlServer, count: int, timeout: float = 5.0) -> list[ControlChange]:
    changes: list[ControlChange] = []
    deadline = time.monotonic() + timeout
    while len(changes) < count and time.monotonic() < deadline:
        changes += server.take()
        time.sleep(0.01)
    return changes


@pytest.fixture(params=["unix", "tcp"])
def server(request, tmp_path):
    address = str(tmp_path / "control.sock") if request.param == "unix" else "tcp://127.0.0.1:0"
    with ControlServer(address) as running:
        yield running


def test_roi_and_layout_messages_are_acknowledged_and_queued_in_order(server):
    client = Client(server)
    try:
        assert client.send({"roi": [10, 20, 200, 150]}) == {"ok": True, "change": {"roi": [10, 20, 200, 150]}}
        assert client.send({"roi": None}) == {"ok": True, "change": {"roi": None}}
        reply = client.send({"layout": {"panes": [{"modality": "bmode", "roi": [0, 0, 640, 480]}],
                                        "nodule": [100, 100, 200, 200]}})
        assert reply["ok"] and reply["change"]["layout"]["nodule"] == [100, 100, 200, 200]
        assert client.send({"layout": "dual"})["ok"]
    finally:
        client.close()
    changes = server.take()
    assert [c.kind for c in changes] == ["roi", "roi", "layout", "layout"]
    assert changes[0].roi == (10, 20, 200, 150) and changes[1].roi is None
    assert changes[3].layout.name == "dual"
    assert server.take() == []          # taken once


BAD = [
    (b"not json", "not valid JSON"),
    (b"[1, 2, 3]", "expected exactly one of"),
    (b'{"roi": [1, 2, 3]}', "expected 4 numbers"),
    (b'{"roi": [0, 0, -5, 10]}', "not a rectangle"),
    (b'{"roi": [0, 0, 1.5, 10]}', "not an integer"),
    (b'{"roi": [0, 0, true, 10]}', "not an integer"),
    (b'{"roi": [0, 0, NaN, 10]}', "not valid JSON"),
    (b'{"roi": "0,0,10,10"}', "a JSON list"),
    (b'{"roi": [0, 0, 10, 10], "layout": "dual"}', "expected exactly one of"),
    (b'{"layout": "/etc/passwd"}', "files are not read"),
    (b'{"layout": {"panes": []}}', "non-empty list"),
    (b'{"colour": "red"}', "expected exactly one of"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[" * 100000, "not valid JSON"),
]


@pytest.mark.parametrize("line,expected", BAD, ids=[b[1] for b in BAD])
def test_bad_messages_get_an_error_reply_and_change_nothing(tmp_path, line, expected):
    with ControlServer("tcp://127.0.0.1:0") as server:
        client = Client(server)
        try:
            if len(line) > MAX_LINE_BYTES:
                client.sock.sendall(line)   # no newline: the server refuses the line and drops the client
                reply = json.loads(client.file.readline())
                assert not reply["ok"] and "longer than" in reply["error"]
            else:
                reply = client.send(line)
                assert reply["ok"] is False and expected in reply["error"]
                assert client.send({"roi": [1, 2, 3, 4]})["ok"]    # the connection still works
        finally:
            client.close()
        changes = wait_for(server, 1, timeout=0.3)
        assert all(c.roi == (1, 2, 3, 4) for c in changes)
        assert server.rejected == 1


def test_a_client_that_disconnects_mid_line_changes_nothing(server):
    client = Client(server)
    client.sock.sendall(b'{"roi": [10, 20, 30')
    client.close()
    time.sleep(0.2)
    assert server.take() == []
    other = Client(server)    # the server still serves
    try:
        assert other.send({"roi": None})["ok"]
    finally:
        other.close()


def test_the_stream_checks_a_change_before_it_is_queued(tmp_path):
    def inside_pane(change: ControlChange) -> None:
        if change.roi and change.roi[0] + change.roi[2] > 640:
            raise InputError(f"roi {list(change.roi)} is not inside the bmode pane [0, 0, 640, 480]")

    with ControlServer("tcp://127.0.0.1:0", check=inside_pane) as server:
        client = Client(server)
        try:
            reply = client.send({"roi": [600, 0, 100, 100]})
            assert not reply["ok"] and "not inside the bmode pane" in reply["error"]
        finally:
            client.close()
        assert server.take() == []


def test_only_loopback_addresses_are_accepted(tmp_path):
    assert parse_address("tcp://127.0.0.1:9000") == ("tcp", ("127.0.0.1", 9000))
    assert parse_address("tcp://localhost:9000") == ("tcp", ("127.0.0.1", 9000))
    assert parse_address(str(tmp_path / "s")) == ("unix", tmp_path / "s")
    for bad, message in [("tcp://0.0.0.0:9000", "not loopback"), ("tcp://192.168.1.5:9000", "not loopback"),
                         ("tcp://127.0.0.1", "no valid port"), ("tcp://127.0.0.1:99999", "no valid port"),
                         ("udp://127.0.0.1:9", "unknown scheme"), ("", "empty")]:
        with pytest.raises(InputError, match=message):
            parse_address(bad)


def test_a_unix_socket_path_in_use_or_not_a_socket_is_refused_and_a_stale_one_replaced(tmp_path):
    path = tmp_path / "control.sock"
    with ControlServer(str(path)):
        with pytest.raises(InputError, match="in use"):
            ControlServer(str(path)).open()
    assert not path.exists()                       # close removed it
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()                                  # a socket file nobody listens on
    with ControlServer(str(path)) as server:
        assert server.take() == []
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(InputError, match="not a socket"):
        ControlServer(str(regular)).open()
    assert regular.read_text() == "x"


def test_close_is_idempotent_and_open_twice_is_one_server(tmp_path):
    server = ControlServer(str(tmp_path / "c.sock"))
    server.open()
    server.open()
    server.close()
    server.close()
    assert not (tmp_path / "c.sock").exists()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.sampled_from(
        ["roi", "layout", "panes", "modality", "nodule", "screen", "name", "width", "height", "x"]), inner, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)))
def test_fuzzed_messages_are_either_a_valid_change_or_an_input_error(line):
    try:
        change = parse_message(line)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert change.kind in ("roi", "layout")
    if change.kind == "roi" and change.roi is not None:
        x, y, w, h = change.roi
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1
    json.dumps(change.to_dict(), allow_nan=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=300).filter(lambda b: b"\n" not in b), min_size=1, max_size=8))
def test_the_server_survives_fuzzed_lines_and_still_applies_a_good_one(tmp_path, lines):
    with ControlServer("tcp://127.0.0.1:0") as server:
        client = Client(server)
        try:
            for line in lines:
                if line.strip():
                    assert "ok" in client.send(line)
            assert client.send({"roi": [5, 6, 7, 8]}) == {"ok": True, "change": {"roi": [5, 6, 7, 8]}}
        finally:
            client.close()
        assert server.take()[-1].roi == (5, 6, 7, 8)


def test_a_check_that_fails_unexpectedly_is_an_error_reply_and_the_channel_lives_on():
    calls = []

    def broken(change: ControlChange) -> None:
        calls.append(change)
        if len(calls) == 1:
            raise RuntimeError("boom")

    with ControlServer("tcp://127.0.0.1:0", check=broken) as server:
        client = Client(server)
        try:
            reply = client.send({"roi": [1, 2, 3, 4]})
            assert not reply["ok"] and "RuntimeError: boom" in reply["error"]
            assert client.send({"roi": [1, 2, 3, 4]})["ok"]
        finally:
            client.close()
        assert [c.roi for c in server.take()] == [(1, 2, 3, 4)]


def test_submit_from_inside_the_process_is_checked_and_queued_like_a_client_line(tmp_path):
    """The live view's box tool hands its box to ControlServer.submit: same parsing, same check, same
    queue (and so the same 'applies from the next frame' and logging) as a line from a socket client."""
    from edge_thyroid.control import ControlServer
    from edge_thyroid.errors import InputError

    def check(change):
        if change.roi is not None and change.roi[0] > 500:
            raise InputError(f"box {list(change.roi)} is not inside the bmode pane")

    server = ControlServer(str(tmp_path / "ui.sock"), check=check)
    change = server.submit({"roi": [10, 20, 30, 40]})
    assert change.kind == "roi" and tuple(change.roi) == (10, 20, 30, 40) and change.accepted_at > 0
    with pytest.raises(InputError, match="not inside"):
        server.submit({"roi": [600, 20, 30, 40]})
    with pytest.raises(InputError):
        server.submit({"roi": [1, 2, "x", 4]})
    cleared = server.submit({"roi": None})
    assert [c.to_dict() for c in server.take()] == [{"roi": [10, 20, 30, 40]}, {"roi": None}]
    assert cleared.roi is None and server.take() == []
