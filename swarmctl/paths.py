"""Where swarmctl keeps its files: XDG for a user, /etc and /var for root installs."""

from __future__ import annotations

import os
from pathlib import Path

APP = "build-swarm"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    base = Path(value) if value and os.path.isabs(value) else Path.home() / fallback
    return base / APP


def config_home() -> Path:
    """User config dir ($XDG_CONFIG_HOME/build-swarm)."""
    return _xdg("XDG_CONFIG_HOME", ".config")


def data_home() -> Path:
    """User data dir ($XDG_DATA_HOME/build-swarm): the embedded Redis lives here."""
    return _xdg("XDG_DATA_HOME", ".local/share")


def state_home() -> Path:
    """User state dir ($XDG_STATE_HOME/build-swarm): drone build logs live here."""
    return _xdg("XDG_STATE_HOME", ".local/state")


def cache_home() -> Path:
    """User cache dir ($XDG_CACHE_HOME/build-swarm): ansible-runner data dirs."""
    return _xdg("XDG_CACHE_HOME", ".cache")
