"""Every capture source: video file, DICOM cine (timing, regions, lying tags), a tcp:// stream served on
127.0.0.1, image folder, capture device (options and errors), the synthetic screen, the spec registry."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, UltrasoundMultiFrameImageStorage, generate_uid

from edge_thyroid.layout import preset
from edge_thyroid.sources import (Captured, SourceError, SourceOptions, create_source, register_source,
                                  resolve_spec)
from edge_thyroid.sources.capture import DeviceSource

from .conftest import ultrasound_like

FAST = SourceOptions(realtime=False)


def read_all(source, limit: int = 10_000) -> list[Captured]:
    items = []
    with source:
        while len(items) < limit and (item := source.read()) is not None:
            items.append(item)
    return items


def write_video(path: Path, frames: int = 12, size: tuple[int, int] = (96, 64), fps: float = 25.0,
                codec: str = "MJPG") -> list[np.ndarray]:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
    assert writer.isOpened()
    images = []
    for i in range(frames):
        image = np.full((size[1], size[0], 3), (10 * i, 200 - 10 * i, 128), dtype=np.uint8)
        writer.write(image)
        images.append(image)
    writer.release()
    return images


# ---------------------------------------------------------------------------------------------
# Video files


def test_video_file_every_frame_in_order(tmp_path):
    images = write_video(tmp_path / "clip.avi")
    items = read_all(create_source(str(tmp_path / "clip.avi"), FAST))
    assert [i.index for i in items] == list(range(len(images)))
    for item, image in zip(items, images):
        assert item.frame.shape == image.shape and item.frame.dtype == np.uint8
        assert np.abs(item.frame.astype(int) - image).mean() < 3  # MJPEG is lossy, the colours are not
    assert all(b.timestamp >= a.timestamp for a, b in zip(items, items[1:]))


def test_video_file_is_replayed_at_its_frame_rate(tmp_path):
    write_video(tmp_path / "clip.avi", frames=10, fps=25.0)
    source = create_source(str(tmp_path / "clip.avi"), SourceOptions())
    start = time.monotonic()
    items = read_all(source)
    elapsed = time.monotonic() - start
    assert source.fps == pytest.approx(25.0)
    # Frame i is stamped with its schedule: exactly 40 ms apart (unless decoding ran late).
    gaps = np.diff([i.timestamp for i in items])
    assert np.median(gaps) == pytest.approx(0.04, abs=0.004)
    assert elapsed >= 9 * 0.04 * 0.9
    override = create_source(str(tmp_path / "clip.avi"), SourceOptions(fps=100.0))
    start = time.monotonic()
    read_all(override)
    assert time.monotonic() - start < elapsed  # --fps replays faster than the stated 25


def test_video_file_loops_and_stops_cleanly(tmp_path):
    write_video(tmp_path / "clip.mp4", frames=5, codec="mp4v")
    items = read_all(create_source(f"file:{tmp_path / 'clip.mp4'}", SourceOptions(realtime=False, loop=True)), limit=13)
    assert len(items) == 13 and items[-1].index == 12


def test_video_file_errors(tmp_path):
    with pytest.raises(SourceError, match=r"is not a device, an existing file or folder"):
        create_source(str(tmp_path / "missing.mp4"))
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(SourceError, match=r"cannot decode video file .*notes.mp4"):
        create_source(str(tmp_path / "notes.mp4"), FAST).open()
    source = create_source(str(tmp_path / "notes.mp4"), FAST)
    with pytest.raises(SourceError, match=r"is not open"):
        source.read()


# ---------------------------------------------------------------------------------------------
# DICOM


def us_region(x0: int, y0: int, x1: int, y1: int, data_type: int) -> Dataset:
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = data_type
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = x0, y0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x1, y1
    return region


def cine(frames: int = 4, height: int = 48, width: int = 96, *, rgb: bool = True, frame_time: float | None = 40.0,
         regions=((0, 0, 47, 47, 1), (48, 0, 95, 47, 2))) -> tuple[Dataset, np.ndarray]:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns, ds.NumberOfFrames = height, width, frames
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if frame_time is not None:
        ds.FrameTime = frame_time
        ds.FrameIncrementPointer = (0x0018, 0x1063)
    if regions:
        ds.SequenceOfUltrasoundRegions = DicomSequence([us_region(*r) for r in regions])
    gray = np.stack([ultrasound_like(height, width, seed) for seed in range(frames)])
    pixels = np.stack([gray, gray // 2, 255 - gray], axis=-1) if rgb else gray  # R, G, B differ
    ds.PixelData = pixels.tobytes()
    return ds, pixels


def save(ds: Dataset, path: Path) -> str:
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def test_dicom_frames_timing_and_regions(tmp_path):
    ds, pixels = cine()
    path = save(ds, tmp_path / "cine.dcm")
    assert resolve_spec(path) == ("dicom", path)
    source = create_source(path)
    start = time.monotonic()
    items = read_all(source)
    assert len(items) == 4
    np.testing.assert_array_equal(items[2].frame, pixels[2][:, :, ::-1])  # RGB in the file, BGR out
    assert np.diff([i.timestamp for i in items]) == pytest.approx([0.04] * 3, abs=0.002)  # FrameTime 40 ms
    assert time.monotonic() - start >= 0.11
    assert source.fps == pytest.approx(25.0)
    layout = source.layout_hint
    assert [(p.modality.value, p.roi) for p in layout.panes] == [("bmode", (0, 0, 48, 48)), ("smi", (48, 0, 48, 48))]


def test_dicom_frame_time_vector_cine_rate_and_grayscale(tmp_path):
    ds, _ = cine(frames=3, rgb=False, frame_time=None, regions=())
    ds.FrameTimeVector = [0, 20, 60]
    ds.FrameIncrementPointer = (0x0018, 0x1065)
    items = read_all(create_source(save(ds, tmp_path / "vector.dcm")))
    assert np.diff([i.timestamp for i in items]) == pytest.approx([0.02, 0.06], abs=0.003)
    assert items[0].frame.shape == (48, 96, 3)  # grayscale replicated
    ds, _ = cine(frames=3, frame_time=None)
    ds.CineRate = 50
    items = read_all(create_source(save(ds, tmp_path / "rate.dcm")))
    assert np.diff([i.timestamp for i in items]) == pytest.approx([0.02, 0.02], abs=0.003)


def test_dicom_compressed_rle_decodes(tmp_path):
    ds, pixels = cine(frames=2)
    ds.compress(RLELossless)
    items = read_all(create_source(save(ds, tmp_path / "rle.dcm"), FAST))
    np.testing.assert_array_equal(items[1].frame, pixels[1][:, :, ::-1])


def _lie(change):
    def build():
        ds, _ = cine()
        change(ds)
        return ds
    return build


LIES = [
    (_lie(lambda ds: setattr(ds, "NumberOfFrames", 9)), r"NumberOfFrames x Rows x Columns x SamplesPerPixel = 9 x 48"),
    (_lie(lambda ds: setattr(ds, "FrameTime", 0)), r"FrameTime = 0.0 ms; expected a frame interval"),
    (_lie(lambda ds: setattr(ds, "FrameTime", -40)), r"FrameTime = -40.0 ms"),
    (_lie(lambda ds: delattr(ds, "Rows")), r"has no Rows/Columns"),
    (_lie(lambda ds: setattr(ds, "BitsAllocated", 16)), r"BitsAllocated = 16; expected 8-bit"),
    (_lie(lambda ds: setattr(ds, "PhotometricInterpretation", "CMYK")), r"PhotometricInterpretation 'CMYK'"),
    (_lie(lambda ds: setattr(ds, "SamplesPerPixel", 1)), r"SamplesPerPixel = 1 but PhotometricInterpretation is RGB"),
    (_lie(lambda ds: delattr(ds, "PixelData")), r"has no Pixel Data"),
    (_lie(lambda ds: (delattr(ds, "FrameTime"), delattr(ds, "FrameIncrementPointer"))),
     r"states no frame rate .* pass --fps or --as-fast-as-possible"),
    (_lie(lambda ds: (setattr(ds, "FrameTimeVector", [0, 40]), setattr(ds, "FrameIncrementPointer", (0x18, 0x1065)))),
     r"FrameTimeVector has 2 entries for 4 frames"),
    (_lie(lambda ds: (setattr(ds, "FrameTimeVector", [0, 0, 0, 0]), setattr(ds, "FrameIncrementPointer", (0x18, 0x1065)))),
     r"is not a list of frame intervals"),
]


@pytest.mark.parametrize("build, message", LIES, ids=[m[:28] for _, m in LIES])
def test_dicom_lying_or_missing_tags_are_refused(tmp_path, build, message):
    path = save(build(), tmp_path / "lie.dcm")
    with pytest.raises(SourceError, match=message):
        create_source(path).open()


@pytest.mark.parametrize("regions, message", [
    (((0, 0, 47, 47, 1), (48, 0, 95, 47, 1)), r"more than one 2D region of data type 1 \(bmode\); pass --layout"),
    (((0, 0, 60, 47, 1), (40, 0, 95, 47, 2)), r"regions do not form a screen layout .*overlaps"),
    (((30, 0, 10, 47, 1),), r"spans x 30..10"),
])
def test_dicom_lying_regions_are_refused(tmp_path, regions, message):
    ds, _ = cine(regions=regions)
    source = create_source(save(ds, tmp_path / "regions.dcm"))
    source.open()
    with pytest.raises(SourceError, match=message):
        source.layout_hint
    source.close()


def test_dicom_not_a_dicom_and_no_timing_as_fast(tmp_path):
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(SourceError, match=r"is not a DICOM file|cannot parse DICOM"):
        create_source(str(tmp_path / "fake.dcm")).open()
    ds, _ = cine(frame_time=None, regions=())
    items = read_all(create_source(save(ds, tmp_path / "untimed.dcm"), FAST))  # no timing needed when not paced
    assert len(items) == 4
    source = create_source(str(tmp_path / "untimed.dcm"), FAST)
    source.open()
    assert source.layout_hint is None
    source.close()


# ---------------------------------------------------------------------------------------------
# Network: a tcp:// stream served on 127.0.0.1 by a small Python server (no ffmpeg binary needed)


class TcpVideoServer:
    """Serves the bytes of a streamable video (Matroska) to each connection, then closes it."""

    def __init__(self, payload: bytes, connections: int = 1, chunk_delay: float = 0.0) -> None:
        self.payload = payload
        self.connections = connections
        self.chunk_delay = chunk_delay
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(2)
        self.served = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.server.getsockname()[1]}"

    def _serve(self) -> None:
        for _ in range(self.connections):
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                for start in range(0, len(self.payload), 8192):
                    try:
                        conn.sendall(self.payload[start:start + 8192])
                    except OSError:
                        break
                    if self.chunk_delay:
                        time.sleep(self.chunk_delay)
            self.served += 1
        self.server.close()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def mkv_payload(tmp_path) -> tuple[bytes, list[np.ndarray]]:
    images = write_video(tmp_path / "net.mkv", frames=20, size=(64, 48), codec="mp4v")
    return (tmp_path / "net.mkv").read_bytes(), images


def test_tcp_stream_reads_every_frame_then_fails_as_a_live_source(mkv_payload):
    payload, images = mkv_payload
    server = TcpVideoServer(payload)
    source = create_source(server.url, SourceOptions(open_timeout_s=5, read_timeout_s=2))
    assert source.kind == "network" and source.live
    frames = []
    with source:
        with pytest.raises(SourceError, match=r"ended or stalled"):
            while True:
                frames.append(source.read())
    server.close()
    assert len(frames) == len(images)
    assert abs(float(frames[10].frame.mean()) - float(images[10].mean())) < 3


def test_tcp_stream_nobody_listening_is_a_clear_error():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(SourceError, match=rf"cannot open network stream tcp://127.0.0.1:{port} within 1 s"):
        create_source(f"tcp://127.0.0.1:{port}", SourceOptions(open_timeout_s=1)).open()


# ---------------------------------------------------------------------------------------------
# Folder, device, synthetic, registry


def test_folder_in_natural_order_skipping_broken_files(tmp_path):
    for i in (1, 2, 10):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), np.full((20, 30), i * 10, dtype=np.uint8))
    (tmp_path / "frame3.png").write_bytes(b"not a png")
    (tmp_path / "readme.txt").write_text("ignored")
    source = create_source(str(tmp_path), FAST)
    items = read_all(source)
    assert [int(i.frame[0, 0, 0]) for i in items] == [10, 20, 100]
    assert any("frame3.png" in note for note in source.notes)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match=r"holds no images"):
        create_source(str(empty)).open()


class FakeCapture:
    """Records what a DeviceSource asks of cv2.VideoCapture (no camera on a CI machine)."""

    def __init__(self, target, api):
        self.target, self.api, self.props = target, api, {}
        self.frames = 3

    def isOpened(self):
        return True

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def get(self, prop):
        return {cv2.CAP_PROP_FRAME_WIDTH: 1280, cv2.CAP_PROP_FRAME_HEIGHT: 720, cv2.CAP_PROP_FPS: 30.0,
                cv2.CAP_PROP_FOURCC: cv2.VideoWriter_fourcc(*"YUYV")}.get(prop, 0.0)

    def grab(self):
        self.frames -= 1
        return self.frames >= 0

    def retrieve(self):
        return True, np.zeros((720, 1280, 3), dtype=np.uint8)

    def release(self):
        pass


def test_device_requests_resolution_fps_fourcc_and_notes_what_it_got(monkeypatch):
    made = []
    monkeypatch.setattr("edge_thyroid.sources.capture.cv2.VideoCapture",
                        lambda target, api: made.append(FakeCapture(target, api)) or made[-1])
    source = create_source("0", SourceOptions(size=(1920, 1080), fps=60, fourcc="MJPG"))
    assert isinstance(source, DeviceSource) and source.live
    with source:
        assert [source.read().index for _ in range(3)] == [0, 1, 2]
        with pytest.raises(SourceError, match=r"stopped delivering frames"):
            source.read()
    capture = made[0]
    assert capture.target == 0
    assert capture.props == {cv2.CAP_PROP_FOURCC: cv2.VideoWriter_fourcc(*"MJPG"), cv2.CAP_PROP_FRAME_WIDTH: 1920,
                             cv2.CAP_PROP_FRAME_HEIGHT: 1080, cv2.CAP_PROP_FPS: 60}
    assert source.notes == ["device 0 asked for size=(1920, 1080) fps=60 fourcc=MJPG; it gives 1280x720 at 30 fps, YUYV"]


def test_missing_device_is_a_clear_error():
    with pytest.raises(SourceError, match=r"cannot open capture device /dev/video97 \(no such device\)"):
        create_source("/dev/video97").open()
    with pytest.raises(Exception, match=r"FOURCC 'MJPEG' is not 4 characters"):
        SourceOptions(fourcc="MJPEG")


def test_synthetic_screen_panes_change_as_their_modality_does():
    source = create_source("synthetic:dual?size=480x270&fps=30&swe_hz=2&freeze=1-1.5&blank=2-2.2", FAST)
    with source:
        frames = [source.read().frame for _ in range(70)]
        layout = source.layout_hint
    (bx, by, bw, bh), (sx, sy, sw, sh) = [p.roi for p in layout.panes]
    bmode = [f[by:by + bh, bx:bx + bw] for f in frames]
    swe = [f[sy:sy + sh, sx:sx + sw] for f in frames]
    assert not np.array_equal(bmode[0], bmode[1])                  # B-mode: live
    assert np.array_equal(swe[0], swe[14]) and not np.array_equal(swe[14], swe[15])  # SWE: new image at 0.5 s
    assert all(np.array_equal(bmode[30], bmode[i]) for i in range(31, 45))  # frozen 1.0-1.5 s
    assert not np.array_equal(bmode[44], bmode[46])
    assert bmode[60].max() == 0 and bmode[65].max() == 0 and bmode[66].max() > 0  # blank 2.0-2.2 s
    again = create_source("synthetic:dual?size=480x270&fps=30&swe_hz=2", FAST)
    with again:
        np.testing.assert_array_equal(again.read().frame, frames[0])  # deterministic


def test_synthetic_follows_the_given_layout_and_ends_after_frames():
    source = create_source("synthetic?size=640x360&frames=4", SourceOptions(realtime=False, layout=preset("triple")))
    assert len(read_all(source)) == 4
    assert source.layout_hint.modalities == ("bmode", "smi", "swe")
    with pytest.raises(SourceError, match=r"unknown option 'colour'"):
        create_source("synthetic?colour=1")
    with pytest.raises(SourceError, match=r"size='big' is not valid"):
        create_source("synthetic?size=big")


def test_spec_registry(tmp_path):
    (tmp_path / "a.avi").write_bytes(b"x")
    assert resolve_spec("0") == ("device", "0")
    assert resolve_spec("/dev/video2") == ("device", "/dev/video2")
    assert resolve_spec("device:/dev/video5") == ("device", "/dev/video5")
    assert resolve_spec("rtsp://scanner/live") == ("rtsp", "rtsp://scanner/live")
    assert resolve_spec("udp://@:1234") == ("udp", "udp://@:1234")
    assert resolve_spec(str(tmp_path)) == ("folder", str(tmp_path))
    assert resolve_spec(str(tmp_path / "a.avi")) == ("file", str(tmp_path / "a.avi"))
    assert resolve_spec("synthetic:triple?fps=10") == ("synthetic", "synthetic:triple?fps=10")
    with pytest.raises(SourceError, match=r"unknown source scheme 'gopher'"):
        resolve_spec("gopher://old")
    register_source("replay", "edge_thyroid.sources.folder:FolderSource")
    assert create_source(f"replay:{tmp_path}").kind == "folder"


def test_tcp_stream_dropping_out_is_reconnected_and_both_gaps_recorded(mkv_payload):
    from edge_thyroid.stream import Pipeline, PipelineConfig, ReconnectPolicy

    from .test_pipeline import FakeEngine, ListSink

    payload, images = mkv_payload
    server = TcpVideoServer(payload, connections=2)
    source = create_source(server.url, SourceOptions(open_timeout_s=2, read_timeout_s=2))
    sink = ListSink()
    source.open()
    config = PipelineConfig(lossless=True, reconnect=ReconnectPolicy(attempts=2, first_delay_s=0.05, max_delay_s=0.1),
                            whole_pane=True)
    summary = Pipeline(FakeEngine(), source, [sink], config).run()
    source.close()
    server.close()
    # Connection 1 ends -> reopened (connection 2) -> it ends -> nobody listens: the source is lost.
    assert [g["resumed"] for g in sink.events] == [True, False]
    assert sink.events[0]["frames_before"] == len(images) and sink.events[1]["attempts"] == 2
    assert summary.processed == 2 * len(images) and summary.frames == 2 * len(images)
    assert "was lost and did not come back after 2 reopen attempts" in summary.error


def test_a_paced_wait_cut_short_by_stop_stamps_the_frame_now_not_in_the_future():
    from edge_thyroid.sources.base import Pacer

    interrupt = threading.Event()
    pacer = Pacer(interrupt)
    pacer.wait(0.0)  # the schedule starts now
    threading.Timer(0.05, interrupt.set).start()
    arrival = pacer.wait(5.0)  # due in 5 s; the stop comes after 0.05 s
    assert arrival <= time.monotonic()


def test_recorded_sources_carry_their_media_time_and_live_ones_do_not(tmp_path):
    """A frame from a file says where it is in the recording (issue 16: file sources carry the media
    timestamp), read as fast as possible or in real time; a synthetic (live-like) source says nothing."""
    from edge_thyroid.commands.stream import DEMO_CLIP, data_path

    ds, _ = cine(frames=3, frame_time=None)
    ds.FrameTimeVector = [0, 20, 60]                       # ms between frames: offsets 0, 0.02, 0.08 s
    ds.FrameIncrementPointer = (0x0018, 0x1065)
    items = read_all(create_source(save(ds, tmp_path / "vector.dcm"), SourceOptions(realtime=False)))
    assert [i.media_ts for i in items] == pytest.approx([0.0, 0.02, 0.08])
    clip = create_source(str(data_path(DEMO_CLIP)), SourceOptions(realtime=False))
    clip.open()
    try:
        fps = clip.capture.get(cv2.CAP_PROP_FPS)
        first = [clip.read() for _ in range(5)]
    finally:
        clip.close()
    assert fps > 0 and [i.media_ts for i in first] == pytest.approx([k / fps for k in range(5)])
    synthetic = create_source("synthetic?frames=2", SourceOptions(realtime=False))
    assert {i.media_ts for i in read_all(synthetic)} == {None}
