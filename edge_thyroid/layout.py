"""Screen layouts: where each modality's pane sits on a captured workstation screen.

A layout names up to three panes (``bmode``, ``smi``, ``swe``), each a rectangle ``[x, y, w, h]`` in
screen pixels, and optionally a nodule ROI inside the B-mode pane (the model was trained on
nodule-centred crops, so when it is given the B-mode input is that box rather than the whole pane).

Layouts come from a preset name (``single``, ``dual``, ``triple``, ``full``) or a YAML/JSON file::

    name: my-workstation
    screen: {width: 1920, height: 1080}   # the screen the ROIs were measured on (optional)
    panes:
      - {modality: bmode, roi: [40, 120, 900, 840]}
      - {modality: swe,   roi: [980, 120, 900, 840]}
    nodule: [300, 400, 320, 280]          # optional, inside the B-mode pane

Scaling rule: a layout with a ``screen`` size is scaled to any frame of the same aspect ratio (within
2%), so the 1920x1080 presets fit a 1280x720 or 3840x2160 capture; another aspect ratio is an error.
Without ``screen`` the ROIs are absolute pixels and must lie inside the frame.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import InputError
from .frames import Pane, Roi, check_roi

MAX_LAYOUT_BYTES = 64 * 1024   # a layout is a few lines; anything bigger is a mistake or an attack
MAX_PANES = 3
ASPECT_TOLERANCE = 0.02
MAX_SCREEN_SIDE = 16384


class Modality(str, Enum):
    BMODE = "bmode"   # grey-scale B-mode
    SMI = "smi"       # superb microvascular imaging (colour flow)
    SWE = "swe"       # shear-wave elastography (colour map, refreshes at 1-2 Hz)

    @classmethod
    def parse(cls, value: object, where: str) -> "Modality":
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise InputError(f"{where}: unknown modality {value!r}; expected one of "
                             f"{[m.value for m in cls]}") from None


@dataclass(frozen=True)
class Layout:
    """Panes on a screen. ``screen`` = (width, height) the ROIs refer to; None = absolute pixels."""

    name: str
    panes: tuple[Pane, ...]
    nodule: Roi | None = None
    screen: tuple[int, int] | None = None
    whole_frame: bool = field(default=False, repr=False)  # the 'full' preset: one pane = the whole frame

    def __post_init__(self) -> None:
        # Panes may be given with plain modality strings; the layout holds them as Modality members.
        where = f"layout {self.name!r}"
        panes = tuple(p if isinstance(p.modality, Modality) else Pane(Modality.parse(p.modality, where), p.roi)
                      for p in self.panes)
        object.__setattr__(self, "panes", panes)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(p.modality.value for p in self.panes)

    def pane(self, modality: Modality | str) -> Pane | None:
        wanted = Modality(modality)
        return next((p for p in self.panes if p.modality is wanted), None)

    def resolve(self, width: int, height: int) -> "Layout":
        """This layout in pixels of a ``width`` x ``height`` frame: scaled if needed, then validated."""
        if width < 1 or height < 1:
            raise InputError(f"frame size {width}x{height} is empty; expected a positive width and height")
        if self.whole_frame:
            return replace(self, panes=(Pane(self.panes[0].modality, (0, 0, width, height)),),
                           screen=(width, height))
        resolved = self
        if self.screen is not None and self.screen != (width, height):
            sw, sh = self.screen
            if abs((width / height) / (sw / sh) - 1.0) > ASPECT_TOLERANCE:
                raise InputError(f"layout {self.name!r} is for a {sw}x{sh} screen; the source gives {width}x{height} "
                                 f"(another aspect ratio); give a layout file measured on this screen")
            sx, sy = width / sw, height / sh
            resolved = replace(self, panes=tuple(Pane(p.modality, _scale(p.roi, sx, sy)) for p in self.panes),
                               nodule=_scale(self.nodule, sx, sy) if self.nodule else None)
        resolved = replace(resolved, screen=(width, height))
        resolved.validate(width, height)
        return resolved

    def validate(self, width: int, height: int) -> None:
        """Every ROI inside the frame, no two panes overlapping, the nodule inside the B-mode pane."""
        for pane in self.panes:
            check_roi(pane.roi, width, height, f"layout {self.name!r}: {pane.modality.value} pane")
        for i, a in enumerate(self.panes):
            for b in self.panes[i + 1:]:
                if _overlap(a.roi, b.roi):
                    raise InputError(f"layout {self.name!r}: the {a.modality.value} pane {list(a.roi)} overlaps the "
                                     f"{b.modality.value} pane {list(b.roi)}; expected separate screen regions")
        if self.nodule is not None:
            bmode = self.pane(Modality.BMODE)
            if bmode is None:
                raise InputError(f"layout {self.name!r} has a nodule ROI but no bmode pane; the nodule ROI lies "
                                 "inside the B-mode pane")
            if not _contains(bmode.roi, self.nodule):
                raise InputError(f"layout {self.name!r}: nodule ROI {list(self.nodule)} is not inside the bmode pane "
                                 f"{list(bmode.roi)}")

    def engine_panes(self) -> list[Pane]:
        """What the model sees: one Pane per modality; the B-mode one is the nodule ROI when given."""
        return [Pane(p.modality.value, self.nodule if (self.nodule and p.modality is Modality.BMODE) else p.roi)
                for p in self.panes]

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"name": self.name,
                                  "panes": [{"modality": p.modality.value, "roi": list(p.roi)} for p in self.panes]}
        if self.screen:
            record["screen"] = {"width": self.screen[0], "height": self.screen[1]}
        if self.nodule:
            record["nodule"] = list(self.nodule)
        return record


def _scale(roi: Roi, sx: float, sy: float) -> Roi:
    x, y, w, h = roi
    # Scale the corners, not the size, so neighbouring panes never grow into each other by rounding.
    x0, y0, x1, y1 = round(x * sx), round(y * sy), round((x + w) * sx), round((y + h) * sy)
    return (x0, y0, max(1, x1 - x0), max(1, y1 - y0))


def _overlap(a: Roi, b: Roi) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _contains(outer: Roi, inner: Roi) -> bool:
    return (outer[0] <= inner[0] and outer[1] <= inner[1] and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


# ---------------------------------------------------------------------------------------------
# Presets, measured on a 1920x1080 screen with a title bar and a side panel, scaled to other sizes.

PRESET_SCREEN = (1920, 1080)
PRESETS: dict[str, Layout] = {
    "single": Layout("single", (Pane(Modality.BMODE, (360, 110, 1200, 900)),), screen=PRESET_SCREEN),
    "dual": Layout("dual", (Pane(Modality.BMODE, (40, 120, 900, 840)),
                            Pane(Modality.SWE, (980, 120, 900, 840))), screen=PRESET_SCREEN),
    "triple": Layout("triple", (Pane(Modality.BMODE, (20, 160, 620, 700)),
                                Pane(Modality.SMI, (650, 160, 620, 700)),
                                Pane(Modality.SWE, (1280, 160, 620, 700))), screen=PRESET_SCREEN),
    "full": Layout("full", (Pane(Modality.BMODE, (0, 0, 1, 1)),), whole_frame=True),
}


def preset(name: str) -> Layout:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown layout preset {name!r}; expected one of {sorted(PRESETS)} or a .yaml/.json file") from None


def load_layout(spec: str | Path | Layout) -> Layout:
    """A preset name, a YAML/JSON layout file, or a Layout (returned as is)."""
    if isinstance(spec, Layout):
        return spec
    text = str(spec)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        if not path.exists():
            raise InputError(f"layout {text!r} is neither a preset {sorted(PRESETS)} nor a .yaml/.json file")
        raise InputError(f"layout file {path} must end in .yaml, .yml or .json")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read layout file {path}: {exc.strerror or exc}") from None
    if size > MAX_LAYOUT_BYTES:
        raise InputError(f"layout file {path} is {size} bytes; a layout is expected to be under {MAX_LAYOUT_BYTES} bytes")
    try:
        raw = path.read_bytes()[:MAX_LAYOUT_BYTES + 1]
        text_content = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read layout file {path}: {exc}; expected UTF-8 YAML or JSON") from None
    return parse_layout(_load_text(text_content, path), origin=str(path), default_name=path.stem)


def _load_text(text: str, path: Path) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"layout file {path} is not valid JSON ({str(exc)[:120]})") from None
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """A layout never needs anchors; refusing aliases stops 'billion laughs' bombs, which expand
        to gigabytes the moment anything walks or prints them."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a layout file",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, RecursionError) as exc:
        raise InputError(f"layout file {path} is not valid YAML ({' '.join(str(exc).split())[:160]})") from None


