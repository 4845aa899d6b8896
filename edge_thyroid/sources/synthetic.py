"""Synthetic workstation screens: a dark UI with the panes of a layout, each drawn like its modality.

* B-mode: speckled tissue layers with a hypoechoic nodule, moving slightly as a hand-held probe does;
  new speckle every frame (live). Real B-mode crops can be given as content (``content=DIR``).
* SMI: dim tissue with colour-flow vessels that pulse (live).
* SWE: tissue with a colour elasticity box that refreshes at ``swe_hz`` (1-2 Hz on real scanners), so
  between refreshes its pixels are identical, as a pane cache must notice.

Spec: ``synthetic[:PRESET][?key=value&...]`` with keys ``size=WxH`` (default: the layout's screen or
1920x1080), ``fps`` (30), ``swe_hz`` (2), ``frames`` (stop after N), ``freeze=A-B[,C-D]`` (seconds during
which the panes freeze), ``blank=A-B`` (panes black: probe lifted), ``seed``, ``content=DIR`` (B-mode images)
and ``switch`` (seconds per content image, 4). Every frame is a function of its index alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import cv2
import numpy as np

from ..layout import Layout, Modality, load_layout, preset
from .base import Pacer, Source, SourceError

LIVE_VARIANTS = 12        # distinct live pane images cycled (consecutive frames always differ)
SWE_VARIANTS = 6
MOTION_PIXELS = 6         # probe sway, pixels
SYNTHETIC_SPECKLE = 0.45  # relative std of the speckle drawn on synthetic tissue
CONTENT_SPECKLE = 0.06    # ... and added to real B-mode crops
MAX_CONTENT_IMAGES = 16
BACKGROUND = (22, 18, 16)  # BGR of the workstation UI


@dataclass(frozen=True)
class SyntheticSpec:
    preset: str | None = None
    size: tuple[int, int] | None = None
    fps: float = 30.0
    swe_hz: float = 2.0
    frames: int | None = None
    freeze: tuple[tuple[float, float], ...] = ()
    blank: tuple[tuple[float, float], ...] = ()
    seed: int = 0
    content: Path | None = None
    switch_s: float = 4.0

    @classmethod
    def parse(cls, spec: str) -> "SyntheticSpec":
        head, _, query = spec.partition("?")
        scheme, _, name = head.partition(":")
        if scheme != "synthetic":
            raise SourceError(f"{spec!r} is not a synthetic source spec; expected synthetic[:PRESET][?key=value&...]")
        values: dict = {"preset": name or None}
        for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
            try:
                if key == "size":
                    width, height = (int(v) for v in value.lower().split("x"))
                    values["size"] = (width, height)
                elif key in ("fps", "swe_hz", "switch"):
                    number = float(value)
                    if not (math.isfinite(number) and number > 0):
                        raise ValueError
                    values["switch_s" if key == "switch" else key] = number
                elif key in ("frames", "seed"):
                    values[key] = int(value)
                elif key in ("freeze", "blank"):
                    values[key] = tuple(_interval(part) for part in value.split(",") if part)
                elif key == "content":
                    values["content"] = Path(value)
                else:
                    raise SourceError(f"synthetic source: unknown option {key!r}; expected size, fps, swe_hz, frames, "
                                     "freeze, blank, seed, content, switch")
            except ValueError:
                raise SourceError(f"synthetic source: {key}={value!r} is not valid (e.g. size=1920x1080, fps=30, "
                                 "swe_hz=2, frames=300, freeze=2-4, blank=5-6)") from None
        return cls(**values)


def _interval(text: str) -> tuple[float, float]:
    start, _, end = text.partition("-")
    a, b = float(start), float(end)
    if not (0 <= a < b and math.isfinite(b)):
        raise ValueError(text)
    return (a, b)


def _tissue(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Echogenicity (float32, ~0..200): bright skin line, muscle bands, a thyroid lobe with a dark nodule."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    depth = yy / height
    base = 70 + 50 * np.exp(-((depth - 0.05) / 0.03) ** 2)                  # skin / fascia
    base += 25 * np.sin(yy / rng.uniform(9, 15)) * np.cos(xx / rng.uniform(30, 50))  # muscle striation
    lobe = ((xx - width * 0.5) / (width * 0.42)) ** 2 + ((yy - height * 0.55) / (height * 0.3)) ** 2 < 1
    base = np.where(lobe, 105, base)
    cy, cx = height * rng.uniform(0.5, 0.6), width * rng.uniform(0.42, 0.58)
    ry, rx = height * rng.uniform(0.1, 0.15), width * rng.uniform(0.12, 0.18)
    nodule = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    base = np.where(nodule < 1, 45 + 10 * np.sin(xx / 5.0), base)
    base = np.where((nodule >= 1) & (nodule < 1.15), 150, base)              # halo
    base *= np.clip(1.15 - 0.6 * depth, 0.3, 1.0)                             # attenuation with depth
    return base.astype(np.float32)


def _speckle(tissue: np.ndarray, rng: np.random.Generator, height: int, width: int, dy: int, dx: int,
             strength: float) -> np.ndarray:
    """A window of ``tissue`` times correlated speckle of relative std ``strength``."""
    window = tissue[dy:dy + height, dx:dx + width]
    # Real speckle is correlated over a resolution cell, longer laterally than axially.
    noise = cv2.GaussianBlur(rng.standard_normal((height, width), dtype=np.float32), (0, 0), 1.6, sigmaY=0.8)
    noise = 1.0 + noise * (strength / max(float(noise.std()), 1e-6))
    return np.clip(window * noise, 0, 255).astype(np.uint8)


class PaneArt:
    """Precomputed images of one pane; ``image(t)`` picks the one showing at time t (seconds)."""

    def __init__(self, modality: Modality, width: int, height: int, spec: SyntheticSpec, seed: int,
                 content: list[np.ndarray]) -> None:
        self.modality, self.width, self.height, self.spec = modality, width, height, spec
        self.rng = np.random.default_rng(seed)
        self.content = content
        self._cache: dict[int, list[np.ndarray]] = {}

    def _variants(self, key: int) -> list[np.ndarray]:
        if key not in self._cache:
            self._cache[key] = self._draw(key)
        return self._cache[key]

    def _draw(self, key: int) -> list[np.ndarray]:
        h, w, m = self.height, self.width, MOTION_PIXELS
        if self.content:
            tissue = cv2.resize(self.content[key % len(self.content)], (w + 2 * m, h + 2 * m),
                                interpolation=cv2.INTER_LINEAR).astype(np.float32)
        else:
            tissue = _tissue(h + 2 * m, w + 2 * m, self.rng)
        count = SWE_VARIANTS if self.modality is Modality.SWE else LIVE_VARIANTS
        out = []
        for k in range(count):
            phase = 2 * math.pi * k / count
            dy, dx = int(round(m + m * math.sin(phase))), int(round(m + m * math.cos(phase)))
            # Real crops already carry speckle: only its frame-to-frame decorrelation is added to them.
            gray = _speckle(tissue, self.rng, h, w, dy, dx, CONTENT_SPECKLE if self.content else SYNTHETIC_SPECKLE)
            if self.modality is Modality.BMODE:
                out.append(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))  # 3 channels: pasting is a plain copy
            elif self.modality is Modality.SMI:
                out.append(self._flow(gray, phase))
            else:
                out.append(self._elasticity(gray))
        return out

    def _flow(self, gray: np.ndarray, phase: float) -> np.ndarray:
        """Dim tissue with pulsing red/orange vessels (colour flow)."""
        image = cv2.cvtColor((gray * 0.6).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        h, w = gray.shape
        pulse = 0.6 + 0.4 * math.sin(phase)
        for v in range(5):
            y0 = int(h * (0.3 + 0.1 * v)) + int(3 * math.sin(phase + v))
            pts = np.array([[int(w * 0.2 + w * 0.6 * s), y0 + int(h * 0.05 * math.sin(6 * s + v))]
                            for s in np.linspace(0, 1, 12)], dtype=np.int32)
            color = (0, int(60 + 120 * pulse), int(200 + 55 * pulse)) if v % 2 == 0 else (int(200 * pulse), 60, 0)
            cv2.polylines(image, [pts], False, color, max(2, w // 120), cv2.LINE_AA)
        return image

    def _elasticity(self, gray: np.ndarray) -> np.ndarray:
        """Tissue with a colour stiffness map in a box (kPa coded blue = soft .. red = stiff)."""
        image = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        h, w = gray.shape
        y0, y1, x0, x1 = int(h * 0.3), int(h * 0.8), int(w * 0.2), int(w * 0.8)
        stiffness = cv2.GaussianBlur(self.rng.random((y1 - y0, x1 - x0), dtype=np.float32), (0, 0), max(2.0, w / 40))
        stiffness = cv2.normalize(stiffness, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        colored = cv2.applyColorMap(stiffness, cv2.COLORMAP_JET)
        image[y0:y1, x0:x1] = cv2.addWeighted(image[y0:y1, x0:x1], 0.35, colored, 0.65, 0)
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 1)
        return image

    def image(self, t: float, fps: float) -> np.ndarray:
        key = int(t // self.spec.switch_s) if self.content else 0
        variants = self._variants(key)
        if self.modality is Modality.SWE:
            return variants[int(math.floor(t * self.spec.swe_hz + 1e-9)) % len(variants)]
        return variants[int(round(t * fps)) % len(variants)]


def load_content(folder: Path) -> list[np.ndarray]:
    from .folder import IMAGE_SUFFIXES, natural_key

    if not folder.is_dir():
        raise SourceError(f"synthetic source: content folder {folder} does not exist")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
    images = [img for img in (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files[:MAX_CONTENT_IMAGES])
              if img is not None]
    if not images:
        raise SourceError(f"synthetic source: content folder {folder} holds no readable images")
    return images


class SyntheticSource(Source):
    """Composes screens of ``options.layout`` (else the spec's preset, else ``dual``)."""

    kind = "synthetic"

    def __init__(self, target: str, options=None, content: list[np.ndarray] | None = None,
                 title: str = "edge-thyroid synthetic") -> None:
        super().__init__(target, options)
        self.spec = SyntheticSpec.parse(target)
        self.content = content
        self.title = title

    def _open(self) -> None:
        spec, opts = self.spec, self.options
        layout = opts.layout or (load_layout(spec.preset) if spec.preset else preset("dual"))
        width, height = spec.size or opts.size or layout.screen or (1920, 1080)
        self.layout: Layout = layout.resolve(width, height)
        self.width, self.height = width, height
        content = self.content if self.content is not None else (load_content(spec.content) if spec.content else [])
        self.art = [PaneArt(p.modality, p.roi[2], p.roi[3], spec, spec.seed * 31 + i, content if
                            p.modality is Modality.BMODE else []) for i, p in enumerate(self.layout.panes)]
        for art in self.art:
            art.image(0.0, self.fps)  # draw the first images now, not inside the first frame's capture time
        self.background = self._background()
        self.pacer = Pacer(self.interrupt)

    @property
    def fps(self) -> float | None:
        return self.options.fps or self.spec.fps

    @property
    def layout_hint(self) -> Layout | None:
        return getattr(self, "layout", None)

    def _background(self) -> np.ndarray:
        frame = np.empty((self.height, self.width, 3), dtype=np.uint8)
        frame[:] = BACKGROUND
        scale = max(0.35, self.height / 1080)
        frame[: max(8, int(40 * scale))] = (48, 40, 34)   # title bar
        for pane in self.layout.panes:
            x, y, w, h = pane.roi
            label = {"bmode": "B-mode", "smi": "SMI", "swe": "SWE  kPa"}[pane.modality.value]
            cv2.putText(frame, label, (x, max(12, y - int(10 * scale))), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale,
                        (200, 200, 200), 1, cv2.LINE_AA)
        return frame

    def frame_at(self, index: int) -> np.ndarray:
        """The screen of frame ``index`` (deterministic)."""
        fps = self.fps
        t = index / fps
        shown = t
        for start, end in self.spec.freeze:
            if start <= t < end:
                shown = start
        blank = any(start <= t < end for start, end in self.spec.blank)
        frame = self.background.copy()
        scale = max(0.35, self.height / 1080)
        cv2.putText(frame, f"{self.title}  {self.layout.name}  t={t:7.2f}s", (int(12 * scale),
                    int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, (230, 230, 230), 1, cv2.LINE_AA)
        for pane, art in zip(self.layout.panes, self.art):
            x, y, w, h = pane.roi
            if blank:
                frame[y:y + h, x:x + w] = 0
                continue
            image = art.image(shown, fps)
            frame[y:y + h, x:x + w] = image
        return frame

    def _read(self) -> tuple[np.ndarray, float, float] | None:
        if self.spec.frames is not None and self.index >= self.spec.frames:
            return None
        arrival = self.pacer.wait(self.index / self.fps if self.options.realtime else None)
        start = time.monotonic()
        frame = self.frame_at(self.index)
        return frame, arrival, (time.monotonic() - start) * 1000.0

    def _close(self) -> None:
        self.art = []
