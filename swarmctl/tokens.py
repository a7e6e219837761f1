"""Drone tokens: made once at enrollment, stored and compared only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_sha(token: str) -> str:
    """The digest kept in Redis; the scripts compare digests, never tokens."""
    return hashlib.sha256(token.encode()).hexdigest()