LAYOUT_KEYS = {"name", "screen", "panes", "nodule"}
PANE_KEYS = {"modality", "roi"}


def parse_layout(data: Any, origin: str = "layout", default_name: str = "custom") -> Layout:
    """Validate a decoded layout document (mapping) into a Layout; every error names the field."""
    if not isinstance(data, Mapping):
        raise InputError(f"{origin}: expected a mapping with 'panes' (and optional name, screen, nodule), "
                         f"got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in LAYOUT_KEYS)
    if unknown:
        raise InputError(f"{origin}: unknown key(s) {unknown}; expected {sorted(LAYOUT_KEYS)}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name or len(name) > 100:
        raise InputError(f"{origin}: name must be a non-empty string of at most 100 characters, got {name!r}"[:200])
    panes_data = data.get("panes")
    if not isinstance(panes_data, Sequence) or isinstance(panes_data, (str, bytes)) or not panes_data:
        raise InputError(f"{origin}: 'panes' must be a non-empty list of {{modality, roi}}")
    if len(panes_data) > MAX_PANES:
        raise InputError(f"{origin}: {len(panes_data)} panes; expected 1 to {MAX_PANES} (bmode, smi, swe)")
    panes: list[Pane] = []
    for number, item in enumerate(panes_data):
        where = f"{origin}: pane {number}"
        if not isinstance(item, Mapping):
            raise InputError(f"{where} must be a mapping with modality and roi, got {type(item).__name__}")
        extra = sorted(str(k) for k in item if k not in PANE_KEYS)
        if extra:
            raise InputError(f"{where}: unknown key(s) {extra}; expected {sorted(PANE_KEYS)}")
        modality = Modality.parse(item.get("modality"), where)
        if any(p.modality is modality for p in panes):
            raise InputError(f"{where}: modality {modality.value!r} appears twice; expected one pane per modality")
        panes.append(Pane(modality, parse_roi(item.get("roi"), f"{where} ({modality.value}) roi")))
    screen = None
    if "screen" in data:
        screen = _parse_screen(data["screen"], origin)
    nodule = parse_roi(data["nodule"], f"{origin}: nodule") if data.get("nodule") is not None else None
    layout = Layout(name, tuple(panes), nodule=nodule, screen=screen)
    if screen is not None:
        layout.validate(*screen)
    else:
        # Absolute pixels: the frame size is checked when the first frame arrives; overlap and the nodule now.
        layout.validate(MAX_SCREEN_SIDE, MAX_SCREEN_SIDE)
    return layout


def parse_roi(value: Any, where: str) -> Roi:
    """[x, y, w, h] (list) or "x,y,w,h" (string) of non-negative integers with w, h >= 1."""
    if isinstance(value, str):
        parts: Any = value.replace(" ", "").split(",")
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise InputError(f"{where}: expected [x, y, w, h], got {type(value).__name__}")
    if len(parts) != 4:
        raise InputError(f"{where}: expected 4 numbers [x, y, w, h], got {len(parts)}")
    numbers = []
    for part in parts:
        if isinstance(part, bool):
            raise InputError(f"{where}: {part!r} is not an integer pixel coordinate")
        try:
            number = int(part) if not isinstance(part, float) or part.is_integer() else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise InputError(f"{where}: {part!r} is not an integer pixel coordinate")
        numbers.append(number)
    x, y, w, h = numbers
    if x < 0 or y < 0 or w < 1 or h < 1 or max(x + w, y + h) > MAX_SCREEN_SIDE:
        raise InputError(f"{where}: [{x}, {y}, {w}, {h}] is not a rectangle on a screen; expected x, y >= 0, "
                         f"w, h >= 1 and x+w, y+h <= {MAX_SCREEN_SIDE}")
    return (x, y, w, h)


def _parse_screen(value: Any, origin: str) -> tuple[int, int]:
    if not isinstance(value, Mapping) or set(value) != {"width", "height"}:
        raise InputError(f"{origin}: 'screen' must be {{width: W, height: H}}, got {value!r}"[:200])
    width, height = value["width"], value["height"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SCREEN_SIDE for v in (width, height)):
        raise InputError(f"{origin}: screen size {width!r}x{height!r} must be integers in 1..{MAX_SCREEN_SIDE}"[:200])
    return (width, height)
