"""Real-time streaming: capture thread -> latest-frame slot -> classify step -> sinks.

=================  ===========================================================================
module             job
=================  ===========================================================================
``pipeline``       :class:`Pipeline`: wires the parts, runs the loop, stops on request or signal
``capture``        the capture thread; reopens a failed live source (:class:`ReconnectPolicy`)
``slot``           :class:`LatestFrameSlot`: latest frame wins (or lossless: capture waits)
``cache``          :class:`PaneCache`: re-run only the panes whose pixels changed
``classify``       one frame -> :class:`StreamResult` (cache, ``Engine.fuse``, temporal logic)
``nodule``         which nodule box a frame is classified on (layout, control, calipers, tracked)
``stats``          latency histograms and counts -> :class:`StreamSummary`
``records``        the typed records: frame (:class:`StreamResult`), :class:`GapRecord`, summary
``fanout``         every record to every sink, each on its own thread
=================  ===========================================================================

Names are resolved lazily, so ``edge_thyroid.stream.records`` (imported by the sinks) does not pull
in the pipeline, which imports the sinks.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Pipeline": "pipeline", "PipelineConfig": "pipeline", "ReconnectPolicy": "capture",
    "LatestFrameSlot": "slot", "PaneCache": "cache", "LatencyHistogram": "stats", "STAGES": "stats",
    "StreamResult": "records", "PaneRecord": "records", "GapRecord": "records", "StreamSummary": "records",
    "ControlRecord": "records", "NoduleBox": "nodule",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


__all__ = sorted(_EXPORTS)
