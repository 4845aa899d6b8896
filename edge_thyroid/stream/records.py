"""The stream's records: what a frame, a source gap and the whole stream produce.

The producer (the stream) and the consumers (sinks, benchmarks) both import this module, and it
imports neither. ``record()`` gives the JSONL object; its ``"type"`` is header (first line: what ran,
on what, with which settings), frame, gap, control (a control-channel change), or summary (last line,
also after Ctrl-C/SIGTERM). docs/stream-records.schema.json describes them; :data:`FORMAT_VERSION` is
in the header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..frames import Roi
from ..familiarity import Familiarity
from ..temporal import Decision, Reason

if TYPE_CHECKING:
    from ..engine import Prediction


# 2: a header and a summary record around the frames; untrained panes carry "status" instead of p.
FORMAT_VERSION = 2


def rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


@dataclass
class PaneRecord:
    """One pane of a frame record: where it was, whether its features came from the cache, whether it
    was blank, and its contribution to the fused logit."""

    modality: str
    roi: Roi
    cached: bool
    blank: bool
    logit: float | None = None   # this pane's contribution to the fused logit
    p: float | None = None       # p(malignant) from this pane alone: sigmoid(bias + contribution)
    trained: bool = True         # False: the model never learned this modality; it has no p of its own

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"modality": self.modality, "roi": list(self.roi), "cached": self.cached,
                                  "blank": self.blank}
        if not self.trained:
            return {**record, "status": "untrained"}
        return {**record, "logit": rounded(self.logit), "p": rounded(self.p)}


@dataclass
class StreamResult:
    """One processed frame: timings, panes, p and the smoothed decision (or abstention with its reason),
    and the stream's counters at that moment. ``image``/``prediction`` are kept only for sinks that draw."""

    frame: int
    capture_ts: float
    wall_time: float
    stages_ms: dict[str, float]
    total_ms: float
    panes: list[PaneRecord]
    p: float | None
    logit: float | None
    p_smoothed: float | None
    decision: Decision
    reason: Reason | None
    detail: str | None
    threshold: float
    processed: int
    dropped: int
    cache_hits: int
    gaps: int
    result_time: float
    roi: Roi | None = None             # the nodule box classified, frame pixels (None: none)
    roi_source: str | None = None      # layout, control, calipers, tracked or whole_pane
    model_roi: Roi | None = None       # what the model saw: roi grown by the bundle's box context, in its pane
    frozen: bool = False               # the B-mode pane did not change since the previous frame
    calipers: list[dict[str, Any]] = field(default_factory=list)   # the marks behind a calipers box
    media_ts: float | None = None      # seconds into the recording (file/DICOM sources); None when live
    familiarity: Familiarity | None = None   # the B-mode pane against the bundle's training crops (None: not checked)
    prevalence: float | None = None    # the share of malignant nodules p and threshold are read at (None: the model's own)
    image: np.ndarray | None = field(default=None, repr=False)
    prediction: Prediction | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        latency = {k: round(v, 3) for k, v in self.stages_ms.items()}
        latency["total"] = round(self.total_ms, 3)
        return {"type": "frame", "frame": self.frame, "capture_ts": round(self.capture_ts, 6),
                "wall_time": round(self.wall_time, 3), "latency_ms": latency,
                "panes": [p.to_dict() for p in self.panes], "p": rounded(self.p), "logit": rounded(self.logit),
                "p_smoothed": rounded(self.p_smoothed), "decision": self.decision.value,
                "reason": self.reason.value if self.reason else None, "detail": self.detail,
                "threshold": self.threshold, "processed": self.processed, "dropped_so_far": self.dropped,
                "cache_hits": self.cache_hits, "gaps": self.gaps,
                "roi": list(self.roi) if self.roi is not None else None, "roi_source": self.roi_source,
                "model_roi": list(self.model_roi) if self.model_roi is not None else None,
                "frozen": self.frozen, "calipers": self.calipers,
                "media_ts": round(self.media_ts, 6) if self.media_ts is not None else None,
                "familiarity": self.familiarity.to_dict() if self.familiarity is not None else None}


@dataclass(frozen=True)
class HeaderRecord:
    """The first record: what ran (engine, bundle, model, backend), on what (source, layout) and with
    which settings (threshold, temporal logic), and when it started (UTC, ISO 8601)."""

    started_utc: str
    engine: dict[str, Any]       # Engine.identity(): version, bundle, model, backend (+ auto's choice), threads
    layout: dict[str, Any]       # Layout.to_dict(): the panes' ROIs as configured
    source: dict[str, Any]       # kind, description, fps
    threshold: float
    temporal: dict[str, Any]     # TemporalConfig as plain values
    probability: dict[str, Any] | None = None   # Prevalence.to_dict() when p is read at a site's share; None: the model's own

    def record(self) -> dict[str, Any]:
        return {"type": "header", "format_version": FORMAT_VERSION, "engine_version": self.engine["version"],
                "started_utc": self.started_utc, "bundle": self.engine["bundle"], "model": self.engine["model"],
                "backend": self.engine["backend"], "backend_auto": self.engine.get("backend_auto"),
                "threads": self.engine["threads"], "layout": self.layout,
                "source": self.source, "threshold": self.threshold, "temporal": self.temporal,
                "probability": self.probability}


