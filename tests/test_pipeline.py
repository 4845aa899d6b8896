"""The streaming pipeline: latest frame wins under a slow model, pane caching, temporal logic, faults
(invalid frames, a source that drops out, slow and failing sinks) and numerics against the engine."""

from __future__ import annotations

import json
import math
import threading
import time

import cv2
import numpy as np
import pytest

from edge_thyroid.engine import Engine
from edge_thyroid.errors import InputError
from edge_thyroid.frames import Pane
from edge_thyroid.head import FusionHead, sigmoid
from edge_thyroid.layout import Layout, Modality, parse_layout, preset
from edge_thyroid.stream import (LatencyHistogram, LatestFrameSlot, PaneCache, Pipeline, PipelineConfig, ReconnectPolicy,
                                 StreamResult)
from edge_thyroid.stream.records import GapRecord
from edge_thyroid.sinks import JsonlSink, Sink
from edge_thyroid.sources import Captured, Source, SourceError, SourceOptions, create_source
from edge_thyroid.temporal import Decision, Reason, Smoothing, TemporalConfig, TemporalFilter

from .conftest import needs_torch, ultrasound_like

MODALITIES = ("bmode", "smi", "swe")


class FakeEngine:
    """Deterministic features from the pixels (2x2 area means per channel, 8 channels), optionally slow."""

    modalities = MODALITIES
    threshold = 0.5

    def __init__(self, delay: float = 0.0, seed: int = 0, box_context: float = 1.0) -> None:
        self.box_context = box_context
        rng = np.random.default_rng(seed)
        self.head = FusionHead(MODALITIES, rng.normal(0, 1.0, (3, 8)), rng.normal(0, 0.1, 3), 0.1)
        self.delay = delay
        self.calls: list[list[tuple[int, ...]]] = []

    fuse = Engine.fuse  # the real head step, on these fake features
    trained_modalities = MODALITIES
    unread_modalities: frozenset[str] = frozenset()
    familiarity = None   # no familiarity reference (Engine.familiarity)

    def identity(self) -> dict:
        return {"version": "test", "bundle": {"path": "fake", "manifest_sha256": "0" * 64},
                "model": {"key": "fake", "precision": "fp32", "trained_modalities": list(MODALITIES)},
                "backend": "fake", "threads": None}

    def extract(self, frame: np.ndarray, rois) -> np.ndarray:
        self.calls.append([tuple(int(v) for v in r) for r in rois])
        if self.delay:
            time.sleep(self.delay)
        maps = []
        for x, y, w, h in rois:
            small = cv2.resize(frame[y:y + h, x:x + w], (2, 2), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
            channels = small.transpose(2, 0, 1)
            maps.append(np.concatenate([channels, channels ** 2, channels[:2] - 0.5]))
        return np.stack(maps).astype(np.float32)


class ListSink(Sink):
    name = "list"

    def __init__(self, keep_frames: bool = False) -> None:
        self.results: list[StreamResult] = []
        self.events: list[dict] = []
        self.needs_frames = keep_frames

    def write(self, result: StreamResult) -> None:
        self.results.append(result)

    def event(self, record) -> None:
        if isinstance(record, GapRecord):  # the header and the summary are checked in test_stream_records
            self.events.append(record.record())


def run(engine, source, *sinks, **config):
    # These tests are about the stream's machinery, classified on whole panes; the nodule box (no_roi,
    # control, calipers, tracking) has its own tests in test_nodule_stream.py.
    config.setdefault("whole_pane", True)
    if not isinstance(source, Source):
        source = create_source(source, SourceOptions(realtime=not config.get("lossless", False),
                                                     layout=config.get("layout")))
    source.open()
    try:
        return Pipeline(engine, source, sinks, PipelineConfig(**config)).run()
    finally:
        source.close()


# ---------------------------------------------------------------------------------------------
# Latest frame wins


def item(index: int) -> Captured:
    return Captured(np.zeros((4, 4, 3), np.uint8), time.monotonic(), index)


def test_latest_frame_slot_replaces_and_counts():
    slot = LatestFrameSlot()
    for i in range(3):
        slot.put(item(i))
    assert slot.get(0.01).index == 2 and slot.dropped == 2
    assert slot.get(0.01) is None and not slot.finished
    slot.close()
    assert slot.finished


def test_lossless_slot_waits_for_the_consumer():
    slot = LatestFrameSlot(lossless=True)
    slot.put(item(0))
    taken = []
    producer = threading.Thread(target=lambda: slot.put(item(1)))
    producer.start()
    time.sleep(0.1)
    assert producer.is_alive()  # blocked: the first frame was not taken yet
    taken.append(slot.get(1).index)
    producer.join(1)
    taken.append(slot.get(1).index)
    assert taken == [0, 1] and slot.dropped == 0


def test_a_slow_model_never_builds_a_backlog():
    engine = FakeEngine(delay=0.12)
    sink = ListSink()
    summary = run(engine, "synthetic:dual?size=320x180&fps=50&frames=100", sink)
    results = sink.results
    assert summary.frames == 100
    assert summary.processed == len(results) and summary.processed + summary.dropped == 100
    assert summary.dropped >= 60                      # ~2 s of frames, ~8 processed per second
    assert [r.frame for r in results] == sorted({r.frame for r in results})
    assert results[-1].frame >= 95                    # the newest frame, not an old queued one
    waits = [r.stages_ms["wait"] for r in results]
    assert max(waits) < 250                           # at most one inference behind, never a queue
    # Capture-to-result of the last frames is one inference, not (frames behind) x (inference time).
    assert max(r.total_ms for r in results[-5:]) < 400
    drops = [r.dropped for r in results]
    assert drops == sorted(drops) and drops[-1] <= summary.dropped


# ---------------------------------------------------------------------------------------------
# Pane cache


def test_frozen_screen_hits_the_cache_and_abstains():
    engine = FakeEngine()
    sink = ListSink()
    summary = run(engine, "synthetic:dual?size=320x180&fps=20&freeze=1-3&frames=70", sink, lossless=True,
                  temporal=TemporalConfig(frozen_after_s=0.5))
    by_frame = {r.frame: r for r in sink.results}
    assert len(by_frame) == 70 and summary.dropped == 0
    frozen = [by_frame[i] for i in range(21, 60)]
    assert all(p.cached for r in frozen for p in r.panes)
    assert {r.p for r in frozen} == {by_frame[20].p}  # the cached features give the very same p
    # The backbone ran only for frames where some pane changed, and only on those panes.
    ran = [r for r in sink.results if any(not p.cached for p in r.panes)]
    assert len(engine.calls) == len(ran)
    assert sum(len(c) for c in engine.calls) == sum(not p.cached for r in sink.results for p in r.panes)
    assert summary.cache_hits == sum(p.cached for r in sink.results for p in r.panes)
    # Frozen for more than 0.5 s of stream time -> abstain, with the reason; live again after 3.0 s.
    assert all(by_frame[i].reason is Reason.FROZEN for i in range(30, 60))
    assert by_frame[25].decision is not Decision.ABSTAIN
    assert by_frame[62].reason is None
    assert by_frame[29].reason is None and summary.abstained == {"frozen": 30}


def test_swe_refreshing_at_2hz_is_rerun_twice_a_second():
    engine = FakeEngine()
    sink = ListSink()
    run(engine, "synthetic:dual?size=320x180&fps=30&swe_hz=2&frames=60", sink, lossless=True)
    swe_runs = [r.frame for r in sink.results if not r.panes[1].cached]
    bmode_runs = [r.frame for r in sink.results if not r.panes[0].cached]
    assert swe_runs == [0, 15, 30, 45] and len(bmode_runs) == 60


def test_cache_changes_nothing_but_the_work():
    results = {}
    for cache in (True, False):
        engine, sink = FakeEngine(), ListSink()
        run(engine, "synthetic:triple?size=480x270&fps=30&swe_hz=2&freeze=0.5-1&frames=45", sink, lossless=True,
            cache=cache)
        results[cache] = ([r.p for r in sink.results], sum(len(c) for c in engine.calls))
    assert results[True][0] == results[False][0]
    assert results[True][1] < results[False][1] == 45 * 3


def test_blank_screen_abstains_without_running_the_model():
    engine, sink = FakeEngine(), ListSink()
    summary = run(engine, "synthetic:dual?size=320x180&fps=20&blank=0.5-1&frames=30", sink, lossless=True)
    blank = [r for r in sink.results if 10 <= r.frame < 20]
    assert all(r.decision is Decision.ABSTAIN and r.reason is Reason.BLANK and r.p is None for r in blank)
    assert all(p.blank for r in blank for p in r.panes)
    assert len(engine.calls) == 20 and summary.abstained == {"blank": 10}
    assert sink.results[20].p_smoothed == sink.results[20].p  # smoothing restarts after the blank


# ---------------------------------------------------------------------------------------------
# Numerics: the pipeline's p is the engine's p


def test_p_and_per_pane_contributions_match_a_float64_reference():
    engine, sink = FakeEngine(), ListSink(keep_frames=True)
    run(engine, "synthetic:triple?size=480x270&fps=30&frames=6", sink, lossless=True)
    head = engine.head
    for result in sink.results:
        maps = FakeEngine().extract(result.image, [p.roi for p in result.panes]).astype(np.float64)
        logits = {m: float(head.weight[i] @ maps[i].mean(axis=(1, 2)) + head.presence_bias[i])
                  for i, m in enumerate(MODALITIES)}
        logit = head.bias + sum(logits.values())
        # Pooling runs in float32 like Engine.classify: |w| ~ 1 over 8 channels of ~1 -> ~1e-6 at most.
        assert result.logit == pytest.approx(logit, abs=2e-6)
        assert result.p == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-6)
        for pane in result.panes:
            assert pane.logit == pytest.approx(logits[pane.modality], abs=1e-6)
            assert pane.p == pytest.approx(sigmoid(head.bias + logits[pane.modality]), abs=1e-6)


