"""Stream statistics: bounded-memory latency distributions and the counts the summary reports."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .records import GapRecord, StreamResult, StreamSummary, rounded

# The per-frame stages, in the order they run (the JSONL's latency_ms keys and the summary's):
# capture = decoding the frame, wait = in the slot until the model took it, preprocess = the pane
# checks that decide what runs (change and blank detection; the pixels' crop/resize/normalise is
# fused into the model, so it is inside infer), infer = the backbone on the changed panes, head =
# fusion and CAM inputs, temporal = smoothing, hysteresis and abstention.
STAGES = ("capture", "wait", "preprocess", "infer", "head", "temporal")


def percentile(samples: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks.

    Written out rather than delegated so the definition the reports quote is the one in this file.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    values = sorted(float(v) for v in samples)
    if not values:
        raise ValueError("percentile of no samples")
    rank = (len(values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


class LatencyHistogram:
    """Bounded-memory latency distribution: log-spaced bins 0.01 ms .. 1000 s, ~0.9% wide, so an
    hours-long stream keeps a fixed footprint. Percentiles are bin midpoints (geometric): within a bin
    of :func:`percentile` over the raw samples, which a stream cannot keep."""

    LOW, HIGH, BINS = 1e-2, 1e6, 2000

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS + 2, dtype=np.int64)   # + underflow and overflow bins
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0
        self._log_low = math.log(self.LOW)
        self._scale = self.BINS / (math.log(self.HIGH) - self._log_low)

    def add(self, value_ms: float) -> None:
        if not math.isfinite(value_ms):
            return
        if value_ms <= self.LOW:
            index = 0
        else:
            index = min(self.BINS + 1, 1 + int((math.log(value_ms) - self._log_low) * self._scale))
        self.counts[index] += 1
        self.count += 1
        self.total += value_ms
        self.maximum = max(self.maximum, value_ms)

    def percentile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        rank = q / 100.0 * (self.count - 1)
        index = int(np.searchsorted(np.cumsum(self.counts), rank, side="right"))
        if index == 0:
            return self.LOW
        if index > self.BINS:
            return self.maximum
        return min(self.maximum, math.exp(self._log_low + (index - 0.5) / self._scale))

    def summary(self) -> dict[str, float | int | None]:
        return {"count": self.count, "mean": rounded(self.total / self.count if self.count else None, 3),
                **{f"p{q:g}": rounded(self.percentile(q), 3) for q in (50, 90, 99)},
                "max": rounded(self.maximum if self.count else None, 3)}


class StreamStats:
    """What the stream counts as it runs: latencies (overall and per stage), decisions, abstentions,
    source gaps and the last result; ``summary`` turns them into the :class:`StreamSummary`."""

    def __init__(self) -> None:
        self.processed = 0
        self.latency = LatencyHistogram()
        self.stage_latency = {stage: LatencyHistogram() for stage in STAGES}
        self.decisions: Counter[str] = Counter()
        self.abstained: Counter[str] = Counter()
        self.gaps: list[GapRecord] = []
        self.last: StreamResult | None = None

    def add(self, result: StreamResult) -> None:
        self.latency.add(result.total_ms)
        for stage, value in result.stages_ms.items():
            self.stage_latency[stage].add(value)
        self.decisions[result.decision.value] += 1
        if result.reason is not None:
            self.abstained[result.reason.value] += 1
        self.last = result

    def summary(self, **stream: object) -> StreamSummary:
        """The summary; ``stream`` gives what the stream itself knows (source, layout, frames, dropped,
        cache counts, seconds, stopped_by, sink_dropped, notes, error)."""
        last = {}
        if self.last is not None:
            last = {"frame": self.last.frame, "p": self.last.p, "p_smoothed": self.last.p_smoothed,
                    "decision": self.last.decision.value}
        return StreamSummary(processed=self.processed, decisions=dict(self.decisions),
                             abstained=dict(self.abstained), gaps=[g.record() for g in self.gaps],
                             latency_ms=self.latency.summary(),
                             stages_ms={k: v.summary() for k, v in self.stage_latency.items()}, last=last,
                             **stream)  # type: ignore[arg-type]
