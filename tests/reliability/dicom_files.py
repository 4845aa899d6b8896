"""Valid and lying multi-frame ultrasound DICOM files, written with pydicom (no real data needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from ..test_sources import cine, us_region


def write_dicom(path: Path, change: Callable[[Dataset], object] | None = None, **options) -> Path:
    """A 4-frame RGB cine (two side-by-side panes as ultrasound regions: B-mode tissue and colour flow),
    optionally made to lie by ``change``."""
    ds, _ = cine(**options)
    if change is not None:
        change(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def drop(*keywords: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for keyword in keywords:
            delattr(ds, keyword)
    return change


def set_tags(**values) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return change


def truncate_pixels(fraction: float) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds.PixelData = ds.PixelData[: int(len(ds.PixelData) * fraction)]
    return change


def region_at(x0: int, y0: int, x1: int, y1: int) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds.SequenceOfUltrasoundRegions = DicomSequence([us_region(x0, y0, x1, y1, 1)])
    return change


# (name, change, what the error must mention): files whose tags lie about the pixel data or are missing.
LYING_DICOMS = [
    ("frame count larger than the pixel data", set_tags(NumberOfFrames=40), "frame"),
    ("pixel data truncated mid-frame", truncate_pixels(0.6), "pixel"),
    ("no pixel data", drop("PixelData"), "pixel"),
    ("zero frames", set_tags(NumberOfFrames=0), "frame"),
    ("negative frame time", set_tags(FrameTime=-40.0), "frametime"),
    ("zero frame time", set_tags(FrameTime=0.0), "frametime"),
    ("absurd frame time", set_tags(FrameTime=1e12), "frametime"),
    ("rows missing", drop("Rows"), "rows"),
    ("16-bit samples declared for 8-bit data", set_tags(BitsAllocated=16, BitsStored=16, HighBit=15), "bitsallocated"),
    ("region with max before min", region_at(40, 40, 10, 10), "region"),
]
