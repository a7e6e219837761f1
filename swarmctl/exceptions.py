"""Errors swarmctl reports to a user as one line."""

from __future__ import annotations


class SwarmError(Exception):
    """Base class: the message is shown to the user as it is."""


class ConfigError(SwarmError):
    """The configuration file or an override is malformed."""


class InvalidAtom(SwarmError, ValueError):
    """A string is not a valid Gentoo CPV or atom."""


class BackendUnavailable(SwarmError):
    """Redis cannot be reached."""


class NotEnrolled(SwarmError):
    """A drone name or token is unknown or revoked: the one answer to every failed drone authentication."""


class Grounded(SwarmError):
    """The drone is grounded by its circuit breaker until ``until`` (epoch seconds, Redis clock)."""

    def __init__(self, until: float) -> None:
        super().__init__(f"grounded until {until:.0f}")
        self.until = until

    def __reduce__(self) -> tuple[type[Grounded], tuple[float]]:
        return Grounded, (self.until,)  # picklable across processes


class NoSuchJob(SwarmError):
    """No job with that CPV is queued."""
