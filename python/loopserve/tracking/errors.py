"""Errors of the tracking area."""

from loopserve.errors import LoopserveError


class TrackingError(LoopserveError):
    """A tracking call was given something it cannot record."""


class RunNotFound(TrackingError, LookupError):
    """No run has this id (or the prefix matches none or several)."""
