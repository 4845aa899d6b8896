"""DICOM cines with missing or lying tags, and mutated files: each is replayed or refused with one
line naming the problem; the reader never crashes with anything but a SourceError."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_thyroid.errors import EdgeThyroidError
from edge_thyroid.sources import SourceError, SourceOptions, create_source

from ..conftest import needs_torch
from .dicom_files import LYING_DICOMS, write_dicom
from .helpers import assert_refused, parse_jsonl, run_cli


def replay(path: Path) -> tuple[int, tuple[str, ...] | None]:
    """Open, read the region layout and every frame, close: (frames read, layout modalities)."""
    source = create_source(f"dicom:{path}", SourceOptions(realtime=False))
    try:
        source.open()
        hint = source.layout_hint
        frames = 0
        while source.read() is not None:
            frames += 1
        return frames, hint.modalities if hint else None
    finally:
        source.close()


def test_the_valid_file_replays_with_its_regions(tmp_path):
    assert replay(write_dicom(tmp_path / "ok.dcm")) == (4, ("bmode", "smi"))


@pytest.mark.parametrize("name, change, fragment", LYING_DICOMS, ids=[c[0] for c in LYING_DICOMS])
def test_lying_dicom_is_refused_naming_the_tag(tmp_path, name, change, fragment):
    path = write_dicom(tmp_path / "lying.dcm", change)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the very values under test
        with pytest.raises(SourceError) as info:
            replay(path)
    message = str(info.value)
    assert fragment in message.lower() and "\n" not in message and "lying.dcm" in message, message


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> bytes:
    return write_dicom(tmp_path_factory.mktemp("dicom") / "base.dcm").read_bytes()


PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_dicom_replays_or_raises_source_error(valid_bytes, tmp_path_factory, data):
    """Byte flips (mostly in the header, where the tags are) and truncation of a valid file."""
    raw = bytearray(valid_bytes)
    header_end = raw.index(PIXEL_DATA_TAG) + 12
    kind = data.draw(st.sampled_from(["flip header", "flip anywhere", "truncate pixels", "truncate header"]))
    if kind.startswith("flip"):
        end = header_end if kind == "flip header" else len(raw)
        for _ in range(data.draw(st.integers(1, 6))):
            raw[data.draw(st.integers(128, end - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate pixels":
        del raw[data.draw(st.integers(header_end, len(raw) - 1)):]
    else:
        del raw[data.draw(st.integers(0, header_end - 1)):]
    path = tmp_path_factory.mktemp("mutated") / "m.dcm"
    path.write_bytes(bytes(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            frames, _ = replay(path)
        except EdgeThyroidError as exc:
            assert "\n" not in str(exc), str(exc)
        else:
            assert 1 <= frames <= 4


CLI_CASES = [c for c in LYING_DICOMS if c[0] in ("frame count larger than the pixel data", "pixel data truncated mid-frame",
                                                 "negative frame time", "region outside the image")]


@needs_torch
@pytest.mark.parametrize("name, change, fragment", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_lying_dicom_is_refused_by_stream(random_bundle, tmp_path, name, change, fragment):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = write_dicom(tmp_path / "lying.dcm", change)
    message = assert_refused(run_cli("stream", random_bundle, "--source", path, "--json-out", tmp_path / "o.jsonl"),
                             "lying.dcm")
    assert fragment in message.lower()


@needs_torch
def test_valid_dicom_streams_with_its_region_layout(random_bundle, tmp_path):
    out = tmp_path / "o.jsonl"
    result = run_cli("stream", random_bundle, "--source", write_dicom(tmp_path / "ok.dcm"), "--whole-pane",
                     "--as-fast-as-possible",
                     "--json-out", out, "--quiet")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    records = [r for r in parse_jsonl(out) if r["type"] == "frame"]
    assert [r["frame"] for r in records] == [0, 1, 2, 3]
    assert [p["modality"] for p in records[0]["panes"]] == ["bmode", "smi"]
