"""Temporal logic over the per-frame p(malignant): smoothing, hysteresis, abstention.

A single frame's probability flickers with speckle and probe motion; a clinician needs a reading
that holds still while the image does and says so when it cannot be trusted:

* smoothing: an exponential moving average with a time constant (frames arrive irregularly when a
  slow model drops some, so the weight of a new sample depends on the time since the last one), or
  the mean of the last N processed frames, or none;
* hysteresis: the decision flips to malignant only when the smoothed p rises ``margin`` above the
  threshold and back to benign only when it falls ``margin`` below it;
* abstention (decision ``abstain`` with a reason): a blank screen (probe lifted), a frozen screen
  (nothing changed for ``frozen_after_s``; off by default, since a freeze is when the sonographer
  reviews and measures), no nodule box (``no_roi``) or a lost one (``roi_lost``), an unstable reading (raw p's standard deviation over the
  recent window above ``unstable_std``) or an invalid frame. A blank or invalid frame resets the
  smoothing: what follows is probably another view or another nodule.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum

from .errors import InputError


class Smoothing(str, Enum):
    EMA = "ema"
    WINDOW = "window"
    NONE = "none"


class Decision(str, Enum):
    BENIGN = "benign"
    MALIGNANT = "malignant"
    ABSTAIN = "abstain"


class Reason(str, Enum):
    BLANK = "blank"        # the B-mode pane (or every pane) is uniform: no image
    FROZEN = "frozen"      # no pane changed for frozen_after_s
    UNSTABLE = "unstable"  # raw p swings too much to report
    INVALID = "invalid"    # the frame could not be classified (bad size, non-finite output, ...)
    NO_ROI = "no_roi"      # no nodule box (layout, control channel or calipers): no answer on a whole pane
    ROI_LOST = "roi_lost"  # the operator's box could not be followed: the view changed too much
    SERVER_UNAVAILABLE = "server_unavailable"  # the remote inference server did not answer in time
    UNFAMILIAR = "unfamiliar"  # the B-mode pane is unlike the model's training crops (--abstain-unfamiliar)


@dataclass(frozen=True)
class TemporalConfig:
    smoothing: Smoothing = Smoothing.EMA
    tau_s: float = 0.5              # EMA time constant, seconds
    window: int = 8                 # frames averaged by Smoothing.WINDOW
    margin: float = 0.05            # hysteresis half-width around the threshold, in p units
    unstable_std: float = 0.2       # abstain when std(raw p) over the last unstable_window frames exceeds this
    unstable_window: int = 10
    frozen_after_s: float = 0.0     # abstain once nothing changed for this long (0: never: a freeze is a review)

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.tau_s, self.margin, self.unstable_std, self.frozen_after_s)):
            raise InputError(f"temporal settings must be finite numbers, got {self}")
        checks = [(self.tau_s > 0, f"EMA time constant {self.tau_s} s must be > 0"),
                  (self.window >= 1, f"smoothing window {self.window} must be >= 1 frame"),
                  (0 <= self.margin < 0.5, f"hysteresis margin {self.margin} must be in [0, 0.5)"),
                  (self.unstable_std > 0, f"unstable std {self.unstable_std} must be > 0"),
                  (self.unstable_window >= 2, f"unstable window {self.unstable_window} must be >= 2 frames"),
                  (self.frozen_after_s >= 0, f"frozen-after {self.frozen_after_s} s must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise InputError(message)


@dataclass(frozen=True)
class TemporalResult:
    p_smoothed: float | None
    decision: Decision
    reason: Reason | None = None
    detail: str | None = None


class TemporalFilter:
    """Feed one processed frame at a time with ``update``; ``reset`` forgets the history."""

    def __init__(self, threshold: float, config: TemporalConfig | None = None) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"decision threshold {threshold} is not a probability in [0, 1]")
        self.threshold = threshold
        self.config = config or TemporalConfig()
        self.reset()

    def reset(self) -> None:
        self.smoothed: float | None = None
        self.state: Decision | None = None     # last non-abstain decision, for hysteresis
        self.last_time: float | None = None
        self.window: deque[float] = deque(maxlen=self.config.window)
        self.recent: deque[float] = deque(maxlen=self.config.unstable_window)

    def _smooth(self, timestamp: float, p: float) -> float:
        cfg = self.config
        if cfg.smoothing is Smoothing.NONE or self.smoothed is None:
            self.smoothed = p
        elif cfg.smoothing is Smoothing.EMA:
            dt = max(0.0, timestamp - (self.last_time if self.last_time is not None else timestamp))
            alpha = 1.0 - math.exp(-dt / cfg.tau_s)
            self.smoothed += alpha * (p - self.smoothed)
        self.window.append(p)
        if cfg.smoothing is Smoothing.WINDOW:
            self.smoothed = math.fsum(self.window) / len(self.window)
        self.last_time = timestamp
        return self.smoothed

    def _decide(self, p: float) -> Decision:
        high, low = self.threshold + self.config.margin, self.threshold - self.config.margin
        if self.state is None:
            self.state = Decision.MALIGNANT if p >= self.threshold else Decision.BENIGN
        elif self.state is Decision.BENIGN and p >= high:
            self.state = Decision.MALIGNANT
        elif self.state is Decision.MALIGNANT and p < low:
            self.state = Decision.BENIGN
        return self.state

    def abstain(self, reason: Reason, detail: str | None = None) -> TemporalResult:
        """A frame without a usable p: blank and invalid frames, and frames without a nodule box, also
        forget the history (what follows is probably another view or another nodule)."""
        if reason in (Reason.BLANK, Reason.INVALID, Reason.NO_ROI, Reason.ROI_LOST):
            self.reset()
        return TemporalResult(self.smoothed, Decision.ABSTAIN, reason, detail)

    def update(self, timestamp: float, p: float, *, frozen_for_s: float = 0.0) -> TemporalResult:
        """One processed frame's raw p (captured at ``timestamp``, monotonic seconds)."""
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            return self.abstain(Reason.INVALID, f"p(malignant) = {p} is not a probability")
        smoothed = self._smooth(timestamp, p)
        self.recent.append(p)
        decision = self._decide(smoothed)
        cfg = self.config
        if cfg.frozen_after_s > 0 and frozen_for_s >= cfg.frozen_after_s:
            return TemporalResult(smoothed, Decision.ABSTAIN, Reason.FROZEN,
                                  f"no pane changed for {frozen_for_s:.1f} s")
        if len(self.recent) >= min(5, cfg.unstable_window):
            mean = math.fsum(self.recent) / len(self.recent)
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in self.recent) / len(self.recent))
            if std > cfg.unstable_std:
                return TemporalResult(smoothed, Decision.ABSTAIN, Reason.UNSTABLE,
                                      f"std of p over the last {len(self.recent)} frames is {std:.2f}")
        return TemporalResult(smoothed, decision)
