"""Panes of modalities the head does not read (exactly zero weights and presence bias, e.g. SMI and SWE
for the B-mode-only demo model) are not run: same p, logits and CAMs, a third of the backbone work."""

from __future__ import annotations

import numpy as np
import pytest

from edge_thyroid.engine import Engine, fuse
from edge_thyroid.frames import Pane
from edge_thyroid.head import ClassMap, FusionHead
from edge_thyroid.layout import preset
from edge_thyroid.sources import SourceOptions, create_source

from .test_pipeline import MODALITIES, FakeEngine, ListSink, run

BMODE_ONLY = ("smi", "swe")


@pytest.fixture(scope="module")
def demo_bundle_path():
    from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path

    return data_path(DEMO_BUNDLE)


def bmode_only_head(seed: int = 0, channels: int = 8) -> FusionHead:
    rng = np.random.default_rng(seed)
    weight = np.zeros((3, channels))
    weight[0] = rng.normal(0, 1.0, channels)
    return FusionHead(MODALITIES, weight, np.array([0.2, 0.0, 0.0]), -0.1)


def test_unread_modalities_are_the_exactly_zero_blocks():
    assert bmode_only_head().unread_modalities() == BMODE_ONLY
    head = bmode_only_head()
    head.presence_bias[2] = 1e-9            # the presence of an SWE pane moves the logit: it is read
    assert head.unread_modalities() == ("smi",)
    head.weight[1, 3] = -1e-12              # so does any non-zero weight
    assert head.unread_modalities() == ()
    everything_zero = FusionHead(MODALITIES, np.zeros((3, 8)), np.zeros(3), 0.3)
    assert everything_zero.unread_modalities() == ()  # nothing would be left to run
    classes = ClassMap(np.ones((2, 8)), np.zeros(2), np.array([False, True]))
    assert FusionHead(("bmode",), np.zeros((1, 8)), np.zeros(1), 0.0, classes=classes).unread_modalities() == ()


def test_fuse_fills_an_unread_pane_with_what_running_it_gives_and_refuses_a_read_one():
    head = bmode_only_head()
    rng = np.random.default_rng(1)
    maps = [rng.normal(size=(8, 2, 3)).astype(np.float32) for _ in MODALITIES]
    panes = [Pane(m, (0, 0, 4, 4)) for m in MODALITIES]
    full = fuse(head, panes, maps)
    skipped = fuse(head, panes, [maps[0], None, None])
    assert skipped.probability == full.probability and skipped.logit == full.logit
    assert skipped.contributions == full.contributions
    for modality in MODALITIES:
        np.testing.assert_array_equal(skipped.cam(modality), full.cam(modality))
    assert not np.any(skipped.cam("swe"))
    # Not run: flagged, zero maps and pooled features, and the CAM the head computes from zeros.
    assert [r.ran for r in skipped.panes] == [True, False, False] and all(r.ran for r in full.panes)
    for result in skipped.panes[1:]:
        assert not result.feature_maps.any() and not result.pooled.any()
        assert result.pooled.shape == (8,) and result.pooled.dtype == full.panes[1].pooled.dtype
        np.testing.assert_array_equal(skipped.cam(result.modality), head.cam(result.modality, result.feature_maps))
    with pytest.raises(ValueError, match="the bmode pane was not run, but the head reads it"):
        fuse(head, panes, [None, maps[1], maps[2]])


class BmodeOnlyEngine(FakeEngine):
    def __init__(self, every_pane: bool = False) -> None:
        super().__init__()
        self.head = bmode_only_head()
        self.unread_modalities = frozenset() if every_pane else frozenset(self.head.unread_modalities())


def test_the_stream_runs_only_the_read_pane_and_answers_the_same():
    results, calls = {}, {}
    for every_pane in (False, True):
        engine, sink = BmodeOnlyEngine(every_pane), ListSink()
        run(engine, "synthetic:triple?size=480x270&fps=30&swe_hz=2&frames=20", sink, lossless=True)
        results[every_pane] = [(r.p, r.logit, [(p.modality, p.logit) for p in r.panes]) for r in sink.results]
        calls[every_pane] = engine.calls
    assert results[False] == results[True] and len(results[False]) == 20
    layout = preset("triple").resolve(480, 270)
    bmode_roi = tuple(layout.pane(layout.panes[0].modality).roi)
    # B-mode changes every frame: one ROI per frame, never an SMI or SWE one.
    assert calls[False] == [[bmode_roi]] * 20
    assert sum(len(c) for c in calls[True]) > 20


def _triple_frame():
    source = create_source("synthetic:triple?size=1280x720&frames=2", SourceOptions(realtime=False))
    source.open()
    try:
        frame = source.frame_at(1)
    finally:
        source.close()
    return frame, list(preset("triple").resolve(1280, 720).engine_panes())


def test_the_demo_engine_skips_smi_and_swe_with_an_identical_answer(demo_bundle_path):
    frame, panes = _triple_frame()
    with Engine(demo_bundle_path) as skipping, Engine(demo_bundle_path, every_pane=True) as every:
        assert skipping.unread_modalities == frozenset(BMODE_ONLY) and every.unread_modalities == frozenset()
        assert skipping.identity()["model"]["panes_not_run"] == sorted(BMODE_ONLY)
        batches = []
        infer = skipping.backend.infer
        skipping.backend.infer = lambda feeds: batches.append(len(feeds["rois"])) or infer(feeds)
        a, b = skipping.classify(frame, panes), every.classify(frame, panes)
    assert batches == [1]
    assert a.probability == b.probability and a.logit == b.logit and a.contributions == b.contributions
    np.testing.assert_array_equal(a.cam("bmode"), b.cam("bmode"))
    for modality in BMODE_ONLY:
        assert not np.any(a.cam(modality)) and not np.any(b.cam(modality))


def test_the_bench_runner_skips_the_same_panes_and_gives_the_same_p(demo_bundle_path):
    from edge_thyroid_bench.benchmarking import StageTimer
    from edge_thyroid_bench.peers import ConfigSpec, EngineRunner, Kind

    frame, panes = _triple_frame()
    rois = np.asarray([p.roi for p in panes])
    p = {}
    for every_pane in (False, True):
        spec = ConfigSpec(Kind.ENGINE, str(demo_bundle_path), "int8", tuple(m.modality for m in panes), 1,
                          backend="onnxruntime", every_pane=every_pane)
        runner = EngineRunner(spec)
        runner.load()
        try:
            p[every_pane] = runner.process(frame, rois, StageTimer())
            assert ("panes_not_run" in runner.details) is not every_pane
        finally:
            runner.close()
        assert spec.name.endswith("-every-pane") is every_pane
    assert p[False] == p[True]
