"""A folder of still images (PNG, JPEG, BMP, TIFF, WebP), replayed in name order as a stream."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..frames import read_image
from .base import Pacer, Source, SourceError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
DEFAULT_FPS = 30.0


def natural_key(path: Path) -> list[object]:
    """frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class FolderSource(Source):
    kind = "folder"

    def _open(self) -> None:
        folder = Path(self.target)
        if not folder.is_dir():
            raise SourceError(f"image folder {folder} does not exist")
        self.files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                            key=natural_key)
        if not self.files:
            raise SourceError(f"image folder {folder} holds no images; expected files ending in "
                              f"{', '.join(sorted(IMAGE_SUFFIXES))}")
        self.pacer = Pacer(self.interrupt)
        self.position = 0
        self.skipped: set[Path] = set()

    @property
    def fps(self) -> float | None:
        return self.options.fps or DEFAULT_FPS

    def _read(self) -> tuple[np.ndarray, float, float] | None:
        while True:
            if self.position >= len(self.files):
                if not self.options.loop or len(self.skipped) == len(self.files):
                    return None
                self.position = 0
            path = self.files[self.position]
            self.position += 1
            if path in self.skipped:
                continue
            arrival = self.pacer.wait(self.index / self.fps if self.options.realtime else None)
            start = time.monotonic()
            frame = self._decode(path)
            if frame is None:
                continue
            return frame, arrival, (time.monotonic() - start) * 1000.0

    def _decode(self, path: Path) -> np.ndarray | None:
        """The image, or None (noted once, with why) for a file that is not a complete image; a folder
        of stills keeps going."""
        try:
            return read_image(path)
        except InputError as exc:
            self.skipped.add(path)
            self.notes.append(f"skipped {path.name}: {exc}")
            return None

    def _close(self) -> None:
        self.files = []