@needs_torch
def test_real_engine_stream_matches_classify_and_cache_is_exact(random_bundle):
    with Engine(random_bundle) as engine:
        sink = ListSink(keep_frames=True)
        layout = preset("triple")
        run(engine, "synthetic:triple?size=480x270&fps=30&swe_hz=2&frames=8", sink, lossless=True, layout=layout)
        for result in sink.results[::3]:
            panes = [Pane(p.modality, p.roi) for p in result.panes]
            reference = engine.classify(result.image, panes)
            assert result.p == pytest.approx(reference.probability, abs=1e-6)
            assert result.prediction.cam("swe") == pytest.approx(reference.cam("swe"), abs=1e-5)
        frame = sink.results[0].image
        rois = [p.roi for p in sink.results[0].panes]
        cache = PaneCache(engine)
        first = cache.extract(frame, rois)
        again = cache.extract(frame, rois)
        assert cache.hits == 3 and cache.misses == 3
        np.testing.assert_array_equal(first, engine.extract(frame, rois))
        np.testing.assert_array_equal(again, first)


# ---------------------------------------------------------------------------------------------
# Faults


class ListSource(Source):
    kind = "synthetic"

    def __init__(self, frames, live: bool = False, fail_after: int | None = None, open_failures: int = 0) -> None:
        super().__init__("list")
        self.frames = list(frames)
        self.live = live
        self.fail_after = fail_after
        self.open_failures = open_failures
        self.opens = 0
        self.position = 0

    def _open(self) -> None:
        self.opens += 1
        if 1 < self.opens <= 1 + self.open_failures:
            raise SourceError("cable unplugged")

    def _read(self):
        if self.fail_after is not None and self.position == self.fail_after and self.opens == 1:
            raise SourceError("no signal")
        if self.position >= len(self.frames):
            return None
        frame = self.frames[self.position]
        self.position += 1
        return frame, time.monotonic(), 0.0

    def _close(self) -> None:
        pass


