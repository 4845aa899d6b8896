"""The stream's JSONL is self-describing: a header first (what ran, on what, with which settings), a
summary last, untrained modalities marked instead of given a p, and every record valid against the
JSON Schema shipped in docs/ (checked here on real output of the demo bundle, and by every other
stream test through tests/test_stream_cli.records and tests/reliability/helpers.parse_jsonl)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from jsonschema import Draft202012Validator, ValidationError

from edge_thyroid.bundle import MANIFEST, load_bundle, sha256_file
from edge_thyroid.cli import main
from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path

from .conftest import REPO

SCHEMA = json.loads((REPO / "docs" / "stream-records.schema.json").read_text(encoding="utf-8"))
STREAM_RECORDS = Draft202012Validator(SCHEMA)


def run_stream(*args: str) -> int:
    try:
        main(["stream", *args])
    except SystemExit as exc:
        return exc.code or 0
    return 0


@pytest.fixture(scope="module")
def demo_records(tmp_path_factory):
    """A short dual-pane stream through the shipped demo bundle (trained on B-mode only)."""
    out = tmp_path_factory.mktemp("records") / "demo.jsonl"
    code = run_stream(str(data_path(DEMO_BUNDLE)), "--source", "synthetic:dual?size=480x270&frames=12",
                      "--as-fast-as-possible", "--quiet", "--json-out", str(out), "--tau", "0.25", "--whole-pane")
    assert code == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_the_schema_is_valid_and_refuses_what_it_should():
    Draft202012Validator.check_schema(SCHEMA)
    pane = {"modality": "swe", "roi": [0, 0, 10, 10], "cached": False, "blank": False, "status": "untrained"}
    STREAM_RECORDS.validate({"type": "gap", "start_ts": 1.0, "end_ts": 2.0, "duration_s": 1.0, "attempts": 1,
                             "resumed": True, "reason": "gone", "last_error": None, "frames_before": 3,
                             "wall_time": 5.0})
    with pytest.raises(ValidationError):  # an untrained pane must not carry a p
        Draft202012Validator(SCHEMA["$defs"]["pane"] | {"$defs": SCHEMA["$defs"]}).validate({**pane, "p": 0.5})
    with pytest.raises(ValidationError):  # nor may a trained pane leave its p out
        Draft202012Validator(SCHEMA["$defs"]["pane"] | {"$defs": SCHEMA["$defs"]}).validate(
            {k: v for k, v in pane.items() if k != "status"})
    with pytest.raises(ValidationError):
        STREAM_RECORDS.validate({"type": "frame", "frame": 0})


def test_every_record_of_a_real_stream_is_valid(demo_records):
    for record in demo_records:
        STREAM_RECORDS.validate(record)
    types = [r["type"] for r in demo_records]
    assert types[0] == "header" and types[-1] == "summary" and set(types[1:-1]) == {"frame"}


def test_header_says_what_ran_on_what(demo_records):
    header = demo_records[0]
    bundle = load_bundle(data_path(DEMO_BUNDLE))
    assert header["format_version"] == 2 and header["engine_version"]
    assert header["bundle"] == {"path": str(bundle.root), "manifest_sha256": sha256_file(bundle.root / MANIFEST)}
    assert header["model"]["key"] == "int8" and header["model"]["precision"] == "int8"
    assert header["model"]["trained_modalities"] == list(bundle.manifest.trained_modalities) == ["bmode"]
    # The demo bundle is gated on ONNX Runtime and OpenVINO: auto may take either, whichever was faster here.
    assert header["backend"] in ("onnxruntime", "openvino") and header["threads"] is None
    # --backend auto (the default) writes its choice and the figures behind it into the header.
    auto = header["backend_auto"]
    assert auto["backend"] == header["backend"] and auto["configuration"].split("/")[0] == header["backend"]
    assert auto["how"] and isinstance(auto["excluded"], dict)
    assert [p["modality"] for p in header["layout"]["panes"]] == ["bmode", "swe"]
    assert all(len(p["roi"]) == 4 for p in header["layout"]["panes"])
    assert header["source"]["kind"] == "synthetic" and "synthetic" in header["source"]["description"]
    assert header["threshold"] == bundle.manifest.threshold.value
    assert header["temporal"]["smoothing"] == "ema" and header["temporal"]["tau_s"] == 0.25
    started = datetime.fromisoformat(header["started_utc"])
    assert started.utcoffset() == timedelta(0) and abs(datetime.now(timezone.utc) - started) < timedelta(minutes=10)


def test_untrained_modalities_have_a_status_not_a_p(demo_records):
    frames = [r for r in demo_records if r["type"] == "frame"]
    assert len(frames) == 12
    panes = {p["modality"]: p for p in frames[-1]["panes"]}
    assert panes["swe"]["status"] == "untrained" and "p" not in panes["swe"] and "logit" not in panes["swe"]
    assert "status" not in panes["bmode"] and 0.0 <= panes["bmode"]["p"] <= 1.0
    assert frames[-1]["p"] is not None  # the fused p still uses every pane the model takes


def test_summary_closes_the_file(demo_records):
    summary = demo_records[-1]
    frames = [r for r in demo_records if r["type"] == "frame"]
    assert summary["processed"] == len(frames) == summary["frames"] and summary["stopped_by"] == "end of source"
    assert summary["latency_ms"]["count"] == len(frames) and summary["error"] is None
