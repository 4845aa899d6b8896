"""Errors that say what was received and what was expected, in one line.

The CLI turns any :class:`EdgeThyroidError` into ``error: <message>`` and a non-zero exit code.
"""

from __future__ import annotations


class EdgeThyroidError(Exception):
    """Base class: a problem the user can fix (bad input, bad bundle, missing optional package)."""

    exit_code = 2


class BundleError(EdgeThyroidError):
    """The model bundle is missing, corrupt, tampered with, or of an unsupported format."""


class InputError(EdgeThyroidError):
    """A frame, ROI, modality or data file does not match what the model expects."""


class BackendError(EdgeThyroidError):
    """An inference backend cannot be created or run (e.g. an optional package is missing)."""


class MissingDependencyError(BackendError):
    """An optional package is not installed; the message says how to install it."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(f"{package} is not installed ({purpose} needs it): pip install 'edge-thyroid[{extra}]'")
        self.package = package
        self.extra = extra


class ServerUnavailableError(BackendError):
    """A remote inference server did not answer in time (down, restarting, unreachable).

    A stream abstains with reason ``server_unavailable`` for the frame and carries on; the backend
    retries the server with back-off."""


class ServerError(EdgeThyroidError):
    """The inference server cannot be found, started, built for or reached."""