@dataclass(frozen=True)
class GapRecord:
    """A live source failed and was reopened (``resumed``) or given up on; or (``kind`` "server") a
    remote inference server did not answer for a while, each frame meanwhile an abstention
    (``attempts``: those frames). Times are time.monotonic()."""

    start_ts: float
    end_ts: float
    attempts: int
    resumed: bool
    reason: str                 # the failure that started the gap
    last_error: str | None      # the last reopen failure, when the source did not come back
    frames_before: int          # frames captured (source) or processed (server) before the gap
    wall_time: float
    kind: str = "source"        # "source": the capture failed; "server": the inference server did not answer

    @property
    def duration_s(self) -> float:
        return self.end_ts - self.start_ts

    def text(self) -> str:
        if self.kind == "server":
            state = "back" if self.resumed else "still away"
            return (f"inference server {state} after a {self.duration_s:.1f} s gap ({self.attempts} frames "
                    f"abstained): {self.reason}")
        state = "resumed" if self.resumed else "lost"
        return f"source {state} after a {self.duration_s:.1f} s gap ({self.attempts} reopen attempts): {self.reason}"

    def record(self) -> dict[str, Any]:
        return {"type": "gap", "start_ts": round(self.start_ts, 6), "end_ts": round(self.end_ts, 6),
                "duration_s": round(self.duration_s, 3), "attempts": self.attempts, "resumed": self.resumed,
                "reason": self.reason, "last_error": self.last_error, "frames_before": self.frames_before,
                "wall_time": round(self.wall_time, 3), "kind": self.kind}


@dataclass(frozen=True)
class ControlRecord:
    """A message from the control channel, taken before frame ``frame``: applied from that frame on,
    or refused (``error``) when it no longer fitted the screen."""

    frame: int
    change: dict[str, Any]
    applied: bool
    error: str | None
    wall_time: float

    def text(self) -> str:
        what = ", ".join(f"{k} {v if k != 'layout' else v.get('name')}" for k, v in self.change.items())
        return (f"control: {what} from frame {self.frame}" if self.applied
                else f"control: {what} refused: {self.error}")

    def record(self) -> dict[str, Any]:
        return {"type": "control", "frame": self.frame, "change": self.change, "applied": self.applied,
                "error": self.error, "wall_time": round(self.wall_time, 3)}


@dataclass
class StreamSummary:
    source: str
    layout: str
    frames: int = 0                 # captured
    processed: int = 0
    dropped: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    abstained: dict[str, int] = field(default_factory=dict)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: dict[str, Any] = field(default_factory=dict)     # capture-to-result
    stages_ms: dict[str, Any] = field(default_factory=dict)      # per stage
    seconds: float = 0.0
    stopped_by: str = "end of source"
    sink_dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def cache_hit_rate(self) -> float | None:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else None

    def to_dict(self) -> dict[str, Any]:
        record = dict(self.__dict__)
        record["cache_hit_rate"] = rounded(self.cache_hit_rate, 4)
        record["capture_fps"] = rounded(self.frames / self.seconds if self.seconds else None, 2)
        record["processed_fps"] = rounded(self.processed / self.seconds if self.seconds else None, 2)
        return {"type": "summary", **record}

    def record(self) -> dict[str, Any]:
        return self.to_dict()

    def text(self) -> str:
        lat = self.latency_ms
        rate = self.cache_hit_rate
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        lines = [f"stream {self.source} ({self.layout} layout): stopped by {self.stopped_by} after {self.seconds:.1f} s",
                 f"  frames {self.frames}, processed {self.processed}, dropped {self.dropped}, pane cache hits "
                 f"{self.cache_hits}/{self.cache_hits + self.cache_misses}"
                 + (f" ({100 * rate:.0f}%)" if rate is not None else ""),
                 f"  capture-to-result latency p50 {fmt(lat.get('p50'))} ms, p90 {fmt(lat.get('p90'))} ms, "
                 f"p99 {fmt(lat.get('p99'))} ms, max {fmt(lat.get('max'))} ms",
                 "  stage p50 (ms): " + ", ".join(f"{k} {fmt(v.get('p50'))}" for k, v in self.stages_ms.items()),
                 "  decisions: " + (", ".join(f"{k} {v}" for k, v in sorted(self.decisions.items())) or "none")
                 + ("; abstained: " + ", ".join(f"{k} {v}" for k, v in sorted(self.abstained.items()))
                    if self.abstained else "")]
        if self.last:
            p, smoothed = self.last.get("p"), self.last.get("p_smoothed")
            lines.append(f"  last frame {self.last.get('frame')}: p {'-' if p is None else f'{p:.3f}'}, smoothed "
                         f"{'-' if smoothed is None else f'{smoothed:.3f}'} -> {self.last.get('decision')}")
        for gap in self.gaps:
            tries = "frames abstained, server unavailable" if gap.get("kind") == "server" else "reopen attempts"
            lines.append(f"  gap: {gap['duration_s']:.1f} s, {gap['attempts']} {tries}, "
                         f"{'resumed' if gap['resumed'] else 'not resumed'}: {gap['reason']}")
        if any(self.sink_dropped.values()):
            lines.append("  sink records dropped (sink too slow): "
                         + ", ".join(f"{k} {v}" for k, v in self.sink_dropped.items() if v))
        lines += [f"  note: {n}" for n in self.notes]
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)
