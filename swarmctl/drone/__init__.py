"""The drone: a daemon per build machine that claims, builds and reports."""
