"""Bad input is an error or an abstention, never an answer: truncated or damaged images, panes too
small or blank, sources with no frame, layouts that do not fit; OpenCV/FFmpeg noise never on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_thyroid.errors import InputError
from edge_thyroid.frames import read_image, truncation
from edge_thyroid.inputs import MIN_PANE_PIXELS, pane_problem

from ..conftest import DATA_DIR, needs_data, ultrasound_like
from .helpers import REPO, assert_refused, parse_jsonl, run_cli

DEMO_BUNDLE = REPO / "edge_thyroid" / "data" / "demo_bundle"
NATIVE_NOISE = ("[ WARN", "[ERROR", "Premature end", "Corrupt JPEG", "libpng", "moov atom", "findDecoder", "Invalid data")


def no_native_noise(stderr: str) -> None:
    """No line from OpenCV, FFmpeg or a codec: what they said may only appear inside our own lines."""
    for line in stderr.splitlines():
        if not line.startswith(("notice: ", "skipped: ", "error: ")):
            assert not any(noise in line for noise in NATIVE_NOISE), stderr[-2000:]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    picture = ultrasound_like(200, 240, seed=3)
    cv2.imwrite(str(folder / "good.png"), picture)
    cv2.imwrite(str(folder / "good.jpg"), picture)
    jpeg, png = (folder / "good.jpg").read_bytes(), (folder / "good.png").read_bytes()
    damaged = bytearray(jpeg)
    for position in range(len(jpeg) // 3, len(jpeg) // 2, 11):  # inside the entropy-coded data, end marker kept
        damaged[position] = 0xFF
    files = {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: 2 * len(png) // 3],
        "damaged.jpg": bytes(damaged),
        "notimage.jpg": b"hello, not a picture",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((1, 1), np.uint8))
    cv2.imwrite(str(folder / "grey.png"), np.full((64, 64), 128, np.uint8))
    return {path.name: path for path in folder.iterdir()}


@pytest.mark.parametrize("name, fragment", [
    ("truncated.jpg", "JPEG without its end marker"), ("truncated.png", "PNG without its IEND chunk"),
    ("damaged.jpg", "the decoder said: Corrupt JPEG data"), ("notimage.jpg", "cannot decode image"),
])
def test_read_image_refuses_what_opencv_would_half_decode(images, name, fragment):
    if name == "damaged.jpg":  # OpenCV alone returns pixels for it: the point of the check
        assert cv2.imread(str(images[name])) is not None
    with pytest.raises(InputError, match=fragment):
        read_image(images[name])


def test_complete_images_read_as_opencv_reads_them(images):
    for name in ("good.png", "good.jpg"):
        assert np.array_equal(read_image(images[name]), cv2.imread(str(images[name]), cv2.IMREAD_COLOR))
    # Trailing padding after the end marker is not truncation.
    assert truncation((images["good.jpg"]).read_bytes() + b"\0" * 16) is None


def test_pane_problem_names_small_and_uniform_panes():
    picture = np.dstack([ultrasound_like(100, 100)] * 3)
    assert pane_problem(picture, (0, 0, 100, 100)) is None
    assert "expected at least" in pane_problem(picture, (0, 0, MIN_PANE_PIXELS - 1, 50))
    flat = picture.copy()
    flat[10:60, 10:60] = 77
    assert "uniform" in pane_problem(flat, (10, 10, 50, 50))
    assert pane_problem(flat, (0, 0, 100, 100)) is None


def test_classify_prints_the_good_images_then_fails_naming_each_bad_one(images):
    order = ["good.png", "truncated.jpg", "tiny.png", "good.jpg", "grey.png", "truncated.png", "damaged.jpg", "notimage.jpg"]
    result = run_cli("classify", DEMO_BUNDLE, *(images[name] for name in order), "--json")
    assert_refused(result, "6 of 8 images could not be used")
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["image"]).name for r in printed] == ["good.png", "good.jpg"]
    assert all(0.0 <= r["p_malignant"] <= 1.0 for r in printed)
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 6
    for name, fragment in [("truncated.jpg", "truncated"), ("tiny.png", "1x1 pixels"), ("grey.png", "uniform"),
                           ("truncated.png", "truncated"), ("damaged.jpg", "damaged"), ("notimage.jpg", "cannot decode")]:
        assert any(name in line and fragment in line for line in skipped), (name, skipped)
    no_native_noise(result.stderr)


def test_stream_of_a_file_with_no_frame_stops_with_one_line(images, tmp_path):
    out = tmp_path / "out.jsonl"
    result = run_cli("stream", DEMO_BUNDLE, "--source", images["notimage.jpg"], "--quiet", "--json-out", out)
    assert_refused(result, "yielded no frame")
    assert result.returncode == 2 and "frames 0" not in result.stderr
    no_native_noise(result.stderr)
    parse_jsonl(out)  # whatever was written is complete


def test_stream_of_a_damaged_video_is_our_error_not_ffmpeg_noise(tmp_path):
    clip = (REPO / "edge_thyroid" / "data" / "demo_clip.mp4").read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip[: len(clip) // 3][:64] + clip[4096: len(clip) // 3])  # header mangled: no moov atom
    result = run_cli("stream", DEMO_BUNDLE, "--source", broken, "--quiet")
    assert result.returncode == 2, result.stderr
    no_native_noise(result.stderr)
    assert_refused(result, "broken.mp4")


def test_stream_of_a_folder_of_only_bad_images_stops_with_one_line(images, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("truncated.jpg", "notimage.jpg"):
        (folder / name).write_bytes(images[name].read_bytes())
    result = run_cli("stream", DEMO_BUNDLE, "--source", folder, "--quiet")
    assert_refused(result, "yielded no frame", "skipped")
    no_native_noise(result.stderr)


@pytest.mark.parametrize("roi, fragment", [([500, 500, 100, 100], "outside the 240x200 frame"),
                                           ([0, 0, 10, 10], "10x10 pixels")])
def test_stream_stops_at_once_when_the_layout_does_not_fit_the_first_frame(images, tmp_path, roi, fragment):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "a.png").write_bytes(images["good.png"].read_bytes())
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"name": "bad", "panes": [{"modality": "bmode", "roi": roi}]}))
    out = tmp_path / "out.jsonl"
    result = run_cli("stream", DEMO_BUNDLE, "--source", folder, "--layout", layout, "--quiet", "--json-out", out)
    assert_refused(result, "does not fit the first frame", fragment)
    assert [r for r in parse_jsonl(out) if r.get("type") == "frame"] == []


def test_stream_abstains_on_bad_frames_after_a_good_first_one(images, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, name in enumerate(["good.png", "grey.png", "tiny.png", "truncated.jpg", "good.jpg"]):
        (folder / f"{index}_{name}").write_bytes(images[name].read_bytes())
    out = tmp_path / "out.jsonl"
    result = run_cli("stream", DEMO_BUNDLE, "--source", folder, "--quiet", "--json-out", out, "--as-fast-as-possible")
    assert result.returncode == 0, result.stderr
    frames = [r for r in parse_jsonl(out) if r.get("type") == "frame"]
    assert len(frames) == 4  # the truncated file is skipped (and noted), the others each get a record
    by_reason = [(r["decision"], r.get("reason")) for r in frames]
    assert by_reason[1] == ("abstain", "blank") and by_reason[2] == ("abstain", "invalid"), by_reason
    assert frames[2]["p"] is None and "1x1 pixels" in frames[2]["detail"]
    assert "skipped 3_truncated.jpg" in result.stdout + result.stderr
    no_native_noise(result.stderr)


@needs_data
def test_no_real_image_is_mistaken_for_a_truncated_one():
    """The truncation check must not refuse real scanner exports (every PNG/JPEG under ../shared/data)."""
    files = [p for p in DATA_DIR.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    assert len(files) > 100
    assert [p for p in files if truncation(p.read_bytes())] == []
    for path in files[:: max(1, len(files) // 40)]:  # a spread of them decodes cleanly too
        assert np.array_equal(read_image(path), cv2.imread(str(path), cv2.IMREAD_COLOR)), path
