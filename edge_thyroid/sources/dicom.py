"""Multi-frame ultrasound DICOM (a cine loop) as a source, through pydicom.

Frames are decoded one at a time (a long cine never sits in memory whole) and replayed at the rate
the file states: Frame Time Vector (0018,1065) or Frame Time (0018,1063) as the Frame Increment
Pointer says, else Cine Rate (0018,0040) or Recommended Display Frame Rate (0008,2144). The pane
layout comes from the Sequence of Ultrasound Regions (0018,6011) when present: a 2D tissue region is
the B-mode pane, a 2D colour-flow region the SMI pane. Tags that are missing or contradict the pixel
data are refused with a message naming the tag.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..frames import Pane
from ..layout import Layout, Modality
from .base import Pacer, Source, SourceError

MAX_SIDE = 8192
MAX_FRAMES = 100_000
TAG_FRAME_TIME_VECTOR = 0x00181065
TAG_PIXEL_DATA = 0x7FE00010
# YBR_* are decoded to RGB by pydicom (as_rgb); YBR_RCT/ICT/PARTIAL_420 occur only in compressed data
# (JPEG 2000 lossless/lossy, JPEG baseline with 4:2:0), where the decoder applies the colour transform.
PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_RCT",
               "YBR_ICT", "PALETTE COLOR")

# Region Data Type (0018,6014) -> the pane it is on a thyroid workstation. Other types (spectral
# Doppler, traces, colour bars) are not image panes and are ignored.
REGION_MODALITY = {1: Modality.BMODE,   # tissue
                   2: Modality.SMI}     # colour flow (SMI is a microvascular colour-flow mode)
REGION_2D = 1                           # Region Spatial Format (0018,6012): 2D


@dataclass(frozen=True)
class DicomInfo:
    rows: int
    columns: int
    frames: int
    photometric: str
    offsets_s: tuple[float, ...] | None   # arrival of each frame since the first; None: no timing stated
    duration_s: float                     # one pass, for looping (the last frame lasts one mean interval)


def _number(ds: Any, keyword: str, path: Path, *, integer: bool = False) -> float | None:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return None
    value = ds[keyword].value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SourceError(f"DICOM {path.name}: {keyword} is {value!r}; expected a number") from None
    if not math.isfinite(number) or (integer and not number.is_integer()):
        raise SourceError(f"DICOM {path.name}: {keyword} is {value!r}; expected a finite "
                          f"{'integer' if integer else 'number'}")
    return number


def inspect_dataset(ds: Any, path: Path, pixel_bytes: int | None, encapsulated: bool) -> DicomInfo:
    """Check the tags a replay depends on; every refusal names the tag and what was expected."""
    rows, columns = _number(ds, "Rows", path, integer=True), _number(ds, "Columns", path, integer=True)
    if rows is None or columns is None:
        raise SourceError(f"DICOM {path.name} has no Rows/Columns; expected an image (Ultrasound Multi-frame)")
    rows, columns = int(rows), int(columns)
    if not (1 <= rows <= MAX_SIDE and 1 <= columns <= MAX_SIDE):
        raise SourceError(f"DICOM {path.name}: Rows x Columns = {rows}x{columns}; expected 1..{MAX_SIDE} each")
    frames = _number(ds, "NumberOfFrames", path, integer=True)
    frames = 1 if frames is None else int(frames)
    if not 1 <= frames <= MAX_FRAMES:
        raise SourceError(f"DICOM {path.name}: NumberOfFrames = {frames}; expected 1..{MAX_FRAMES}")
    samples = int(_number(ds, "SamplesPerPixel", path, integer=True) or 1)
    bits = _number(ds, "BitsAllocated", path, integer=True)
    bits = None if bits is None else int(bits)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in PHOTOMETRIC:
        raise SourceError(f"DICOM {path.name}: PhotometricInterpretation {photometric or 'missing'!r}; "
                          f"expected one of {list(PHOTOMETRIC)}")
    wanted_samples = 1 if photometric.startswith("MONOCHROME") or photometric == "PALETTE COLOR" else 3
    if samples != wanted_samples:
        raise SourceError(f"DICOM {path.name}: SamplesPerPixel = {samples} but PhotometricInterpretation is "
                          f"{photometric}; expected {wanted_samples}")
    if bits != 8:
        raise SourceError(f"DICOM {path.name}: BitsAllocated = {bits}; expected 8-bit ultrasound frames")
    if pixel_bytes is None:
        raise SourceError(f"DICOM {path.name} has no Pixel Data (7FE0,0010); expected image frames")
    if not encapsulated:
        expected = rows * columns * samples * frames
        if photometric == "YBR_FULL_422":
            expected = rows * columns * 2 * frames
        if pixel_bytes not in (expected, expected + 1):   # + 1: DICOM pads odd lengths
            raise SourceError(f"DICOM {path.name}: NumberOfFrames x Rows x Columns x SamplesPerPixel = {frames} x "
                              f"{rows} x {columns} x {samples} = {expected} bytes, but the Pixel Data holds "
                              f"{pixel_bytes}; the tags or the file are wrong (truncated?)")
    return DicomInfo(rows, columns, frames, photometric, *_timing(ds, path, frames))


def _timing(ds: Any, path: Path, frames: int) -> tuple[tuple[float, ...] | None, float]:
    pointers = [int(t) for t in _as_list(ds.get("FrameIncrementPointer"))]
    vector = ds.get("FrameTimeVector")
    if vector is not None and (TAG_FRAME_TIME_VECTOR in pointers or "FrameTime" not in ds):
        try:
            values = [float(v) for v in _as_list(vector)]
        except (TypeError, ValueError):
            raise SourceError(f"DICOM {path.name}: FrameTimeVector {str(vector)[:80]} is not numbers") from None
        if len(values) != frames:
            raise SourceError(f"DICOM {path.name}: FrameTimeVector has {len(values)} entries for {frames} frames; "
                              "expected one per frame")
        if not all(math.isfinite(v) and 0 <= v <= 60_000 for v in values) or (frames > 1 and sum(values[1:]) <= 0):
            raise SourceError(f"DICOM {path.name}: FrameTimeVector {values[:8]} is not a list of frame intervals "
                              "in 0..60000 ms")
        offsets = tuple(np.cumsum([0.0] + values[1:]) / 1000.0)
        mean = offsets[-1] / (frames - 1) if frames > 1 else 0.04
        return offsets, offsets[-1] + mean
    frame_time = _number(ds, "FrameTime", path)
    if frame_time is not None:
        if not 0 < frame_time <= 60_000:
            raise SourceError(f"DICOM {path.name}: FrameTime = {frame_time} ms; expected a frame interval in "
                              "(0, 60000] ms")
        return _even(frame_time / 1000.0, frames)
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _number(ds, keyword, path)
        if rate is not None:
            if not 0 < rate <= 1000:
                raise SourceError(f"DICOM {path.name}: {keyword} = {rate}; expected (0, 1000] frames per second")
            return _even(1.0 / rate, frames)
    return None, 0.0


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _even(period: float, frames: int) -> tuple[tuple[float, ...], float]:
    return tuple(i * period for i in range(frames)), frames * period


MAX_REGION_SCALE = 8   # a screen downsized by more than this is not worth reading
REGION_SLACK = 0.02    # overshoot (fraction of the image) that counts as "the pixels were downsized"


def regions_layout(ds: Any, rows: int, columns: int, name: str, notes: list[str] | None = None) -> Layout | None:
    """Panes from the Sequence of Ultrasound Regions, or None if the file has none.

    Regions written for the full-size screen and then left unchanged when the pixels were downsized
    (seen in real files) are mapped back: divided by the integer factor that makes them fit when
    they overshoot clearly in both directions, otherwise clipped to the image (a cropped screen, a
    MaxX1 one past the last column). Either is said once in
    ``notes``; a file is never refused for it.
    """
    regions = ds.get("SequenceOfUltrasoundRegions")
    if not regions:
        return None
    boxes: list[tuple[Modality, tuple[int, int, int, int]]] = []
    for number, region in enumerate(regions):
        fmt, kind = region.get("RegionSpatialFormat"), region.get("RegionDataType")
        if fmt != REGION_2D or kind not in REGION_MODALITY:
            continue
        corners = [region.get(k) for k in ("RegionLocationMinX0", "RegionLocationMinY0",
                                           "RegionLocationMaxX1", "RegionLocationMaxY1")]
        if any(c is None for c in corners):
            raise SourceError(f"DICOM {name}: ultrasound region {number} lacks RegionLocationMinX0/MinY0/MaxX1/MaxY1")
        x0, y0, x1, y1 = (int(c) for c in corners)
        if not (0 <= x0 <= x1 and 0 <= y0 <= y1):
            raise SourceError(f"DICOM {name}: ultrasound region {number} spans x {x0}..{x1}, y {y0}..{y1}; "
                              "expected 0 <= min <= max")
        modality = REGION_MODALITY[kind]
        if any(m is modality for m, _ in boxes):
            raise SourceError(f"DICOM {name}: more than one 2D region of data type {kind} ({modality.value}); "
                              "pass --layout to say which pane is which")
        boxes.append((modality, (x0, y0, x1, y1)))
    if not boxes:
        return None
    boxes = _fit_regions(boxes, rows, columns, name, notes if notes is not None else [])
    panes = tuple(Pane(m, (x0, y0, x1 - x0 + 1, y1 - y0 + 1)) for m, (x0, y0, x1, y1) in boxes)
    if not panes:
        return None
    layout = Layout(f"dicom regions of {name}", panes, screen=(columns, rows))
    try:
        layout.validate(columns, rows)
    except InputError as exc:  # overlapping regions: a lying file, said as such
        raise SourceError(f"DICOM {name}: ultrasound regions do not form a screen layout ({exc})") from None
    return layout


def _fit_regions(boxes: list[tuple[Modality, tuple[int, int, int, int]]], rows: int, columns: int, name: str,
                 notes: list[str]) -> list[tuple[Modality, tuple[int, int, int, int]]]:
    right = max(b[2] for _, b in boxes)
    bottom = max(b[3] for _, b in boxes)
    if right < columns and bottom < rows:
        return boxes
    # Downsized pixels overshoot in both directions, by far; a region one pixel too wide (MaxX1 written
    # as the width, seen in real files) or a cropped screen is clipped instead.
    if right >= columns * (1 + REGION_SLACK) and bottom >= rows * (1 + REGION_SLACK):
        for factor in range(2, MAX_REGION_SCALE + 1):
            if right // factor < columns and bottom // factor < rows:
                notes.append(f"DICOM {name}: the ultrasound regions reach x {right}, y {bottom} of a {columns}x{rows} "
                             f"image (the pixels were downsized after the regions were written); regions divided by "
                             f"{factor}")
                return [(m, (x0 // factor, y0 // factor, x1 // factor, y1 // factor)) for m, (x0, y0, x1, y1) in boxes]
    fitted = []
    for modality, (x0, y0, x1, y1) in boxes:
        clipped = (x0, y0, min(x1, columns - 1), min(y1, rows - 1))
        if clipped[0] > clipped[2] or clipped[1] > clipped[3]:
            notes.append(f"DICOM {name}: the {modality.value} region x {x0}..{x1}, y {y0}..{y1} lies outside the "
                         f"{columns}x{rows} image; ignored")
            continue
        if clipped != (x0, y0, x1, y1):
            notes.append(f"DICOM {name}: the {modality.value} region x {x0}..{x1}, y {y0}..{y1} extends past the "
                         f"{columns}x{rows} image; clipped to x {x0}..{clipped[2]}, y {y0}..{clipped[3]}")
        fitted.append((modality, clipped))
    return fitted


class DicomSource(Source):
    kind = "dicom"

    def _open(self) -> None:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import get_decoder

        path = self.path = Path(self.target)
        if not path.is_file():
            raise SourceError(f"DICOM file {path} does not exist")
        try:
            ds = pydicom.dcmread(path, defer_size=1024)
            meta = getattr(ds, "file_meta", None)
            syntax = meta.get("TransferSyntaxUID") if meta is not None else None
            element = ds.get_item(TAG_PIXEL_DATA, keep_deferred=True)
        except InvalidDicomError:
            raise SourceError(f"{path} is not a DICOM file (no DICM preamble); expected a multi-frame ultrasound "
                              "DICOM") from None
        except Exception as exc:  # pydicom raises many types on damaged files
            raise SourceError(f"cannot parse DICOM {path.name}: {type(exc).__name__}: {str(exc)[:160]}") from None
        if syntax is None:
            raise SourceError(f"DICOM {path.name} has no TransferSyntaxUID in its file meta; expected a DICOM file")
        try:
            # pydicom parses elements lazily: a damaged tag raises here, as anything from NotImplementedError
            # (an unknown VR) to ValueError (not a transfer syntax UID) or TypeError.
            encapsulated = bool(syntax.is_encapsulated)
            pixel_bytes = None if element is None else getattr(element, "length", None)
            if pixel_bytes is None and element is not None:
                pixel_bytes = len(element.value or b"")
            info = self.info = inspect_dataset(ds, path, pixel_bytes, encapsulated)
            decoder = get_decoder(syntax) if syntax.is_compressed else None
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"cannot parse DICOM {path.name}: {type(exc).__name__}: {str(exc)[:160]}") from None
        if decoder is not None and not decoder.is_available:
            raise SourceError(f"DICOM {path.name} is compressed ({syntax.name}) and no installed decoder reads it; "
                              "pip install 'edge-thyroid[dicom]'")
        if self.options.realtime and info.offsets_s is None and not self.options.fps:
            raise SourceError(f"DICOM {path.name} states no frame rate (FrameTime, FrameTimeVector, CineRate, "
                              "RecommendedDisplayFrameRate); pass --fps or --as-fast-as-possible")
        self.dataset = ds
        # Frames are decoded from the file one at a time; a deflated file can only be read whole.
        self._whole: Any = pydicom.dcmread(path) if syntax.is_deflated else None
        self.pacer = Pacer(self.interrupt)
        self._layout: Layout | None = None
        self._layout_checked = False
        self._start_pass()

    def _start_pass(self) -> None:
        from pydicom.pixels import iter_pixels

        self._close_file()
        if self._whole is not None:
            self.frames = iter_pixels(self._whole)
        else:
            self.handle = open(self.path, "rb")
            self.frames = iter_pixels(self.handle)
        self.position = 0

    def _read_whole(self, failure: Exception) -> None:
        """Decode from the dataset in memory instead of the file: pydicom's dataset path tolerates what
        its streaming path does not (e.g. a malformed Basic Offset Table). Said once in the notes."""
        import pydicom

        self.notes.append(f"DICOM {self.path.name}: frame-by-frame decoding failed ({type(failure).__name__}: "
                          f"{str(failure)[:100]}); read whole instead")
        self._whole = pydicom.dcmread(self.path)
        self._start_pass()

    def _close_file(self) -> None:
        frames = getattr(self, "frames", None)
        if frames is not None:
            frames.close()  # the generator seeks back in the file when it finishes: before the file closes
            self.frames = None
        handle = getattr(self, "handle", None)
        if handle is not None:
            handle.close()
            self.handle = None

    @property
    def fps(self) -> float | None:
        if self.options.fps:
            return self.options.fps
        info = getattr(self, "info", None)
        if info and info.offsets_s and info.frames > 1 and info.offsets_s[-1] > 0:
            return (info.frames - 1) / info.offsets_s[-1]
        return None

    @property
    def layout_hint(self) -> Layout | None:
        if not self._layout_checked:
            try:
                self._layout = regions_layout(self.dataset, self.info.rows, self.info.columns, self.path.name,
                                              self.notes)
            except SourceError:
                raise
            except Exception as exc:  # a damaged region item, parsed only now
                raise SourceError(f"DICOM {self.path.name}: unreadable Sequence of Ultrasound Regions: "
                                  f"{type(exc).__name__}: {str(exc)[:160]}") from None
            self._layout_checked = True
        return self._layout

    def _offset(self, passes: int, position: int) -> float | None:
        if not self.options.realtime:
            return None
        info = self.info
        if self.options.fps or info.offsets_s is None:
            return self.index / (self.options.fps or 30.0)
        return passes * info.duration_s + info.offsets_s[position]

    def media_time(self) -> float | None:
        """The cine's own timing (Frame Time / Frame Time Vector / Cine Rate) of the frame just read; None
        when the file states none."""
        info = self.info
        if info is None or info.offsets_s is None or self.position < 1:
            return None
        return info.offsets_s[self.position - 1]

    def _read(self) -> tuple[np.ndarray, float, float] | None:
        if self.position >= self.info.frames:
            if not self.options.loop:
                return None
            self._start_pass()
        passes = self.index // self.info.frames
        arrival = self.pacer.wait(self._offset(passes, self.position))
        start = time.monotonic()
        try:
            try:
                pixels = next(self.frames)
            except Exception as exc:  # noqa: BLE001 - retried once in memory, then reported below
                if self.position != 0 or self.index != 0 or self._whole is not None:
                    raise
                self._read_whole(exc)
                pixels = next(self.frames)
        except StopIteration:
            raise SourceError(f"DICOM {self.path.name} ended after {self.position} of the {self.info.frames} frames "
                              "its NumberOfFrames states") from None
        except Exception as exc:
            raise SourceError(f"cannot decode frame {self.position} of DICOM {self.path.name}: "
                              f"{type(exc).__name__}: {str(exc)[:160]}") from None
        self.position += 1
        frame = self._to_bgr(pixels)
        return frame, arrival, (time.monotonic() - start) * 1000.0

    def _to_bgr(self, pixels: np.ndarray) -> np.ndarray:
        import cv2

        photometric = self.info.photometric
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            pixels = apply_color_lut(pixels, self.dataset)
            if pixels.dtype != np.uint8:  # LUT entries are 16-bit
                pixels = (pixels >> 8).astype(np.uint8)
            photometric = "RGB"
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8:
            raise SourceError(f"DICOM {self.path.name} decoded to {pixels.dtype}; expected 8-bit frames")
        if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
            pixels = 255 - pixels
        if pixels.ndim == 2:
            return pixels
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)

    def _close(self) -> None:
        self._close_file()
