"""Faults while streaming: the source disappears (device unplugged, network stream killed, video file
truncated), frames are bad, the model output overflows, a sink is slow or blocked, the disk fills
up. The stream reports, retries, resumes or stops with a clear error; no result already written is
lost (every JSONL line parses)."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_thyroid.engine import Engine
from edge_thyroid.head import FusionHead
from edge_thyroid.layout import preset
from edge_thyroid.stream import Pipeline, PipelineConfig, ReconnectPolicy, StreamSummary
from edge_thyroid.sinks import JsonlSink, Sink
from edge_thyroid.sources import SourceError, SourceOptions
from edge_thyroid.sources.synthetic import SyntheticSource

from ..conftest import needs_torch
from .helpers import REPO, assert_refused, parse_jsonl, run_cli

pytestmark = needs_torch

SCREEN = "size=480x270"  # the triple preset (16:9) scaled down: small frames keep the suite fast
FAST_RECONNECT = ReconnectPolicy(attempts=4, first_delay_s=0.02, max_delay_s=0.5)


@pytest.fixture(scope="module")
def engine(random_bundle):
    with Engine(random_bundle) as e:
        yield e


def stream(engine, source, path: Path, sinks: list[Sink] | None = None, *, seconds: float | None = None,
           **config) -> tuple[StreamSummary, list[dict]]:
    """Run ``source`` (opened here) through the pipeline into a JSONL file; return summary and records.
    With ``seconds``, the stream is stopped then: a stream stuck in a loop is seen, not waited for."""
    source.open()
    options = {"layout": preset("triple"), "lossless": True, "handle_signals": False, "reconnect": FAST_RECONNECT,
               "whole_pane": True, **config}
    pipeline = Pipeline(engine, source, [JsonlSink(path), *(sinks or [])], PipelineConfig(**options))
    deadline = threading.Timer(seconds, pipeline.stop, args=("test deadline",)) if seconds else None
    try:
        if deadline:
            deadline.start()
        summary = pipeline.run()
    finally:
        if deadline:
            deadline.cancel()
        source.close()
    return summary, parse_jsonl(path)


def frames_of(records: list[dict]) -> list[dict]:
    return [r for r in records if r["type"] == "frame"]


# --- the source disappears ---------------------------------------------------------------------


class UnpluggedDevice(SyntheticSource):
    """A live device that stops delivering at ``fail_at`` frames and refuses ``down_for`` reopens."""

    live = True

    def __init__(self, target: str, options=None, *, fail_at: tuple[int, ...] = (), down_for: int = 2) -> None:
        super().__init__(target, options)
        self.fail_at, self.down_for = set(fail_at), down_for
        self.refusals = 0
        self.open_times: list[float] = []

    def _open(self) -> None:
        self.open_times.append(time.monotonic())
        if self.refusals > 0:
            self.refusals -= 1
            raise SourceError(f"cannot open capture device {self.target} (no such device)")
        super()._open()

    def _read(self):
        if self.index in self.fail_at:
            self.fail_at.discard(self.index)
            self.refusals = self.down_for
            raise SourceError(f"{self.describe()} stopped delivering frames (unplugged or busy?)")
        return super()._read()


def test_unplugged_device_is_reopened_with_back_off_and_the_gap_recorded(engine, tmp_path):
    source = UnpluggedDevice(f"synthetic:triple?{SCREEN}&frames=50", SourceOptions(realtime=False),
                             fail_at=(12, 30), down_for=2)
    summary, records = stream(engine, source, tmp_path / "out.jsonl")
    gaps = [r for r in records if r["type"] == "gap"]
    assert len(gaps) == 2 and all(g["resumed"] and g["attempts"] == 3 for g in gaps)
    assert [g["frames_before"] for g in gaps] == [12, 30] and "unplugged" in gaps[0]["reason"]
    # Back-off: the three reopen attempts wait 0.02, 0.04, 0.08 s.
    assert all(g["duration_s"] >= 0.14 for g in gaps)
    opens = source.open_times[1:4]
    assert opens[2] - opens[1] > opens[1] - opens[0] > 0.015
    frames = frames_of(records)
    assert [r["frame"] for r in frames] == list(range(50)), "every frame after the gap is processed"
    assert summary.error is None and len(summary.gaps) == 2 and frames[-1]["gaps"] == 2


def test_device_gone_for_good_ends_with_a_clear_error_and_intact_output(engine, tmp_path):
    source = UnpluggedDevice(f"synthetic:triple?{SCREEN}&frames=50", SourceOptions(realtime=False),
                             fail_at=(8,), down_for=10**6)
    summary, records = stream(engine, source, tmp_path / "out.jsonl")
    assert "was lost and did not come back after 4 reopen attempts" in summary.error
    gap = [r for r in records if r["type"] == "gap"][-1]
    assert gap["type"] == "gap" and not gap["resumed"] and gap["attempts"] == 4 and "no such device" in gap["last_error"]
    assert [r["frame"] for r in frames_of(records)] == list(range(8))


class DeadDevice(UnpluggedDevice):
    """Opens fine, then never delivers a frame: a capture card whose cable was pulled."""

    def _read(self):
        if self.index >= 5:
            raise SourceError(f"{self.describe()} stopped delivering frames (unplugged or busy?)")
        return super()._read()


def test_device_that_opens_but_never_delivers_backs_off_and_is_reported_lost(engine, tmp_path):
    summary, records = stream(engine, DeadDevice(f"synthetic:triple?{SCREEN}", SourceOptions(realtime=False)),
                                  tmp_path / "out.jsonl", seconds=4.0)
    gaps = [r for r in records if r["type"] == "gap"]
    # FAST_RECONNECT allows 4 attempts with 0.02..0.5 s waits: about 1 s before the device counts as lost.
    assert summary.error is not None and "did not come back" in summary.error
    assert len(gaps) <= FAST_RECONNECT.attempts + 1


def avi_bytes(path: Path, frames: int, size: tuple[int, int] = (320, 180)) -> bytes:
    """An MJPG AVI (a format FFmpeg can also read from a socket, front to back)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(40, 200, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path.read_bytes()


class VideoServer:
    """Serves a video on tcp://127.0.0.1:PORT; the first connection is killed half way through."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            end = len(self.data) // 2 if self.connections == 1 else len(self.data)
            try:
                for start in range(0, end, 8192):
                    conn.sendall(self.data[start:min(start + 8192, end)])
                    time.sleep(0.003)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.server.close()


def test_killed_network_stream_is_reconnected_and_the_gap_recorded(random_bundle, tmp_path):
    server = VideoServer(avi_bytes(tmp_path / "clip.avi", 60))
    out = tmp_path / "out.jsonl"
    try:
        result = run_cli("stream", random_bundle, "--source", f"tcp://127.0.0.1:{server.port}", "--layout", "full",
                         "--whole-pane", "--max-frames", 70, "--json-out", out, "--quiet", "--json", timeout=180)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    records = parse_jsonl(out)
    gaps = [r for r in records if r["type"] == "gap"]
    assert len(gaps) >= 1 and gaps[0]["resumed"] and "ended or stalled" in gaps[0]["reason"]
    assert server.connections >= 2
    frames = frames_of(records)
    # Live sources drop what the model has no time for: count by source frame index, not records.
    assert max(r["frame"] for r in frames) >= gaps[0]["frames_before"], "frames after the reconnect were processed"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["type"] == "summary" and len(summary["gaps"]) == len(gaps)


def test_truncated_video_file_ends_cleanly_with_what_it_had(random_bundle, tmp_path):
    clip = tmp_path / "clip.avi"
    data = avi_bytes(clip, 40)
    clip.write_bytes(data[: int(len(data) * 0.55)])
    out = tmp_path / "out.jsonl"
    result = run_cli("stream", random_bundle, "--source", clip, "--layout", "full", "--whole-pane",
                     "--as-fast-as-possible",
                     "--json-out", out, "--quiet", "--json", timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    frames = frames_of(parse_jsonl(out))
    assert 10 <= len(frames) < 40
    assert json.loads(result.stdout.strip().splitlines()[-1])["processed"] == len(frames)


def test_video_file_truncated_while_it_plays(random_bundle, tmp_path):
    """The file shrinks under the reader (a copy or a recording cut short): the stream ends, output intact."""
    clip = tmp_path / "clip.avi"
    avi_bytes(clip, 90)
    out = tmp_path / "out.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "edge_thyroid", "stream", str(random_bundle), "--source", str(clip),
                                "--layout", "full", "--whole-pane", "--json-out", str(out), "--quiet"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
            time.sleep(0.05)
        os.truncate(clip, clip.stat().st_size // 3)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert "Traceback" not in stderr, stderr[-2000:]
    assert "stopped by" in stdout + stderr
    frames = frames_of(parse_jsonl(out))
    assert 1 <= len(frames) < 90


def test_capture_device_that_does_not_exist_is_refused(random_bundle, tmp_path):
    assert_refused(run_cli("stream", random_bundle, "--source", "/dev/video97", "--json-out", tmp_path / "o.jsonl"),
                   "/dev/video97")


# --- bad frames and bad outputs ----------------------------------------------------------------


class BadFrames(SyntheticSource):
    """Synthetic screens, some replaced: ``bad`` maps frame index -> frame transformation."""

    def __init__(self, target: str, options=None, *, bad: dict | None = None) -> None:
        super().__init__(target, options)
        self.bad = bad or {}

    def _read(self):
        item = super()._read()
        if item is None or self.index not in self.bad:
            return item
        frame, timestamp, decode_ms = item
        return self.bad[self.index](frame), timestamp, decode_ms


SAME_SOURCE_BAD_FRAMES = {
    3: lambda f: f[:100, :100],                         # another size and aspect ratio: the layout cannot fit
    5: lambda f: np.zeros_like(f),                      # all black: probe lifted
    6: lambda f: np.full_like(f, 255),                  # all white
    8: lambda f: np.ascontiguousarray(f[::2, ::2]),     # half size, same aspect: scaled layout, classified
    9: lambda f: f[:, :, 1],                            # grayscale: replicated to BGR, classified
}


def test_bad_frames_abstain_with_a_reason_and_the_stream_goes_on(engine, tmp_path):
    source = BadFrames(f"synthetic:triple?{SCREEN}&frames=14", SourceOptions(realtime=False), bad=SAME_SOURCE_BAD_FRAMES)
    summary, records = stream(engine, source, tmp_path / "out.jsonl")
    by_frame = {r["frame"]: r for r in frames_of(records)}
    assert sorted(by_frame) == list(range(14)) and summary.error is None
    assert by_frame[3]["decision"] == "abstain" and by_frame[3]["reason"] == "invalid"
    assert "100x100" in by_frame[3]["detail"]
    assert [by_frame[i]["reason"] for i in (5, 6)] == ["blank", "blank"]
    for i in (8, 9, 13):
        assert by_frame[i]["p"] is not None and 0 <= by_frame[i]["p"] <= 1


NOT_AN_IMAGE = [
    ("float32 frame", lambda f: f.astype(np.float32)),
    ("four channels", lambda f: np.dstack([f, f[:, :, :1]])),
    ("empty frame", lambda f: np.zeros((0, 0, 3), np.uint8)),
]
@pytest.mark.parametrize("name, bad", NOT_AN_IMAGE, ids=[n for n, _ in NOT_AN_IMAGE])
def test_frame_that_is_not_an_image_abstains_and_the_stream_goes_on(engine, tmp_path, name, bad):
    source = BadFrames(f"synthetic:triple?{SCREEN}&frames=8", SourceOptions(realtime=False), bad={3: bad})
    summary, records = stream(engine, source, tmp_path / "out.jsonl")
    assert summary.error is None, summary.error
    by_frame = {r["frame"]: r for r in frames_of(records)}
    assert sorted(by_frame) == list(range(8))
    assert by_frame[3]["reason"] == "invalid" and "not an image" in by_frame[3]["detail"]
    assert by_frame[4]["p"] is not None


class LiveBadFrame(BadFrames):
    live = True


def test_one_bad_frame_from_a_live_source_does_not_stop_progress(engine, tmp_path):
    source = LiveBadFrame(f"synthetic:triple?{SCREEN}&frames=8", SourceOptions(realtime=False),
                          bad={3: NOT_AN_IMAGE[0][1]})
    summary, records = stream(engine, source, tmp_path / "out.jsonl", seconds=4.0)
    assert summary.processed == 8 and summary.gaps == [], (summary.processed, len(summary.gaps))
    assert len(frames_of(records)) == 8 and frames_of(records)[3]["reason"] == "invalid"


def test_overflowing_model_output_abstains_as_invalid(engine, tmp_path, monkeypatch):
    weight = np.full(engine.head.weight.shape, 1e307)
    weight[:, ::2] = -1e307  # +inf and -inf halves: NaN
    monkeypatch.setattr(engine, "head", FusionHead(engine.head.modalities, weight, engine.head.presence_bias, 0.0))
    summary, records = stream(engine, SyntheticSource(f"synthetic:triple?{SCREEN}&frames=6", SourceOptions(realtime=False)),
                              tmp_path / "out.jsonl")
    frames = frames_of(records)
    assert len(frames) == 6 and summary.error is None
    assert all(r["decision"] == "abstain" and r["reason"] == "invalid" and "no decision" in r["detail"] for r in frames)
    assert all(r["p"] is None for r in frames)


# --- slow, blocked and failing sinks -----------------------------------------------------------


class SlowSink(Sink):
    name = "slow"

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay, self.gate = delay, gate
        self.written: list[float] = []

    def write(self, result) -> None:
        if self.gate is not None:
            self.gate.wait()
        time.sleep(self.delay)
        self.written.append(time.monotonic())


def test_slow_sink_does_not_stall_inference(engine, tmp_path):
    slow = SlowSink(delay=0.25)
    summary, records = stream(engine, SyntheticSource(f"synthetic:triple?{SCREEN}&frames=30", SourceOptions(realtime=False)),
                              tmp_path / "out.jsonl", sinks=[slow], sink_queue=4)
    frames = frames_of(records)
    assert len(frames) == 30, "the JSONL sink got every record although another sink lags"
    assert summary.processed == 30 and summary.sink_dropped["slow"] > 0
    # Had the pipeline waited for the sink, nothing would have been dropped for it.
    assert len(slow.written) + summary.sink_dropped["slow"] == 30


def test_blocked_sink_does_not_stall_inference(engine, tmp_path):
    gate = threading.Event()
    blocked = SlowSink(gate=gate)
    release_at: list[float] = []

    def release() -> None:
        release_at.append(time.monotonic())
        released_wall.append(time.time())
        gate.set()

    released_wall: list[float] = []
    timer = threading.Timer(4.0, release)
    timer.start()
    try:
        summary, records = stream(engine, SyntheticSource(f"synthetic:triple?{SCREEN}&frames=15", SourceOptions(realtime=False)),
                                  tmp_path / "out.jsonl", sinks=[blocked], sink_queue=4)
    finally:
        timer.cancel()
        gate.set()
    frames = frames_of(records)
    assert summary.processed == 15 and len(frames) == 15
    assert release_at, "the stream waited for the blocked sink to be released to drain it"
    assert frames[-1]["wall_time"] < released_wall[0], "every frame was classified while the sink was blocked"
    assert blocked.written and min(blocked.written) >= release_at[0]


# --- the output disk is full or unwritable -----------------------------------------------------


def stream_cli(bundle: Path, out: str | Path, frames: int = 300, **kwargs) -> subprocess.CompletedProcess:
    return run_cli("stream", bundle, "--source", f"synthetic:triple?{SCREEN}", "--layout", "triple",
                   "--whole-pane", "--as-fast-as-possible", "--max-frames", frames, "--json-out", out, "--quiet", **kwargs)


def test_output_to_a_full_device_is_a_clear_error(random_bundle):
    assert_refused(stream_cli(random_bundle, "/dev/full", frames=20), "No space left on device", "/dev/full")


def test_output_file_size_limit_leaves_every_written_line_intact(random_bundle, tmp_path):
    """RLIMIT_FSIZE makes writes fail part-way through the file, like a disk filling up (EFBIG)."""
    out = tmp_path / "out.jsonl"
    limit = 40_000

    def cap_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = stream_cli(random_bundle, out, preexec_fn=cap_file_size)
    assert_refused(result, "jsonl sink failed", str(out))
    records = parse_jsonl(out)
    assert len(records) >= 20 and out.stat().st_size <= limit


def tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                                capture_output=True).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root; the RLIMIT_FSIZE test covers a full disk")
def test_tiny_tmpfs_filling_up_leaves_every_written_line_intact(random_bundle, tmp_path):
    disk = tmp_path / "disk"
    if not tmpfs(disk, "48k"):
        pytest.skip("this container may not mount a tmpfs")
    try:
        result = stream_cli(random_bundle, disk / "out.jsonl")
        assert_refused(result, "No space left on device")
        assert len(parse_jsonl(disk / "out.jsonl")) >= 20
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("where", ["missing folder", "a directory"])
def test_unwritable_output_is_refused_before_streaming(random_bundle, tmp_path, where):
    target = tmp_path / "missing" / "out.jsonl" if where == "missing folder" else tmp_path
    assert_refused(stream_cli(random_bundle, target, frames=5), str(target))
