"""Real ultrasound DICOM: every ultrasound file in pydicom's bundled test data (and every 8-bit file
of any transfer syntax there) streams, each frame equal to pydicom's own decode; regions written for
a larger screen are rescaled or clipped, never a refusal.

pydicom's downloadable test files (pydicom-data: US1_J2KI, US1_J2KR, US1_UNCI, US1_UNCR and the
16-bit gdcm-US-ALOKA-16*) are not in the installed package and are never fetched here: no network.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (JPEG2000, JPEGExtended12Bit, JPEGLSLossless, ImplicitVRLittleEndian, RLELossless,
                         UltrasoundImageStorage, UltrasoundMultiFrameImageStorage)

from edge_thyroid.sources import SourceOptions, create_source

from .dicom_files import region_at, write_dicom
from .helpers import REPO, parse_jsonl, run_cli

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
ULTRASOUND_SOP = {UltrasoundImageStorage, UltrasoundMultiFrameImageStorage, "1.2.840.10008.5.1.4.1.1.6.2",
                  "1.2.840.10008.5.1.4.1.1.3"}
DEMO_BUNDLE = REPO / "edge_thyroid" / "data" / "demo_bundle"


def _headers() -> dict[str, pydicom.Dataset]:
    found = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(TEST_FILES.rglob("*")):
            try:
                found[path.name] = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - not every bundled file is a readable DICOM on purpose
                continue
    return found


HEADERS = _headers()
ULTRASOUND = sorted(name for name, ds in HEADERS.items()
                    if ds.get("Modality") == "US" or str(ds.get("SOPClassUID", "")) in ULTRASOUND_SOP)
EIGHT_BIT = sorted(name for name, ds in HEADERS.items()
                   if ds.get("BitsAllocated") == 8 and name not in ULTRASOUND
                   and "Rows" in ds and ds.get("SamplesPerPixel") in (1, 3))


def test_the_bundled_ultrasound_files_are_found():
    """The five known ones at least (a pydicom upgrade that adds files only widens the test)."""
    assert {"examples_ybr_color.dcm", "examples_palette.dcm", "examples_jpeg2k.dcm", "examples_rgb_color.dcm",
            "ExplVR_BigEnd.dcm"} <= set(ULTRASOUND)


def reference_frames(path: str | Path) -> np.ndarray:
    """pydicom's own decode, as RGB (or grey) uint8 frames: [frames, rows, columns(, 3)]."""
    from pydicom.pixels import apply_color_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        pixels = pixels[None]
    photometric = ds.PhotometricInterpretation
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
        pixels = (pixels >> 8).astype(np.uint8) if pixels.dtype != np.uint8 else pixels
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    return pixels


def streamed_frames(path: str | Path) -> tuple[list[np.ndarray], object, list[str]]:
    """Every frame through the DICOM source, converted back from BGR to RGB for the comparison."""
    source = create_source(f"dicom:{path}", SourceOptions(realtime=False))
    frames = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with source:
            layout = source.layout_hint
            while (item := source.read()) is not None:
                assert item.problem is None, item.problem
                frames.append(item.frame[..., ::-1])
    return frames, layout, source.notes


def assert_same_as_pydicom(path: str | Path) -> tuple[object, list[str]]:
    expected = reference_frames(path)
    frames, layout, notes = streamed_frames(path)
    assert len(frames) == expected.shape[0]
    for index, (got, want) in enumerate(zip(frames, expected)):
        if want.ndim == 2:  # grey frames are streamed as three equal channels
            assert np.array_equal(got[..., 0], want) and np.array_equal(got[..., 1], want), index
        else:
            assert np.array_equal(got, want), f"frame {index}: max |diff| {np.abs(got.astype(int) - want).max()}"
    return layout, notes


@pytest.mark.parametrize("name", ULTRASOUND)
def test_every_bundled_ultrasound_file_streams_as_pydicom_decodes_it(name):
    assert_same_as_pydicom(get_testdata_file(name, download=False))


@pytest.mark.parametrize("name", EIGHT_BIT)
def test_every_bundled_8bit_transfer_syntax_streams_as_pydicom_decodes_it(name):
    """JPEG lossless, JPEG-LS, RLE, JPEG 2000 (RGB and YBR_RCT), deflated, implicit and big-endian."""
    assert_same_as_pydicom(get_testdata_file(name, download=False))


def test_the_syntaxes_the_bundled_data_lacks_are_made_and_streamed(tmp_path):
    """JPEG 2000 lossy (YBR_ICT), JPEG-LS and RLE of an ultrasound cine, implicit VR, and a JPEG
    baseline stream under the JPEG Extended syntax (process 1 is a subset of processes 2 and 4)."""
    def read(name: str) -> pydicom.Dataset:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(get_testdata_file(name, download=False))

    made = {}
    made["j2k_ict"] = read("examples_rgb_color.dcm")
    made["j2k_ict"].PhotometricInterpretation = "YBR_ICT"  # the encoder applies the transform to the RGB pixels
    made["j2k_ict"].compress(JPEG2000, j2k_psnr=[45.0])
    for uid in (JPEGLSLossless, RLELossless):
        made[uid.name] = read("examples_rgb_color.dcm")
        made[uid.name].compress(uid)
    made["implicit"] = read("examples_rgb_color.dcm")
    made["implicit"].file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    made["extended"] = read("examples_ybr_color.dcm")
    made["extended"].file_meta.TransferSyntaxUID = JPEGExtended12Bit
    for label, ds in made.items():
        path = tmp_path / f"{label}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert_same_as_pydicom(path)
    assert pydicom.dcmread(tmp_path / "j2k_ict.dcm").PhotometricInterpretation == "YBR_ICT"


def test_regions_of_a_downsized_cine_are_rescaled_and_said_once():
    layout, notes = assert_same_as_pydicom(get_testdata_file("examples_ybr_color.dcm", download=False))
    # Written for 640x480 (x 84..595, y 31..414), the pixels are 320x240: divided by 2.
    assert [(p.modality.value, p.roi) for p in layout.panes] == [("bmode", (42, 15, 256, 193))]
    assert len([n for n in notes if "divided by 2" in n]) == 1


def test_regions_of_a_cropped_screen_are_clipped_and_said_once():
    layout, notes = assert_same_as_pydicom(get_testdata_file("examples_palette.dcm", download=False))
    assert [(p.modality.value, p.roi) for p in layout.panes] == [("bmode", (120, 60, 680, 290))]
    assert len([n for n in notes if "clipped" in n]) == 1


@pytest.mark.parametrize("corners, roi", [((50, 10, 400, 40), (50, 10, 46, 31)), ((0, 0, 2**32 - 1, 40), (0, 0, 96, 41))])
def test_a_region_past_one_edge_is_clipped_not_refused(tmp_path, corners, roi):
    frames, layout, notes = streamed_frames(write_dicom(tmp_path / "cine.dcm", region_at(*corners)))
    assert len(frames) == 4 and layout.panes[0].roi == roi
    assert any("clipped" in n for n in notes)


def test_cli_streams_every_bundled_ultrasound_file(tmp_path):
    for name in ULTRASOUND:
        out = tmp_path / f"{name}.jsonl"
        path = get_testdata_file(name, download=False)
        result = run_cli("stream", DEMO_BUNDLE, "--source", path, "--as-fast-as-possible", "--quiet",
                         "--json-out", out)
        assert result.returncode == 0, (name, result.stderr[-1500:])
        frames = [r for r in parse_jsonl(out) if r.get("type") == "frame"]
        assert len(frames) == reference_frames(path).shape[0], name
        assert "Traceback" not in result.stderr
