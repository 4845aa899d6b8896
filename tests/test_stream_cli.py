"""`edge-thyroid stream` and `demo` end to end: JSONL records, summary, overlay video, DICOM regions,
clean shutdown on SIGINT/SIGTERM with a complete JSONL, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from edge_thyroid.commands import stream as stream_command
from edge_thyroid.commands.stream import DEMO_CLIP, DEMO_LAYOUT, data_path

from .conftest import REPO, needs_torch
from .test_stream_records import STREAM_RECORDS
from .test_sources import cine, save

pytestmark = needs_torch  # the random_bundle fixture is exported with torch


def cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_thyroid", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def records(path: Path) -> list[dict]:
    """The frame records of a stream's JSONL (every record checked against the published schema)."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        STREAM_RECORDS.validate(line)
    assert lines[0]["type"] == "header" and lines[-1]["type"] == "summary"
    return [r for r in lines if r["type"] == "frame"]


def test_stream_synthetic_writes_a_record_per_processed_frame(random_bundle, tmp_path):
    out = tmp_path / "results.jsonl"
    result = cli("stream", random_bundle, "--source", "synthetic:triple?size=480x270&fps=30", "--max-frames", "30",
                 "--as-fast-as-possible", "--json-out", out, "--json", "--whole-pane")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    lines = records(out)
    assert summary["type"] == "summary" and summary["frames"] == 30 and summary["processed"] == len(lines) == 30
    assert summary["dropped"] == 0 and summary["stopped_by"] == "--max-frames 30"
    assert summary["cache_hits"] > 0 and summary["latency_ms"]["count"] == 30
    record = lines[-1]
    assert record["type"] == "frame" and record["frame"] == 29
    assert set(record["latency_ms"]) == {"capture", "wait", "preprocess", "infer", "head", "temporal", "total", "sink"}
    assert [p["modality"] for p in record["panes"]] == ["bmode", "smi", "swe"]
    assert all(0 <= p["p"] <= 1 for p in record["panes"]) and 0 <= record["p_smoothed"] <= 1
    assert record["decision"] in ("benign", "malignant") and record["dropped_so_far"] == 0
    assert record["roi_source"] == "whole_pane" and record["roi"] == record["panes"][0]["roi"]
    assert "frame" in result.stderr and "latency p50" in result.stderr  # the live console line


def test_stream_dicom_uses_its_ultrasound_regions_and_writes_an_overlay(random_bundle, tmp_path):
    ds, _ = cine(frames=6, height=96, width=192, regions=((0, 0, 95, 95, 1), (96, 0, 191, 95, 2)))
    path = save(ds, tmp_path / "cine.dcm")
    overlay = tmp_path / "overlay.mp4"
    result = cli("stream", random_bundle, "--source", path, "--overlay", overlay, "--quiet", "--as-fast-as-possible")
    assert result.returncode == 0, result.stderr
    assert "dicom regions of cine.dcm layout" in result.stdout and "processed 6" in result.stdout
    video = cv2.VideoCapture(str(overlay))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    ok, frame = video.read()
    assert ok and frame.shape == (96 + 48, 192, 3)       # the screen and the decision band below it


def test_stream_without_source_plays_the_demo_clip(random_bundle, tmp_path):
    out = tmp_path / "demo.jsonl"
    result = cli("stream", random_bundle, "--max-frames", "12", "--as-fast-as-possible", "--json-out", out)
    assert result.returncode == 0, result.stderr
    assert "DDTI" in result.stderr and "(demo layout)" in result.stdout
    lines = records(out)
    assert len(lines) == 12 and lines[0]["panes"][0]["roi"] == [280, 70, 400, 400]
    # the clip's frames are nodule-centred crops: its layout's nodule box is the crop region
    assert all(r["roi"] == [280, 70, 400, 400] and r["roi_source"] == "layout" for r in lines)
    assert all(r["decision"] in ("benign", "malignant") for r in lines)


def test_demo_runs_with_a_given_bundle(random_bundle):
    result = cli("demo", "--bundle", random_bundle, "--max-frames", "60", "--as-fast-as-possible", "--json",
                 "--no-view")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["processed"] == 60 and summary["abstained"].get("blank", 0) >= 4  # the clip's probe-lift at 3.6 s
    assert "no_roi" not in summary["abstained"] and summary["decisions"].get("abstain", 0) < 10


def test_demo_without_the_bundled_model_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(stream_command, "data_path", lambda name: tmp_path / name)
    result = CliRunner().invoke(stream_command.demo, [])
    assert result.exit_code != 0
    assert "the bundled demo model is missing at" in str(result.exception) and "--bundle" in str(result.exception)


def test_bundled_demo_files_are_installed_with_the_package():
    assert data_path(DEMO_CLIP).is_file() and data_path(DEMO_CLIP).stat().st_size < 5 * 2**20
    assert json.loads(data_path(DEMO_LAYOUT).read_text())["panes"][0]["modality"] == "bmode"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_with_a_complete_jsonl(random_bundle, tmp_path, signum):
    out = tmp_path / "live.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "edge_thyroid", "stream", str(random_bundle), "--source",
                                "synthetic:dual?size=480x270&fps=30", "--json-out", str(out), "--json", "--quiet",
                                "--whole-pane"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 10):
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["stopped_by"] == signum.name
    text = out.read_text(encoding="utf-8")
    assert text.endswith("\n")
    lines = records(out)  # every line parses
    assert len(lines) == summary["processed"] >= 10
    assert [r["processed"] for r in lines] == list(range(1, len(lines) + 1))


def test_errors_are_one_line(random_bundle, tmp_path):
    result = cli("stream", random_bundle, "--source", "synthetic", "--layout", "quad", "--max-frames", "1")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: unknown layout preset 'quad'") or "neither a preset" in result.stderr
    result = cli("stream", random_bundle, "--source", tmp_path / "missing.mp4")
    assert result.returncode == 2 and "is not a device, an existing file or folder" in result.stderr
    result = cli("stream", random_bundle, "--source", "synthetic?size=320x180", "--max-frames", "1", "--show")
    assert result.returncode == 2 and "error: --show:" in result.stderr
    result = cli("stream", random_bundle, "--source", "synthetic?size=320x180", "--max-frames", "1",
                 "--overlay", tmp_path / "out.gif")
    assert result.returncode == 2 and "unknown video type .gif" in result.stderr
    result = cli("stream", random_bundle, "--source", "synthetic?size=320x180&frames=300", "--as-fast-as-possible",
                 "--json-out", "/dev/full", "--quiet")
    assert result.returncode == 2 and "No space left on device" in result.stderr
    assert "stopped by jsonl sink error" in result.stdout


def test_help_teaches():
    result = cli("stream", "--help")
    assert result.returncode == 0
    for text in ("--source", "rtsp://", "synthetic", "--as-fast-as-possible", "Ctrl-C", "--layout"):
        assert text in result.stdout
