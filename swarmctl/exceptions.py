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
    """A drone name or token is unknown or revoked."""


class NoSuchJob(SwarmError):
    """No job with that CPV is queued."""
