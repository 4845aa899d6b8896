"""The nodule box on a live screen: no box -> no answer, the control channel, calipers on a frozen
frame, freeze as review, following the box, and the overlay."""

from __future__ import annotations

import json
import socket

import cv2
import numpy as np
import pytest

from edge_thyroid.calipers import CROSS, PLUS, draw_mark
from edge_thyroid.frames import Pane
from edge_thyroid.layout import Layout, Modality
from edge_thyroid.sinks import OverlayVideoSink, _annotate
from edge_thyroid.stream.records import ControlRecord
from edge_thyroid.temporal import Decision, Reason

from .test_pipeline import FakeEngine, ListSink, ListSource, run
from .test_tracking import anatomy, view

PANE = (40, 30, 400, 300)
LAYOUT = Layout("one", (Pane(Modality.BMODE, PANE),))


def live_frame(seed: int) -> np.ndarray:
    """A 480x360 screen: dark UI, a B-mode pane of fresh speckle (live imaging), a fixed label."""
    screen = np.full((360, 480, 3), 12, np.uint8)
    screen[30:330, 40:440] = view(anatomy(0), 0, 0, seed, size=(300, 400))
    cv2.putText(screen, "THY", (50, 55), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
    return screen


def with_calipers(frame: np.ndarray, points, shape=PLUS, colour=(0, 255, 255)) -> np.ndarray:
    marked = frame.copy()
    for x, y in points:
        draw_mark(marked, x, y, shape, 11, colour, hollow=1)
    return marked


def stream(frames, **config):
    engine, sink = FakeEngine(), ListSink()
    config = {"layout": LAYOUT, "lossless": True, "whole_pane": False, **config}
    summary = run(engine, ListSource(frames), sink, **config)
    return summary, sink, engine


def test_without_a_nodule_box_every_frame_abstains_no_roi_and_the_model_never_runs():
    summary, sink, engine = stream([live_frame(s) for s in range(6)])
    assert engine.calls == []
    assert all(r.reason is Reason.NO_ROI and r.roi is None and r.roi_source is None for r in sink.results)
    assert summary.abstained == {"no_roi": 6} and summary.decisions == {"abstain": 6}
    record = sink.results[0].record()
    assert record["roi"] is None and record["reason"] == "no_roi" and record["panes"][0]["roi"] == list(PANE)


def test_whole_pane_is_an_explicit_opt_in():
    _, sink, engine = stream([live_frame(s) for s in range(3)], whole_pane=True)
    assert engine.calls == [[PANE]] * 3
    assert all(r.roi == PANE and r.roi_source == "whole_pane" and r.decision is not Decision.ABSTAIN
               for r in sink.results)


def test_a_blank_pane_is_blank_not_no_roi():
    blank = np.full((360, 480, 3), 12, np.uint8)
    _, sink, _ = stream([blank])
    assert sink.results[0].reason is Reason.BLANK


# --- calipers on a frozen frame and freeze as review --------------------------------------------


def test_calipers_on_a_frozen_frame_give_the_box_and_moving_them_reclassifies():
    frozen = live_frame(99)
    first = with_calipers(frozen, [(150, 180), (290, 180)])
    moved = with_calipers(frozen, [(170, 160), (330, 200), (250, 110), (250, 250)], shape=CROSS, colour=(255, 255, 255))
    frames = [live_frame(s) for s in range(8)] + [frozen] * 2 + [first] * 3 + [moved] * 2
    summary, sink, engine = stream(frames)
    results = sink.results
    assert all(r.reason is Reason.NO_ROI for r in results[:10])          # live, then frozen without calipers
    assert [r.frozen for r in results[8:]] == [False] + [True] * 6    # the first frozen frame is new
    two = results[10]
    assert two.roi_source == "calipers"
    # two marks 140 px apart: a 140 px square around (220, 180), plus 25% a side -> 210 px
    assert two.roi == (115, 75, 210, 210)
    assert [(m["x"], m["y"]) for m in two.calipers] == [(150, 180), (290, 180)]
    assert results[10].record()["roi"] == [115, 75, 210, 210] and results[10].record()["roi_source"] == "calipers"
    for result in results:   # every record is plain JSON (the JSONL sink writes it as is)
        assert json.loads(json.dumps(result.record(), allow_nan=False)) == result.record()
    assert all(r.roi == two.roi and r.p == two.p for r in results[11:13])     # frozen: the same answer, cached
    assert all(r.decision is not Decision.ABSTAIN for r in results[10:])      # a freeze is a review
    four = results[13]
    assert four.roi == (130, 75, 240, 210)        # both axes: 160 x 140 extent, +25% a side
    assert len(four.calipers) == 4 and four.p != two.p
    assert engine.calls == [[two.roi], [four.roi]]  # the model ran once per caliper box, never on the pane


def test_a_long_freeze_with_a_layout_box_keeps_answering():
    layout = Layout("n", (Pane(Modality.BMODE, PANE),), nodule=(140, 100, 200, 160))
    frozen = live_frame(5)
    summary, sink, engine = stream([live_frame(s) for s in range(3)] + [frozen] * 90, layout=layout)
    # 90 frames at 30 fps = 3 s of freeze: before, it abstained 'frozen' after 2 s
    assert summary.abstained == {} and all(r.roi_source == "layout" for r in sink.results)
    assert len({r.p for r in sink.results[4:]}) == 1 and len(engine.calls) == 4


def test_the_caliper_box_is_followed_when_the_image_moves_and_dropped_when_the_view_changes():
    scene = anatomy(0)

    def moving(dx: int, seed: int) -> np.ndarray:
        screen = np.full((360, 480, 3), 12, np.uint8)
        screen[30:330, 40:440] = view(scene, dx, 0, seed, size=(300, 400))
        return screen

    frozen = moving(0, 50)
    marked = with_calipers(frozen, [(170, 180), (290, 180)])
    other = np.full((360, 480, 3), 12, np.uint8)
    other[30:330, 40:440] = view(np.ascontiguousarray(np.rot90(anatomy(7, 900, 700))), 0, 0, 1, size=(300, 400))
    frames = ([moving(0, s) for s in range(6)] + [frozen, marked, marked]
              + [moving(dx, 60 + dx) for dx in range(4, 40, 4)] + [other, other])
    _, sink, _ = stream(frames)
    results = sink.results
    assert results[7].roi_source == "calipers"
    x0 = results[7].roi[0]
    followed = results[9:18]
    assert all(r.roi_source in ("calipers", "tracked") for r in followed)
    assert followed[-1].roi_source == "tracked"
    assert abs((x0 - followed[-1].roi[0]) - 36) <= 6       # the image moved 36 px left; so did the box
    assert results[18].reason is Reason.ROI_LOST and results[18].roi is None
    assert results[19].reason is Reason.NO_ROI


# --- the control channel ----------------------------------------------------------------------


class EventSink(ListSink):
    """Keeps the control records too (ListSink keeps only gaps)."""

    def event(self, record) -> None:
        if isinstance(record, ControlRecord):
            self.events.append(record.record())
        super().event(record)


class SteeredSource(ListSource):
    """Sends control messages (and waits for each reply) just before handing out given frames, as a
    workstation UI would while the stream runs."""

    def __init__(self, frames, address: str, messages: dict[int, bytes]) -> None:
        super().__init__(frames)
        self.address = address
        self.messages = messages
        self.replies: dict[int, dict] = {}

    def _read(self):
        if self.position in self.messages:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(5)
                client.connect(self.address)
                client.sendall(self.messages[self.position] + b"\n")
                self.replies[self.position] = json.loads(client.makefile("rb").readline())
        return super()._read()


def test_control_changes_apply_from_the_next_frame_and_are_logged(tmp_path):
    address = str(tmp_path / "ui.sock")
    messages = {3: b'{"roi": [100, 80, 160, 120]}', 5: b'{"roi": [600, 80, 160, 120]}', 6: b"{oops",
                7: b'{"roi": null}',
                8: json.dumps({"layout": {"panes": [{"modality": "bmode", "roi": list(PANE)}],
                                          "nodule": [200, 100, 120, 120]}}).encode()}
    source = SteeredSource([live_frame(s) for s in range(10)], address, messages)
    engine, sink = FakeEngine(), EventSink()
    run(engine, source, sink, layout=LAYOUT, lossless=True, whole_pane=False, control=address)
    results = sink.results
    assert [r.roi_source for r in results] == [None] * 3 + ["control"] * 4 + [None, "layout", "layout"]
    assert all(r.roi == (100, 80, 160, 120) for r in results[3:7])
    assert results[7].reason is Reason.NO_ROI and results[8].roi == (200, 100, 120, 120)
    assert source.replies[3] == {"ok": True, "change": {"roi": [100, 80, 160, 120]}}
    assert not source.replies[5]["ok"] and "not inside the bmode pane" in source.replies[5]["error"]
    assert not source.replies[6]["ok"] and "not valid JSON" in source.replies[6]["error"]
    logged = [e for e in sink.events if e["type"] == "control"]
    assert [(e["frame"], e["applied"]) for e in logged] == [(3, True), (7, True), (8, True)]
    assert logged[0]["change"] == {"roi": [100, 80, 160, 120]} and logged[2]["change"]["layout"]["nodule"]
    assert engine.calls[0] == [(100, 80, 160, 120)]
    from .test_stream_records import STREAM_RECORDS   # the records are what the JSON Schema says
    for record in [*logged, *(r.record() for r in results)]:
        STREAM_RECORDS.validate(json.loads(json.dumps(record)))
    assert not (tmp_path / "ui.sock").exists()            # the stream closed its socket


def test_a_bad_control_address_fails_before_streaming():
    from edge_thyroid.errors import InputError

    with pytest.raises(InputError, match="not loopback"):
        stream([live_frame(0)], control="tcp://10.0.0.1:9000")


# --- the overlay ------------------------------------------------------------------------------


def test_the_overlay_draws_the_box_its_source_and_a_decision_band_below_the_screen(tmp_path):
    frozen = live_frame(3)
    marked = with_calipers(frozen, [(150, 180), (290, 180)])
    engine, sink = FakeEngine(), ListSink(keep_frames=True)
    run(engine, ListSource([live_frame(s) for s in range(6)] + [frozen, marked]), sink, layout=LAYOUT,
        lossless=True)
    result = sink.results[-1]
    canvas = _annotate(result)
    height, width = frozen.shape[:2]
    assert canvas.shape[1] == width and canvas.shape[0] > height
    assert np.array_equal(canvas[:20], result.image[:20])          # the workstation's banner is untouched
    band = canvas[height:]
    assert band.reshape(-1, 3).std(axis=0).max() > 10                # text on the band
    x, y, w, h = result.roi
    edge = canvas[y, x + 10:x + w - 10]
    assert (np.abs(edge.astype(int) - result.image[y, x + 10:x + w - 10]).max(axis=1) > 40).mean() > 0.9
    no_box = _annotate(sink.results[0])
    assert no_box.shape == canvas.shape
    video = OverlayVideoSink(tmp_path / "o.mp4", 30)
    video.open()
    video.write(result)
    video.close()
    assert cv2.VideoCapture(str(tmp_path / "o.mp4")).read()[1].shape == canvas.shape
