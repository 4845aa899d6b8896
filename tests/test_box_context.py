"""A bundle's nodule-box context: every nodule box is grown ``context`` times about its centre, within its
pane, before the model sees it (frames.widen_box, Manifest.box_context), in classify, evaluate, verify and
the stream alike; whole images and panes are unchanged."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_thyroid.bundle import MANIFEST, BundleError, Manifest
from edge_thyroid.cli import cli
from edge_thyroid.dataset import Sample, Split
from edge_thyroid.engine import Engine
from edge_thyroid.evaluation import SplitSpec, evaluate_model
from edge_thyroid.frames import Pane, widen_box
from edge_thyroid.layout import Layout

from .conftest import demo_copy_with_box_context, ultrasound_like
from .test_evaluate_roi import write_csv
from .test_pipeline import FakeEngine, ListSink, ListSource, run


def reference_widen(roi, context, bounds):
    """float64 reference: the grown box's exact edges, then the intersection with the bounds."""
    x, y, w, h = (float(v) for v in roi)
    cx, cy = x + w / 2, y + h / 2
    left, top = cx - w * context / 2, cy - h * context / 2
    right, bottom = cx + w * context / 2, cy + h * context / 2
    bx, by, bw, bh = bounds
    return max(left, bx), max(top, by), min(right, bx + bw), min(bottom, by + bh)


def test_widen_box_matches_the_float64_reference_and_stays_in_its_pane():
    rng = np.random.default_rng(0)
    for _ in range(500):
        bounds = (int(rng.integers(0, 50)), int(rng.integers(0, 50)), int(rng.integers(60, 400)), int(rng.integers(60, 400)))
        w, h = int(rng.integers(8, bounds[2] + 1)), int(rng.integers(8, bounds[3] + 1))
        roi = (bounds[0] + int(rng.integers(0, bounds[2] - w + 1)), bounds[1] + int(rng.integers(0, bounds[3] - h + 1)), w, h)
        context = float(rng.uniform(1.0, 3.0))
        x, y, bw, bh = widen_box(roi, context, bounds)
        left, top, right, bottom = reference_widen(roi, context, bounds)
        # integer edges: at most one pixel outside the exact ones (rounded outwards), never outside the pane
        assert left - 1 < x <= left + 1e-9 and top - 1 < y <= top + 1e-9
        assert right - 1e-9 <= x + bw < right + 1 and bottom - 1e-9 <= y + bh < bottom + 1
        assert bounds[0] <= x and bounds[1] <= y and x + bw <= bounds[0] + bounds[2] and y + bh <= bounds[1] + bounds[3]
        # the box handed over is always inside what the model sees
        assert x <= roi[0] and y <= roi[1] and x + bw >= roi[0] + roi[2] and y + bh >= roi[1] + roi[3]


def test_context_one_and_whole_panes_are_unchanged():
    pane = (10, 20, 300, 200)
    assert widen_box((50, 60, 40, 30), 1.0, pane) == (50, 60, 40, 30)
    assert widen_box(pane, 1.7, pane) == pane
    assert widen_box((100, 100, 40, 20), 2.0, pane) == (80, 90, 80, 40)   # exact: 2x about the centre (120, 110)


def test_manifest_records_the_context_only_when_it_is_not_one(tmp_path):
    manifest = json.loads((demo_copy_with_box_context(tmp_path / "a", 1.0) / MANIFEST).read_text())
    parsed = Manifest.from_dict(manifest)
    assert parsed.box_context == 1.0 and "nodule_box" not in parsed.to_dict()   # older bundles stay byte-identical
    manifest["nodule_box"] = {"context": 1.25}
    parsed = Manifest.from_dict(manifest)
    assert parsed.box_context == 1.25 and parsed.to_dict()["nodule_box"]["context"] == 1.25
    for bad in (0.5, 9.0, "wide"):
        manifest["nodule_box"] = {"context": bad}
        with pytest.raises(BundleError, match="nodule_box.context|invalid value"):
            Manifest.from_dict(manifest)


def test_classify_evaluate_and_sample_panes_grow_the_box(tmp_path):
    bundle = demo_copy_with_box_context(tmp_path / "bundle", 1.5)
    plain = demo_copy_with_box_context(tmp_path / "plain", 1.0)
    frame = cv2.cvtColor(ultrasound_like(240, 320, seed=3), cv2.COLOR_GRAY2BGR)
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), frame)
    roi = (100, 80, 80, 60)
    grown = widen_box(roi, 1.5, (0, 0, 320, 240))
    assert grown == (80, 65, 120, 90)
    assert Sample(image, None, "", "bmode", roi=roi).pane(frame, 1.5) == Pane("bmode", grown)
    runner = CliRunner()
    out = runner.invoke(cli, ["classify", str(bundle), str(image), "--roi", "100,80,80,60", "--json",
                               "--backend", "onnxruntime"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.output.strip().splitlines()[-1])
    assert record["panes"][0]["roi"] == list(grown)
    # the same p as the context-1 bundle handed the grown box itself
    with Engine(plain, backend="onnxruntime") as engine:
        expected = engine.classify(frame, [Pane("bmode", grown)]).probability
    assert abs(record["p_malignant"] - expected) <= 1e-6
    rows = write_csv(tmp_path / "labels.csv", [
        {"image": "frame.png", "label": "malignant", "case_id": "1", "roi": "100,80,80,60"},
        {"image": "frame.png", "label": "benign", "case_id": "2", "roi": "20,20,60,60"}])
    _, scored = evaluate_model(bundle, rows, SplitSpec(Split.ALL), resamples=20)
    assert abs(scored.scores[0] - expected) <= 1e-6
    out = runner.invoke(cli, ["info", str(bundle)])
    assert "grown 1.5x" in out.output


def test_the_stream_grows_the_nodule_box_within_the_bmode_pane():
    layout = Layout("dual", (Pane("bmode", (0, 0, 200, 160)), Pane("swe", (200, 0, 200, 160))),
                    nodule=(150, 100, 40, 40))
    frames = [cv2.cvtColor(ultrasound_like(160, 400, seed=i), cv2.COLOR_GRAY2BGR) for i in range(3)]
    engine, sink = FakeEngine(box_context=2.0), ListSink()
    run(engine, ListSource(frames), sink, layout=layout, lossless=True, whole_pane=False)
    grown = widen_box((150, 100, 40, 40), 2.0, (0, 0, 200, 160))
    assert grown == (130, 80, 70, 80)   # cut at the B-mode pane's right and bottom edges, not the frame's
    records = [r.record() for r in sink.results]
    assert len(records) == 3 and all(r["roi"] == [150, 100, 40, 40] and r["model_roi"] == list(grown) for r in records)
    assert engine.calls and all(call[0] == grown and call[1] == (200, 0, 200, 160) for call in engine.calls)


def test_export_box_context_out_of_range_is_one_line(tmp_path):
    out = CliRunner().invoke(cli, ["export", "--random-init", "-o", str(tmp_path / "b"), "--box-context", "0.5"])
    assert out.exit_code == 2
    assert "--box-context" in out.output and "between 1.0 and 4.0" in out.output and "Traceback" not in out.output
