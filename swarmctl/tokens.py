"""Drone tokens: made once at enrollment, stored and compared only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import re
import secrets

from swarmctl.exceptions import SwarmError

#: A pre-generated token: printable, no whitespace (it lives in YAML), long enough to be a secret.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_.~+/=-]{32,256}")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def validate_token(token: str) -> str:
    """A pre-generated token (``drone enroll --token-file``): 32 to 256 characters, no whitespace."""
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise SwarmError("invalid token: it must be 32 to 256 characters from A-Z a-z 0-9 - _ . ~ + / =")
    return token


def token_sha(token: str) -> str:
    """The digest kept in Redis; the scripts compare digests, never tokens."""
    return hashlib.sha256(token.encode()).hexdigest()
