"""build-swarm: a self-running build farm for Gentoo binary packages."""

__version__ = "0.1.0"