def screen(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    return np.repeat(ultrasound_like(height, width, seed)[:, :, None], 3, axis=2)


def test_a_frame_that_does_not_fit_is_an_abstention_not_a_crash():
    layout = parse_layout({"panes": [{"modality": "bmode", "roi": [0, 0, 150, 100]}]})
    frames = [screen(seed=0), screen(60, 80, seed=1), screen(seed=2)]
    sink = ListSink()
    summary = run(FakeEngine(), ListSource(frames), sink, layout=layout, lossless=True)
    assert [r.decision for r in sink.results][1] is Decision.ABSTAIN
    assert sink.results[1].reason is Reason.INVALID and "outside the 80x60 frame" in sink.results[1].detail
    assert sink.results[2].p is not None and summary.abstained == {"invalid": 1}


def test_non_finite_features_abstain():
    engine = FakeEngine()
    engine.extract = lambda frame, rois: np.full((len(rois), 8, 2, 2), np.nan, np.float32)
    sink = ListSink()
    run(engine, ListSource([screen(), screen(seed=1)]), sink, lossless=True)
    assert all(r.reason is Reason.INVALID and "no decision is made" in r.detail for r in sink.results)


def test_a_live_source_that_drops_out_is_reopened_and_the_gap_recorded():
    frames = [screen(seed=i) for i in range(10)]
    source = ListSource(frames, live=True, fail_after=4, open_failures=2)
    sink = ListSink()
    summary = run(FakeEngine(), source, sink, lossless=True,
                  reconnect=ReconnectPolicy(attempts=5, first_delay_s=0.01, max_delay_s=0.02))
    assert len(sink.events) == 1
    gap = sink.events[0]
    assert gap["type"] == "gap" and gap["resumed"] and gap["attempts"] == 3 and gap["frames_before"] == 4
    assert gap["reason"] == "no signal" and gap["last_error"] is None
    assert gap["end_ts"] >= gap["start_ts"] and summary.gaps == [gap] and summary.error is None
    assert [r.frame for r in sink.results] == list(range(10))
    assert sink.results[-1].gaps == 1


def test_a_source_that_never_comes_back_ends_the_stream_with_an_error():
    source = ListSource([screen()] * 3, live=True, fail_after=2, open_failures=99)
    sink = ListSink()
    summary = run(FakeEngine(), source, sink, lossless=True,
                  reconnect=ReconnectPolicy(attempts=2, first_delay_s=0.01, max_delay_s=0.01))
    assert len(sink.results) == 2 and sink.events[0]["resumed"] is False
    assert "did not come back after 2 reopen attempts" in summary.error and "cable unplugged" in summary.error


class BlockedSink(ListSink):
    """A sink that cannot write until ``gate`` opens: if inference waited for it, the gate (opened by the
    engine after the last frame) would never open and the write would give up after ``patience_s``."""

    name = "slow"

    def __init__(self, gate: threading.Event, patience_s: float = 60.0) -> None:
        super().__init__()
        self.gate, self.patience_s, self.gave_up = gate, patience_s, False

    def write(self, result):
        if not self.gate.wait(self.patience_s):
            self.gave_up = True
        super().write(result)


class EngineOpeningAGate(FakeEngine):
    def __init__(self, gate: threading.Event, frames: int) -> None:
        super().__init__()
        self.gate, self.frames = gate, frames

    def extract(self, frame, rois):
        maps = super().extract(frame, rois)
        if len(self.calls) == self.frames:
            self.gate.set()
        return maps


def test_a_slow_sink_never_stalls_inference(tmp_path):
    # No clock: the blocked sink is released only by the engine finishing the last frame, so the run
    # ends without the sink giving up only if inference never waited for it.
    gate = threading.Event()
    slow, jsonl = BlockedSink(gate), JsonlSink(tmp_path / "out.jsonl")
    source = create_source("synthetic:dual?size=320x180&frames=40", SourceOptions(realtime=False))
    source.open()
    pipeline = Pipeline(EngineOpeningAGate(gate, 40), source, [slow, jsonl],
                        PipelineConfig(lossless=True, sink_queue=4, whole_pane=True))
    summary = pipeline.run()
    assert summary.processed == 40 and not slow.gave_up
    assert summary.sink_dropped["slow"] >= 30  # its queue of 4 filled while it was blocked
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "header" and records[-1]["type"] == "summary"
    frames = [r["frame"] for r in records[1:-1]]
    # The JSONL sink has its own queue: what it wrote plus what it counted as dropped is every frame,
    # in order (it drops only when its own writer falls 4 frames behind, never because of the slow sink).
    assert frames == sorted(set(frames)) and len(frames) + summary.sink_dropped["jsonl"] == 40


def test_a_failing_sink_stops_the_stream_with_its_error_and_keeps_other_output(tmp_path):
    sink = ListSink()
    summary = run(FakeEngine(), "synthetic:dual?size=320x180&frames=200", JsonlSink("/dev/full"), sink, lossless=True)
    assert summary.error and "No space left on device" in summary.error and "/dev/full" in summary.error
    # The header is the first write, so the full disk is noticed at once; every frame processed until
    # then still reached the other sink.
    assert summary.stopped_by == "jsonl sink error" and len(sink.results) == summary.processed < 200


def test_stop_from_another_thread_finishes_cleanly():
    source = create_source("synthetic:dual?size=320x180&fps=30", SourceOptions())
    source.open()
    pipeline = Pipeline(FakeEngine(), source, [ListSink()], PipelineConfig())
    threading.Timer(0.3, pipeline.stop, args=("test stop",)).start()
    summary = pipeline.run()
    source.close()
    assert summary.stopped_by == "test stop" and 3 <= summary.processed <= 20


def test_layout_with_a_modality_the_model_lacks_is_refused():
    engine = FakeEngine()
    engine.modalities = ("bmode",)
    with pytest.raises(InputError, match=r"pane\(s\) \['swe'\] the model does not know"):
        run(engine, "synthetic:dual?size=320x180&frames=2", lossless=True)


# ---------------------------------------------------------------------------------------------
# Temporal logic


def test_ema_follows_its_time_constant():
    f = TemporalFilter(0.5, TemporalConfig(tau_s=0.5, margin=0.0))
    assert f.update(0.0, 0.2).p_smoothed == pytest.approx(0.2)
    # One step of dt: s += (1 - exp(-dt/tau)) (p - s)
    assert f.update(0.1, 1.0).p_smoothed == pytest.approx(0.2 + (1 - math.exp(-0.2)) * 0.8, abs=1e-12)
    g = TemporalFilter(0.5, TemporalConfig(tau_s=0.5))
    for k in range(31):
        last = g.update(k / 30, 0.9 if k else 0.1)
    assert last.p_smoothed == pytest.approx(0.9 - 0.8 * math.exp(-1 / 0.5), abs=1e-9)  # after 1 s


def test_window_and_no_smoothing():
    window = TemporalFilter(0.5, TemporalConfig(smoothing=Smoothing.WINDOW, window=3))
    values = [window.update(i, p).p_smoothed for i, p in enumerate([0.1, 0.4, 0.7, 1.0])]
    assert values == pytest.approx([0.1, 0.25, 0.4, 0.7])
    plain = TemporalFilter(0.5, TemporalConfig(smoothing=Smoothing.NONE))
    assert [plain.update(i, p).p_smoothed for i, p in enumerate([0.1, 0.9])] == [0.1, 0.9]


def test_hysteresis_needs_the_margin_to_flip():
    f = TemporalFilter(0.5, TemporalConfig(smoothing=Smoothing.NONE, margin=0.1, unstable_std=0.9))
    sequence = [0.45, 0.55, 0.59, 0.61, 0.45, 0.41, 0.39, 0.5]
    decisions = [f.update(i, p).decision for i, p in enumerate(sequence)]
    B, M = Decision.BENIGN, Decision.MALIGNANT
    assert decisions == [B, B, B, M, M, M, B, B]


def test_unstable_frozen_invalid_and_reset():
    f = TemporalFilter(0.5, TemporalConfig(smoothing=Smoothing.NONE, unstable_std=0.2, unstable_window=6))
    results = [f.update(i, p) for i, p in enumerate([0.1, 0.9, 0.1, 0.9, 0.1])]
    assert results[3].decision is not Decision.ABSTAIN and results[4].reason is Reason.UNSTABLE
    assert "std of p over the last 5 frames is 0.39" in results[4].detail
    g = TemporalFilter(0.5, TemporalConfig(frozen_after_s=2.0))
    assert g.update(0.0, 0.7, frozen_for_s=1.9).decision is Decision.MALIGNANT
    frozen = g.update(0.1, 0.7, frozen_for_s=2.0)
    assert frozen.reason is Reason.FROZEN and frozen.p_smoothed == pytest.approx(0.7)
    assert g.update(0.2, float("nan")).reason is Reason.INVALID and g.smoothed is None  # history forgotten
    g.update(0.3, 0.2)
    assert g.abstain(Reason.BLANK).p_smoothed is None and g.state is None
    with pytest.raises(InputError, match=r"hysteresis margin 0.7"):
        TemporalConfig(margin=0.7)
    with pytest.raises(InputError, match=r"finite"):
        TemporalConfig(tau_s=float("inf"))
    with pytest.raises(InputError, match=r"threshold 1.5"):
        TemporalFilter(1.5)


def test_latency_histogram_percentiles_within_a_bin_of_numpy():
    values = np.random.default_rng(0).lognormal(3.0, 0.8, 5000)
    hist = LatencyHistogram()
    for v in values:
        hist.add(float(v))
    for q in (50, 90, 99):
        assert hist.percentile(q) == pytest.approx(np.percentile(values, q), rel=0.012)
    assert hist.summary()["count"] == 5000 and hist.summary()["max"] == pytest.approx(values.max(), abs=1e-3)
    assert LatencyHistogram().percentile(50) is None


def test_layout_nodule_roi_is_what_the_model_sees():
    layout = Layout("n", (Pane(Modality.BMODE, (0, 0, 160, 120)),), nodule=(40, 30, 64, 48))
    engine, sink = FakeEngine(), ListSink()
    run(engine, ListSource([screen()]), sink, layout=layout, lossless=True)
    assert engine.calls == [[(40, 30, 64, 48)]]
    result = sink.results[0]
    assert (result.roi, result.roi_source) == ((40, 30, 64, 48), "layout")
    assert result.panes[0].roi == (0, 0, 160, 120)         # the pane's own box; the nodule box is top level
    record = result.record()
    assert record["roi"] == [40, 30, 64, 48] and record["roi_source"] == "layout"


@pytest.mark.parametrize("live", [False, True], ids=["file", "live"])
def test_a_frame_that_is_not_an_image_is_an_abstention_and_the_source_goes_on(live):
    frames = [screen(seed=0), screen(seed=1).astype(np.float32), np.zeros((0, 0, 3), np.uint8), screen(seed=3)]
    sink = ListSink()
    summary = run(FakeEngine(), ListSource(frames, live=live), sink, lossless=True)
    assert [r.frame for r in sink.results] == [0, 1, 2, 3] and not sink.events and summary.error is None
    assert [r.reason for r in sink.results] == [None, Reason.INVALID, Reason.INVALID, None]
    assert "frame dtype is float32; expected uint8" in sink.results[1].detail
    assert "gave a frame that is not an image" in sink.results[2].detail


class DeadAfterReopen(ListSource):
    """Opens every time, delivers frames only before its first failure (a grabber with no signal)."""

    def _read(self):
        if self.opens > 1:
            raise SourceError("no signal")
        return super()._read()


def test_a_source_that_reopens_but_never_delivers_is_lost_after_the_attempt_budget():
    source = DeadAfterReopen([screen()] * 3, live=True, fail_after=2)
    sink = ListSink()
    start = time.monotonic()
    summary = run(FakeEngine(), source, sink, lossless=True,
                  reconnect=ReconnectPolicy(attempts=4, first_delay_s=0.02, max_delay_s=0.5))
    assert time.monotonic() - start < 5
    assert len(sink.results) == 2 and source.opens == 1 + 4
    gaps = sink.events
    assert [g["resumed"] for g in gaps] == [True, True, True, True, False]
    waits = [g["duration_s"] for g in gaps[:4]]
    assert waits == sorted(waits) and waits[3] >= 0.15  # 0.02, 0.04, 0.08, 0.16: the back-off kept growing
    assert "did not come back after 4 reopen attempts" in summary.error


def test_the_engine_provides_what_the_pane_cache_declares_it_needs():
    """The cache's Extractor protocol names what it calls on the engine; a member the engine lacks (a
    copy of the cache's own _extract once sat there) makes the declaration wrong for every engine."""
    from edge_thyroid.stream.cache import Extractor

    declared = {name for name, value in vars(Extractor).items() if callable(value) and not name.startswith("__")}
    assert declared == {"extract"}
    assert all(callable(getattr(Engine, name, None)) for name in declared)


def test_branched_cache_refuses_panes_without_a_modality():
    """With a backbone per modality each pane needs its modality; the cache zipped ROIs with modalities
    and silently returned fewer maps than panes when one was missing."""

    class BranchedEngine:
        branched = True
        modalities = ("bmode", "smi", "swe")

        def extract(self, frame, rois, modalities=None):
            return np.stack([np.full((4, 2, 2), float(len(m))) for m in modalities])

    frame = ultrasound_like(120, 200)
    rois = [(0, 0, 100, 100), (100, 0, 100, 100)]
    cache = PaneCache(BranchedEngine())
    assert cache.extract(frame, rois, ["bmode", "swe"]).shape == (2, 4, 2, 2)
    with pytest.raises(InputError, match="2 panes but 1 modalities"):
        cache.extract(frame, rois, ["bmode"])
