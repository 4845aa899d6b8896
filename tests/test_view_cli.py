"""`stream --view` and `demo` (view on by default, `--no-view`) through the command line, with the bundled
demo model (no torch needed): the address is printed, the view serves while the stream runs and stops
with it, and bad or busy addresses are one clear line."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

import edge_thyroid.view as view_package
from edge_thyroid.commands import stream as stream_command
from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path

from .conftest import REPO


class RecordingViewSink(view_package.ViewSink):
    """The real sink; before it stops, it asks its own server for /state.json as a browser would."""

    made: list["RecordingViewSink"] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.served: dict | None = None
        RecordingViewSink.made.append(self)

    def close(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            connection.request("GET", "/state.json")
            self.served = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        super().close()


@pytest.fixture
def recording(monkeypatch):
    RecordingViewSink.made = []
    monkeypatch.setattr(view_package, "ViewSink", RecordingViewSink)
    return RecordingViewSink.made


def test_demo_serves_the_view_by_default_on_a_free_port_when_its_own_is_taken(monkeypatch, recording):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        held = taken.getsockname()[1]
        monkeypatch.setattr(stream_command, "DEMO_VIEW", ("127.0.0.1", held))
        result = CliRunner().invoke(stream_command.demo, ["--max-frames", "24", "--as-fast-as-possible", "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(recording) == 1
    sink = recording[0]
    assert sink.server.port not in (0, held)
    assert f"live view: http://127.0.0.1:{sink.server.port}/" in result.output
    assert sink.served["latest"]["processed"] == 24 and len(sink.served["history"]) == 24
    assert sink.served["frame_size"] == [960, 540]
    with pytest.raises(OSError):   # it stopped with the stream
        socket.create_connection(("127.0.0.1", sink.server.port), timeout=1.0).close()


def test_demo_no_view_serves_nothing(recording):
    result = CliRunner().invoke(stream_command.demo, ["--max-frames", "5", "--as-fast-as-possible", "--quiet",
                                                      "--no-view"])
    assert result.exit_code == 0, result.output
    assert recording == [] and "live view" not in result.output


def test_stream_view_at_an_explicit_address(recording):
    result = CliRunner().invoke(stream_command.stream, [str(data_path(DEMO_BUNDLE)), "--source",
                                                        "synthetic?size=320x180&fps=30", "--max-frames", "6",
                                                        "--as-fast-as-possible", "--quiet", "--view", "127.0.0.1:0",
                                                        "--view-fps", "5"])
    assert result.exit_code == 0, result.output
    assert recording[0].server.fps == 5.0 and recording[0].served["latest"]["processed"] == 6
    assert f"live view: http://127.0.0.1:{recording[0].server.port}/" in result.output


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_thyroid", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_a_bad_view_address_is_one_line():
    result = cli("stream", str(data_path(DEMO_BUNDLE)), "--source", "synthetic", "--view", "localhost")
    assert result.returncode == 2
    assert "--view" in result.stderr and "is not [HOST:]PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_busy_view_port_is_one_line_before_the_stream_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = cli("stream", str(data_path(DEMO_BUNDLE)), "--source", "synthetic", "--max-frames", "5",
                     "--view", f"127.0.0.1:{taken.getsockname()[1]}")
    assert result.returncode != 0
    assert "error: the view cannot listen on 127.0.0.1:" in result.stderr and "Traceback" not in result.stderr
    assert "frames 5" not in result.stderr + result.stdout
