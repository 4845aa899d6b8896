"""A live browser view of a stream: the overlay, p(malignant) over the last minute, abstain reasons,
latency and drops (``edge-thyroid stream --view``, ``edge-thyroid demo``)."""

from .server import ViewServer, parse_address
from .sink import ViewSink
from .state import ViewState

__all__ = ["ViewServer", "ViewSink", "ViewState", "parse_address"]
